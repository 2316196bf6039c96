"""The three model interfaces verification depends on, and the face record they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class DetectedFace:
    """One face in one frame: box (x0, y0, x1, y1), detector score, and eye and nose points.

    Eyes are named by image side, not by the person's side, so a mirrored frame swaps nothing.
    """

    box: tuple[float, float, float, float]
    score: float
    eye_image_left: tuple[float, float]
    eye_image_right: tuple[float, float]
    nose: tuple[float, float]
    # Backend-specific handle the embedder needs (a dlib shape, an insightface Face).
    native: object = None

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    def yaw_ratio(self) -> float:
        """Nose offset along the eye line, in interocular units, corrected for head roll.

        Positive when the nose sits toward the image right of the eyes' midpoint.
        """
        left, right, nose = (
            np.asarray(p, dtype=np.float64) for p in (self.eye_image_left, self.eye_image_right, self.nose)
        )
        axis = right - left
        interocular = float(np.linalg.norm(axis))
        if interocular < 1e-6:
            return 0.0
        return float(np.dot(nose - (left + right) / 2, axis / interocular) / interocular)


class FaceAnalyser(Protocol):
    """Detects faces with eye and nose landmarks, embeds them, and scores two embeddings."""

    name: str
    # `similarity` at or above which two embeddings are the same person.
    match_threshold: float

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]: ...

    def embed(self, rgb: np.ndarray, face: DetectedFace) -> np.ndarray: ...

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float: ...


class VoiceEmbedder(Protocol):
    """Embeds speech (16 kHz mono float32) as a unit-length speaker vector."""

    name: str
    match_threshold: float

    def embed(self, wav: np.ndarray) -> np.ndarray: ...


class DigitRecogniser(Protocol):
    """Recognises exactly `length` spoken digits in 16 kHz mono float32 audio."""

    name: str

    def recognise(self, wav: np.ndarray, *, length: int) -> str: ...


def unit(vector: np.ndarray) -> np.ndarray:
    """The vector scaled to length 1 (float32)."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(unit(a), unit(b)))
