"""`consent-audit-verify`: check an audit export and checkpoints offline, trusting only the log's key."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audit.verifier import VerificationError, VerifierKey, verify_export


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when everything verifies; otherwise print the first failure and exit 1."""
    parser = argparse.ArgumentParser(prog="consent-audit-verify", description=__doc__)
    parser.add_argument("--export", required=True, type=Path, help="NDJSON from GET /v1/audit/export")
    parser.add_argument("--key", required=True, help="the log's verifier key, or a file holding it")
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        type=Path,
        help="a further signed checkpoint to check against the export (repeatable)",
    )
    args = parser.parse_args(argv)
    vkey = Path(args.key).read_text() if Path(args.key).is_file() else args.key
    try:
        key = VerifierKey.parse(vkey)
        with args.export.open(encoding="utf-8") as lines:
            report = verify_export(lines, key=key, extra_checkpoints=[p.read_text() for p in args.checkpoint])
    except VerificationError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    sizes = ", ".join(map(str, report.checkpoints))
    print(f"OK: {report.entries} entries; checkpoints of size {sizes} verified")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
