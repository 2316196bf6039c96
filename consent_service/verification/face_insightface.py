"""The production face analyser: an insightface 2.x model pack (SCRFD detector, ArcFace recogniser).

Packs load from a local directory and must carry insightface's manifest v2 with a SHA-256 for
each model, so a swapped or corrupted weight file is refused before a session is created.
onnxruntime runs on CUDA when it is available, else on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from consent_service.verification.interfaces import DetectedFace, cosine, unit

REQUIRED_TASKS = ("detection", "recognition")


class ModelPackInvalid(ValueError):
    """The directory is not a pinned insightface pack with a detector and a recogniser."""


def check_manifest(pack_dir: Path) -> dict[str, object]:
    """The pack's manifest, once it is known to pin every model this service loads."""
    manifest_path = pack_dir / "manifest.json"
    if not manifest_path.is_file():
        raise ModelPackInvalid(f"{pack_dir} has no manifest.json; production packs must pin their weights")
    manifest = json.loads(manifest_path.read_text())
    tasks = manifest.get("tasks", {})
    for task in REQUIRED_TASKS:
        if task not in tasks or "sha256" not in tasks[task]:
            raise ModelPackInvalid(f"manifest.json must list {task} with its sha256")
    return dict(manifest)


class InsightFaceAnalyser:
    name = "insightface"
    # ArcFace cosine similarity; buffalo_l's usual operating point.
    match_threshold = 0.35

    def __init__(self, pack_dir: Path, *, det_thresh: float = 0.5, det_size: int = 640) -> None:
        import onnxruntime
        from insightface.app import FaceAnalysis

        check_manifest(pack_dir)
        available = set(onnxruntime.get_available_providers())
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self._app = FaceAnalysis(
            name=str(pack_dir.resolve()), allowed_modules=list(REQUIRED_TASKS), providers=providers
        )
        self._app.prepare(ctx_id=0, det_thresh=det_thresh, det_size=(det_size, det_size))
        self._recogniser = self._app.models["recognition"]
        self.providers = providers
        self.name = f"insightface:{pack_dir.name}"

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        from insightface.app.common import Face

        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        boxes, kpss = self._app.det_model.detect(bgr, max_num=0)
        faces = []
        for i in range(boxes.shape[0]):
            kps = kpss[i]
            # insightface orders its five points: eye on the image left, image right, nose, mouth.
            native = Face(bbox=boxes[i, :4], kps=kps, det_score=boxes[i, 4])
            faces.append(
                DetectedFace(
                    box=tuple(float(v) for v in boxes[i, :4]),  # type: ignore[arg-type]
                    score=float(boxes[i, 4]),
                    eye_image_left=(float(kps[0][0]), float(kps[0][1])),
                    eye_image_right=(float(kps[1][0]), float(kps[1][1])),
                    nose=(float(kps[2][0]), float(kps[2][1])),
                    native=native,
                )
            )
        return faces

    def embed(self, rgb: np.ndarray, face: DetectedFace) -> np.ndarray:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        return unit(self._recogniser.get(bgr, face.native))

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return cosine(a, b)
