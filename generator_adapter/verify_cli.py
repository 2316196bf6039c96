"""`consent-provenance-verify`: validate a video's C2PA manifest offline against PEM trust anchors."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from generator_adapter.signing import ProvenanceError, verify_video


def main(argv: list[str] | None = None) -> int:
    """Print the report as JSON; exit 0 only for a Trusted, intact manifest."""
    parser = argparse.ArgumentParser(prog="consent-provenance-verify", description=__doc__)
    parser.add_argument("video", type=Path)
    parser.add_argument(
        "--anchors", type=Path, required=True, help="PEM trust anchors (GET /v1/provenance/anchors)"
    )
    args = parser.parse_args(argv)
    try:
        report = verify_video(args.video, anchors_pem=args.anchors.read_bytes())
    except (ProvenanceError, OSError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(report), indent=2))
    return 0 if report.trusted and not report.failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
