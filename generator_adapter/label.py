"""A visible label on generated frames, as the Sora app did: who made it, and that it is AI-generated."""

from __future__ import annotations

from typing import Any


def draw_label(frames: Any, text: str) -> Any:
    """Stamp `text` in the bottom-left corner of every frame, on a dark band for legibility."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    height, width = frames.shape[1:3]
    font = ImageFont.load_default(size=max(8, height // 24))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    pad = max(2, height // 100)
    box = (
        pad,
        height - (bottom - top) - 3 * pad,
        min(width - pad, pad + right - left + 2 * pad),
        height - pad,
    )
    out = []
    for frame in frames:
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image, "RGBA")
        draw.rectangle(box, fill=(0, 0, 0, 150))
        draw.text((box[0] + pad - left, box[1] + pad - top), text, font=font, fill=(255, 255, 255, 230))
        out.append(np.asarray(image))
    return np.stack(out)
