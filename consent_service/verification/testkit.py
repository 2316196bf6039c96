"""Builds enrolment clips and attack clips for tests and benchmarks, from real faces and real speech.

Faces come from the photos insightface ships (`t1.jpg`, six people). A head turn is simulated
by warping the nose region sideways, the way a protruding nose moves against the eyes when a
head turns. Speech is flite saying the digits; flite's voices are different synthetic speakers.
Nothing here is used by the service itself.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from consent_service.verification.digits_sphinx import WORDS

DIGIT_WORDS = {v: k for k, v in WORDS.items() if k != "oh"}
FLITE_VOICES = ("slt", "awb", "rms", "kal")
SAMPLE_RATE = 16000


def flite_available() -> bool:
    return shutil.which("flite") is not None


def speak_digits(digits: str, *, voice: str = "slt") -> np.ndarray:
    """flite saying the digits, one word each, as 16 kHz mono float32."""
    if not flite_available():
        raise FileNotFoundError("flite is not installed (Debian package flite)")
    text = ", ".join(DIGIT_WORDS[d] for d in digits)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        flite = shutil.which("flite") or "flite"
        # Arguments are digit words and a voice name from FLITE_VOICES, never user input.
        subprocess.run([flite, "-voice", voice, "-t", text, "-o", str(out)], check=True, timeout=30)  # noqa: S603
        with wave.open(str(out)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    if rate != SAMPLE_RATE:
        from scipy.signal import resample_poly

        pcm = resample_poly(pcm, SAMPLE_RATE, rate).astype(np.float32)
    return pcm


def _insightface_image(name: str) -> np.ndarray:
    import cv2

    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("insightface is not installed; its sample photos are the test faces")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / name
    bgr = cv2.imread(str(path))
    if bgr is None:
        raise FileNotFoundError(path)
    return np.ascontiguousarray(bgr[:, :, ::-1])


@dataclass(frozen=True)
class Portrait:
    """A square head-and-shoulders crop and the landmarks the turn warp needs."""

    rgb: np.ndarray
    eyes: tuple[np.ndarray, np.ndarray]
    nose: np.ndarray


@functools.cache
def portraits(size: int = 200) -> tuple[Portrait, ...]:
    """The six people of insightface's t1.jpg, left to right, as square crops of `size` pixels."""
    import cv2

    from consent_service.verification.face_dlib import DlibFaceAnalyser

    analyser = DlibFaceAnalyser(upsample=1)
    image = _insightface_image("t1.jpg")
    found = sorted(analyser.detect(image), key=lambda f: f.box[0])
    out = []
    for face in found:
        half = int(face.width * 0.8)
        cx, cy = (int(v) for v in face.center)
        padded = cv2.copyMakeBorder(image, half, half, half, half, cv2.BORDER_REFLECT)
        crop = cv2.resize(
            padded[cy : cy + 2 * half, cx : cx + 2 * half], (size, size), interpolation=cv2.INTER_AREA
        )
        scale = size / (2 * half)

        def at(
            p: tuple[float, float], cx: int = cx, cy: int = cy, half: int = half, scale: float = scale
        ) -> np.ndarray:
            return np.array([(p[0] - cx + half) * scale, (p[1] - cy + half) * scale])

        out.append(
            Portrait(
                rgb=crop,
                eyes=(at(face.eye_image_left), at(face.eye_image_right)),
                nose=at(face.nose),
            )
        )
    return tuple(out)


