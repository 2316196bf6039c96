"""The default face analyser: dlib's HOG detector, 5-point landmarks and ResNet recogniser.

The weights ship in the `face-recognition-models` wheel (CC0). Its `__init__` imports
`pkg_resources`, which current setuptools lacks, so the files are found without importing it.
The 68-point predictor in the same wheel is never loaded: its licence forbids commercial use.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from consent_service.verification.interfaces import DetectedFace

PREDICTOR = "shape_predictor_5_face_landmarks.dat"
RECOGNISER = "dlib_face_recognition_resnet_model_v1.dat"


def shipped_model_dir() -> Path:
    """Where face-recognition-models keeps its weights, found without importing the package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the face-recognition-models package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class DlibFaceAnalyser:
    """HOG detection at the given upsampling, 5 landmarks, and dlib's 128-d descriptors.

    dlib's descriptors share a large common component (different people score 0.8-0.9 in
    cosine), so they are compared the way dlib trained them: by Euclidean distance, here as
    similarity = 1 - distance, with dlib's own 0.6 distance as the threshold.
    """

    name = "dlib-resnet-v1"
    match_threshold = 0.4

    def __init__(self, model_dir: Path | None = None, *, upsample: int = 0) -> None:
        import dlib

        root = model_dir or shipped_model_dir()
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(root / PREDICTOR))
        self._recogniser = dlib.face_recognition_model_v1(str(root / RECOGNISER))
        self._upsample = upsample

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        rects, scores, _ = self._detector.run(rgb, self._upsample, 0.0)
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            shape = self._predictor(rgb, rect)
            p = [(float(shape.part(i).x), float(shape.part(i).y)) for i in range(5)]
            # Points 0-1 are the corners of the eye on the image right, 2-3 the image left, 4 the nose.
            right = ((p[0][0] + p[1][0]) / 2, (p[0][1] + p[1][1]) / 2)
            left = ((p[2][0] + p[3][0]) / 2, (p[2][1] + p[3][1]) / 2)
            faces.append(
                DetectedFace(
                    box=(float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom())),
                    score=float(score),
                    eye_image_left=left,
                    eye_image_right=right,
                    nose=p[4],
                    native=shape,
                )
            )
        return faces

    def embed(self, rgb: np.ndarray, face: DetectedFace) -> np.ndarray:
        return np.asarray(self._recogniser.compute_face_descriptor(rgb, face.native), dtype=np.float32)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return 1.0 - float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))
