"""Provenance benchmark: C2PA signing time and peak memory against sha256 and a plain copy.

Writes bench/results/provenance.json. `python bench/provenance.py [--sizes-mb 10 100 1000]`.
Each operation runs in its own process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "provenance.json"


def make_video(path: Path, megabytes: int) -> float:
    """A real H.264 MP4 of about the given size (lossless noise compresses poorly, so it grows fast)."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        n = 0
        while n % 10 or (path.stat().st_size if path.exists() else 0) < megabytes * 1024 * 1024:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.roll(frame, n * 7, axis=1), format="rgb24")
            ):
                container.mux(packet)
            n += 1
        for packet in stream.encode():
            container.mux(packet)
    return path.stat().st_size / 1e6


def _op(kind: str, src: Path, dst: Path, ca: Path) -> dict:
    t = time.perf_counter()
    if kind == "copy":
        shutil.copyfile(src, dst)
    elif kind == "sha256":
        digest = hashlib.sha256()
        with src.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    elif kind == "c2pa_sign":
        from generator_adapter.signing import C2paSigner, SigningIdentity

        signer = C2paSigner(SigningIdentity.local(ca), claim_generator="cameo-consent/0.1.0")
        t = time.perf_counter()  # signing only, not the one-time identity set-up
        signer.sign_in_place(
            dst,
            manifest={
                "generation_id": "bench",
                "model_id": "bench",
                "consent": {"cameo_ids": ["c"], "consent_revision": 1},
            },
        )
    else:
        from generator_adapter.signing import SigningIdentity, verify_video

        anchors = SigningIdentity.local(ca).anchors_pem
        t = time.perf_counter()
        state = verify_video(src, anchors_pem=anchors).state
        assert state == "Trusted", state
    return {"seconds": time.perf_counter() - t, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process image's peak RSS. ru_maxrss would also count the parent's at fork (about 90 MB)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def watermark_accuracy(tmp: Path) -> dict:
    """Bit accuracy per frame and after the vote, Reed-Solomon recovery, and cost per frame."""
    import av
    import numpy as np
    from imwatermark import WatermarkDecoder
    from reedsolo import RSCodec

    from generator_adapter import watermark as wm
    from generator_adapter.tiny import textured_frames
    from generator_adapter.video import encode_mp4

    payload = bytes.fromhex("5eed1e55")
    bits = np.array(wm._bits(bytes(RSCodec(wm.PARITY_BYTES).encode(payload))))
    rows = []
    for h, w in ((480, 832), (256, 256)):
        frames = textured_frames(16, h, w, seed=3)
        t = time.perf_counter()
        marked = wm.embed(frames, payload)
        embed_ms = (time.perf_counter() - t) / len(frames) * 1000
        mse = float(np.mean((marked.astype(float) - frames.astype(float)) ** 2))
        psnr = 10 * np.log10(255**2 / mse)
        for crf in (18, 23, 28):
            path = encode_mp4(marked, tmp / f"wm-{h}-{crf}.mp4", fps=16, crf=crf)
            with av.open(str(path)) as c:
                decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            decoder = WatermarkDecoder("bits", wm.EMBED_BITS)
            t = time.perf_counter()
            per_frame = np.array(
                [
                    decoder.decode(f[:, :, ::-1], "dwtDctSvd", scales=[0, wm.STRENGTH, wm.STRENGTH])
                    for f in decoded
                ]
            )
            decode_ms = (time.perf_counter() - t) / len(decoded) * 1000
            per_frame = per_frame[:, : wm.CODE_BITS]
            vote = (per_frame.mean(axis=0) > 0.5).astype(int)
            rows.append(
                {
                    "size": f"{w}x{h}",
                    "crf": crf,
                    "frames": len(decoded),
                    "bit_accuracy_per_frame": round(float((per_frame == bits).mean()), 4),
                    "bit_accuracy_after_vote": round(float((vote == bits).mean()), 4),
                    "payload_recovered": wm.extract(decoded) == payload,
                    "embed_ms_per_frame": round(embed_ms, 1),
                    "decode_ms_per_frame": round(decode_ms, 1),
                    "psnr_db_watermarked_vs_original": round(float(psnr), 1),
                }
            )
            print(rows[-1], flush=True)
    recovery = []
    for h, w in ((480, 832), (256, 256)):
        frames = textured_frames(16, h, w, seed=3)
        failed = 0
        for _ in range(20):
            random_payload = os.urandom(wm.PAYLOAD_BYTES)
            path = encode_mp4(wm.embed(frames, random_payload), tmp / "wm-rand.mp4", fps=16, crf=23)
            failed += wm.extract(wm.sample_frames(path)) != random_payload
        recovery.append(
            {"size": f"{w}x{h}", "frames": 16, "crf": 23, "random_payloads": 20, "failed": failed}
        )
        print(recovery[-1], flush=True)
    return {
        "random_payload_recovery": recovery,
        "method": f"invisible-watermark dwtDctSvd, strength {wm.STRENGTH}, 32-bit payload + "
        f"{wm.PARITY_BYTES} Reed-Solomon parity bytes, per-bit vote over frames",
        "content": "synthetic textured frames (smooth structure plus grain), 16 per clip",
        "runs": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes-mb", type=int, nargs="*", default=[10, 100, 1000])
    ap.add_argument("--op", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.op:
        print(json.dumps(_op(a.op[0], Path(a.op[1]), Path(a.op[2]), Path(a.op[3]))))
        return
    tmp = Path(tempfile.mkdtemp(prefix="prov-bench-"))
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "signing": [],
    }
    for mb in a.sizes_mb:
        src = tmp / f"v{mb}.mp4"
        size = make_video(src, mb)
        row: dict = {"target_mb": mb, "file_mb": round(size, 1)}
        for kind in ("copy", "sha256", "c2pa_sign", "c2pa_verify"):
            if kind == "c2pa_sign":
                # Signing is in place, so it gets its own copy, made untimed (in the service the
                # encoder writes the file that gets signed) and flushed so no write-back overlaps.
                shutil.copyfile(src, tmp / "out-c2pa_sign.mp4")
                os.sync()
            if kind == "c2pa_verify":
                (tmp / "out-c2pa_sign.mp4").replace(src)  # read back what was just signed
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--op",
                    kind,
                    str(src),
                    str(tmp / f"out-{kind}.mp4"),
                    str(tmp / "ca"),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            m = json.loads(out.stdout)
            row[kind] = {"seconds": round(m["seconds"], 3), "peak_rss_mb": round(m["peak_rss_mb"])}
            if kind == "copy":
                (tmp / "out-copy.mp4").unlink()
        row["signed_mb"] = round(src.stat().st_size / 1e6, 1)
        row["sign_vs_sha256"] = round(row["c2pa_sign"]["seconds"] / row["sha256"]["seconds"], 2)
        row["sign_vs_copy"] = round(row["c2pa_sign"]["seconds"] / max(row["copy"]["seconds"], 1e-9), 2)
        result["signing"].append(row)
        print(row, flush=True)
        src.unlink()
    result["watermark"] = watermark_accuracy(tmp)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