def turn_head(portrait: Portrait, degrees: float, *, strength: float = 0.9) -> np.ndarray:
    """The portrait with its head turned: positive degrees toward the person's own left.

    The nose region is displaced sideways (it stands out from the face, so it moves most)
    with a Gaussian falloff, while eyes and outline stay nearly still.
    """
    import cv2

    size = portrait.rgb.shape[0]
    left, right = portrait.eyes
    interocular = float(np.linalg.norm(right - left))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    nx, ny = portrait.nose[0], portrait.nose[1] - 0.25 * interocular
    blob = np.exp(
        -((xx - nx) ** 2) / (2 * (0.35 * interocular) ** 2)
        - ((yy - ny) ** 2) / (2 * (0.45 * interocular) ** 2)
    )
    shift = strength * interocular * np.sin(np.radians(degrees))
    mapx = (xx - shift * blob).astype(np.float32)
    return cv2.remap(portrait.rgb, mapx, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def yaw_schedule(turns: Sequence[str], seconds: float, fps: float, *, peak: float = 40.0) -> np.ndarray:
    """Degrees per frame: facing the camera, then each turn held about 1 s, evenly spaced."""
    n = round(seconds * fps)
    angles = np.zeros(n)
    if not turns:
        return angles
    slot = seconds / (len(turns) + 1)
    for k, direction in enumerate(turns):
        centre = slot * (k + 1)
        sign = 1.0 if direction == "left" else -1.0
        for i in range(n):
            d = abs(i / fps - centre)
            weight = 1.0 if d < 0.5 else max(0.0, 1 - (d - 0.5) / 0.3)
            angles[i] += sign * peak * weight
    return angles


@dataclass
class ClipSpec:
    """What a test clip shows and says. Defaults make a genuine enrolment for the challenge."""

    digits: str
    turns: Sequence[str]
    person: int = 0
    voice: str | None = "slt"
    seconds: float | None = None  # long enough for the turns: 2 s plus 2 s a turn
    fps: float = 10.0
    width: int = 320
    height: int = 240
    mirrored: bool = False
    swap_to: int | None = None  # another person from halfway through
    second_person: int | None = None  # another face in frame throughout
    still: bool = False  # a photo held up: no movement at all
    spoken: str | None = None  # what is said, if not the challenge digits
    video_codec: str = "libx264"
    audio_codec: str | None = "aac"
    container: str = "mp4"
    extra: dict[str, object] = field(default_factory=dict)


def build_clip(spec: ClipSpec, path: Path) -> Path:
    """Render the clip described by `spec` to `path` with PyAV (H.264 + AAC in MP4 by default)."""
    import av
    import cv2

    people = portraits()
    seconds = spec.seconds or 2.0 + 2.0 * len(spec.turns)
    side = min(spec.height - 20, spec.width // 2 if spec.second_person is not None else spec.width - 20)
    angles = (
        np.zeros(round(seconds * spec.fps)) if spec.still else yaw_schedule(spec.turns, seconds, spec.fps)
    )
    background = np.full((spec.height, spec.width, 3), (96, 110, 124), dtype=np.uint8)
    x0 = 10 if spec.second_person is not None else (spec.width - side) // 2
    y0 = (spec.height - side) // 2
    with av.open(str(path), "w", format=spec.container) as out:
        vstream: Any = out.add_stream(spec.video_codec, rate=int(spec.fps))
        vstream.width, vstream.height, vstream.pix_fmt = spec.width, spec.height, "yuv420p"
        astream: Any = None
        if spec.audio_codec:
            rate = 48000 if spec.audio_codec == "libopus" else SAMPLE_RATE
            astream = out.add_stream(spec.audio_codec, rate=rate, layout="mono")
        for i, angle in enumerate(angles):
            who = spec.swap_to if spec.swap_to is not None and i >= len(angles) // 2 else spec.person
            frame = background.copy()
            face = turn_head(people[who], float(angle))
            frame[y0 : y0 + side, x0 : x0 + side] = cv2.resize(face, (side, side))
            if spec.second_person is not None:
                other = cv2.resize(people[spec.second_person].rgb, (side, side))
                frame[y0 : y0 + side, spec.width - side - 10 : spec.width - 10] = other
            if spec.mirrored:
                frame = np.ascontiguousarray(frame[:, ::-1])
            for packet in vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in vstream.encode():
            out.mux(packet)
        if astream is not None:
            _write_audio(out, astream, _soundtrack(spec, seconds), rate=astream.codec_context.sample_rate)
    return path


def _soundtrack(spec: ClipSpec, seconds: float) -> np.ndarray:
    total = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)
    if spec.voice is None:
        return total
    speech = speak_digits(spec.spoken or spec.digits, voice=spec.voice)[: len(total) - SAMPLE_RATE // 2]
    total[SAMPLE_RATE // 2 : SAMPLE_RATE // 2 + len(speech)] = speech * 0.8
    return total


def _write_audio(out: Any, stream: Any, samples: np.ndarray, *, rate: int) -> None:
    import av

    if rate != SAMPLE_RATE:
        from scipy.signal import resample_poly

        samples = resample_poly(samples, rate, SAMPLE_RATE).astype(np.float32)
    chunk = stream.codec_context.frame_size or 1024
    fmt = stream.codec_context.format.name
    pts = 0
    for start in range(0, len(samples), chunk):
        piece = samples[start : start + chunk]
        if len(piece) < chunk:
            piece = np.pad(piece, (0, chunk - len(piece)))
        data: np.ndarray = (
            (piece * 32767).astype(np.int16)[None, :] if fmt.startswith("s16") else piece[None, :]
        )
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
        frame.sample_rate, frame.pts = rate, pts
        pts += chunk
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
