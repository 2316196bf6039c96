"""Liveness rules over per-frame face detections and audio: pure functions, no models.

Head direction is the person's own left or right. In an unmirrored recording the camera faces
the person, so a turn to their left moves the nose toward the image right; a mirrored selfie
recording shows the opposite, which the caller must declare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from consent_service.verification.interfaces import DetectedFace

VAD_FRAME_MS = 30


@dataclass(frozen=True)
class Track:
    """The main face in each sampled frame (None where absent), and how often more than one appeared."""

    faces: list[DetectedFace | None]
    multi_face_frames: int
    breaks: int

    @property
    def present(self) -> int:
        return sum(f is not None for f in self.faces)


def follow_main_face(frames: Sequence[list[DetectedFace]], *, max_jump: float = 0.6) -> Track:
    """Follow one face through the frames: the largest at first, then the nearest to where it was.

    A jump of more than `max_jump` face widths between consecutive sightings, or a size change
    of more than 1.6 times, counts as a break: a cut to another clip or another person.
    """
    chosen: list[DetectedFace | None] = []
    previous: DetectedFace | None = None
    multi = breaks = 0
    for faces in frames:
        if len(faces) > 1:
            multi += 1
        if not faces:
            chosen.append(None)
            continue
        if previous is None:
            face = max(faces, key=lambda f: f.width)
        else:
            px, py = previous.center
            face = min(faces, key=lambda f: (f.center[0] - px) ** 2 + (f.center[1] - py) ** 2)
            jump = float(np.hypot(face.center[0] - px, face.center[1] - py)) / max(previous.width, 1.0)
            size = max(face.width, 1.0) / max(previous.width, 1.0)
            if jump > max_jump or not 1 / 1.6 <= size <= 1.6:
                breaks += 1
        chosen.append(face)
        previous = face
    return Track(faces=chosen, multi_face_frames=multi, breaks=breaks)


def smooth(values: np.ndarray, width: int = 3) -> np.ndarray:
    """Running median: landmarks jitter by up to 0.1 between frames with expression alone."""
    if len(values) < width:
        return values
    pad = width // 2
    padded = np.pad(values, pad, mode="edge")
    return np.array([np.median(padded[i : i + width]) for i in range(len(values))])


def turn_sequence(
    ratios: Sequence[float] | np.ndarray, *, threshold: float, min_frames: int, mirrored: bool
) -> list[str]:
    """The ordered head turns ("left"/"right", the person's own side) held for `min_frames` frames.

    The baseline is the facing-the-camera ratio, which cancels each face's own asymmetry.
    Repeats of one direction count once.
    """
    r = smooth(np.asarray(ratios, dtype=np.float64))
    if len(r) == 0:
        return []
    delta = r - frontal_baseline(r, width=threshold / 2)
    if mirrored:
        delta = -delta
    labels = np.where(delta > threshold, 1, np.where(delta < -threshold, -1, 0))
    turns: list[str] = []
    run_label, run_length = 0, 0
    for label in [*labels.tolist(), 0]:
        if label == run_label:
            run_length += 1
            continue
        if run_label != 0 and run_length >= min_frames:
            direction = "left" if run_label > 0 else "right"
            if not turns or turns[-1] != direction:
                turns.append(direction)
        run_label, run_length = label, 1
    return turns


def frontal_baseline(ratios: np.ndarray, *, width: float) -> float:
    """The centre of the densest cluster of ratios: the pose held longest, facing the camera.

    A plain median drifts toward one side when two of three turns go the same way.
    """
    counts = np.abs(ratios[:, None] - ratios[None, :]) < width
    densest = int(np.argmax(counts.sum(axis=1)))
    return float(np.median(ratios[counts[densest]]))


def frontal_frames(ratios: np.ndarray, *, width: float, window: int = 12) -> list[int]:
    """Frames facing the camera, judged against the frontal pose of the frames around each one.

    A rolling baseline follows whoever is in frame, so after a face swap the newcomer's frontal
    frames still count as frontal and get compared with the first person's.
    """
    picked = []
    for i in range(len(ratios)):
        lo, hi = max(0, i - window), min(len(ratios), i + window + 1)
        if abs(ratios[i] - frontal_baseline(ratios[lo:hi], width=width)) < width:
            picked.append(i)
    return picked


def voiced_mask(wav: np.ndarray, *, sample_rate: int, aggressiveness: int = 2) -> np.ndarray:
    """One flag per 30 ms frame: does WebRTC's voice activity detector hear speech?"""
    import webrtcvad

    vad = webrtcvad.Vad(aggressiveness)
    step = sample_rate * VAD_FRAME_MS // 1000
    pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16)
    # A whisper-quiet track still reads as noise to the VAD; silence below -60 dBFS is not speech.
    flags = []
    for start in range(0, len(pcm) - step + 1, step):
        chunk = pcm[start : start + step]
        loud = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2))) > 32767 * 1e-3
        flags.append(loud and vad.is_speech(chunk.tobytes(), sample_rate))
    return np.array(flags, dtype=bool)


def speech_only(
    wav: np.ndarray, mask: np.ndarray, *, sample_rate: int, keep_gap_frames: int = 6
) -> np.ndarray:
    """The voiced parts of `wav`, with pauses up to `keep_gap_frames` kept and longer ones cut.

    The result is scaled to a fixed loudness so the speaker embedding sees level speech.
    """
    step = sample_rate * VAD_FRAME_MS // 1000
    keep = mask.copy()
    gap = 0
    for i, flag in enumerate(mask):
        gap = 0 if flag else gap + 1
        if not flag and gap <= keep_gap_frames and i > 0 and mask[:i].any():
            keep[i] = True
    pieces = [wav[i * step : (i + 1) * step] for i, flag in enumerate(keep) if flag]
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    speech = np.concatenate(pieces).astype(np.float32)
    rms = float(np.sqrt(np.mean(speech**2)))
    return speech * (10 ** (-30 / 20) / rms) if rms > 0 else speech
