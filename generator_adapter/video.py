"""H.264 MP4 encoding of generated frames with PyAV, in-process (no ffmpeg subprocess)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def encode_mp4(frames: Any, path: Path, *, fps: int, crf: int = 23) -> Path:
    """Write uint8 frames (F, H, W, 3) as H.264 yuv420p MP4; odd sizes are padded by one pixel."""
    import av  # heavy import kept local: only workers encode video
    import numpy as np

    frames = np.asarray(frames, dtype=np.uint8)
    count, height, width, _ = frames.shape
    pad_h, pad_w = height % 2, width % 2  # yuv420p needs even dimensions
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width + pad_w, height + pad_h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for i in range(count):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frames[i], format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
