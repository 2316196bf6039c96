"""Production model loaders, exercised through their real code paths with tiny random-weight models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from consent_service.settings import Settings

pytestmark = pytest.mark.slow


def _export(module: object, example: object, path: Path, outputs: list[str]) -> None:
    import torch

    torch.onnx.export(
        module,  # type: ignore[arg-type]
        (example,),
        str(path),
        input_names=["input.1"],
        output_names=outputs,
        dynamic_axes={"input.1": {0: "n", 2: "h", 3: "w"}} if "score_8" in outputs else {"input.1": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )


def build_tiny_pack(root: Path) -> Path:
    """An insightface-signature pack: SCRFD-shaped detector (9 outputs) and a 112x112 -> 512 recogniser."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(3, 4, 3, stride=s, padding=1) for s in (8, 16, 32))
            self.heads = nn.ModuleList(nn.Conv2d(4, 2 * 15, 1) for _ in range(3))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            scores, boxes, kps = [], [], []
            for conv, head in zip(self.convs, self.heads, strict=True):
                y = head(conv(x)).permute(0, 2, 3, 1).reshape(-1, 15)
                scores.append(torch.sigmoid(y[:, :1] + 4.0))
                boxes.append(y[:, 1:5].abs() + 1.0)
                kps.append(y[:, 5:15])
            return (*scores, *boxes, *kps)

    class Recogniser(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 4, stride=4)
            self.fc = nn.Linear(8 * 28 * 28, 512)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))

    root.mkdir(parents=True, exist_ok=True)
    det_names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    _export(Detector().eval(), torch.zeros(1, 3, 640, 640), root / "det_tiny.onnx", det_names)
    _export(Recogniser().eval(), torch.zeros(1, 3, 112, 112), root / "rec_tiny.onnx", ["embedding"])
    (root / "MODEL.LICENSE").write_text("random weights for tests\n")
    manifest = {
        "manifest_version": 2,
        "model_id": "tiny_pack",
        "license": "MODEL.LICENSE",
        "tasks": {
            "detection": {
                "file": "det_tiny.onnx",
                "sha256": hashlib.sha256((root / "det_tiny.onnx").read_bytes()).hexdigest(),
            },
            "recognition": {
                "file": "rec_tiny.onnx",
                "sha256": hashlib.sha256((root / "rec_tiny.onnx").read_bytes()).hexdigest(),
            },
        },
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_insightface_pack_loads_through_the_production_path(tmp_path: Path) -> None:
    from consent_service.verification.loaders import face_analyser

    pack = build_tiny_pack(tmp_path / "tiny_pack")
    settings = Settings(
        data_dir=tmp_path, verification_face_backend="insightface", verification_face_model_dir=pack
    )
    analyser = face_analyser(settings)
    assert analyser.name == "insightface:tiny_pack"
    assert "CPUExecutionProvider" in analyser.providers  # type: ignore[attr-defined]
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    faces = analyser.detect(rgb)
    assert faces, "random weights with a biased score head must return candidate faces"
    embedding = analyser.embed(rgb, faces[0])
    assert embedding.shape == (512,) and abs(float(np.linalg.norm(embedding)) - 1) < 1e-4
    assert analyser.similarity(embedding, embedding) == pytest.approx(1.0, abs=1e-5)


def test_insightface_pack_with_tampered_weights_is_refused(tmp_path: Path) -> None:
    from consent_service.verification.face_insightface import InsightFaceAnalyser, ModelPackInvalid

    pack = build_tiny_pack(tmp_path / "tiny_pack")
    with (pack / "rec_tiny.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(RuntimeError, match="SHA-256"):
        InsightFaceAnalyser(pack)
    (pack / "manifest.json").unlink()
    with pytest.raises(ModelPackInvalid):
        InsightFaceAnalyser(pack)


ECAPA_HPARAMS = """\
n_mels: 80
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [32, 32, 32, 32, 96]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 16
    lin_neurons: 48
modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
    paths:
        embedding_model: PRETRAINED/embedding_model.ckpt
"""


def build_tiny_ecapa(root: Path) -> Path:
    """A speechbrain ECAPA hyperparameter directory with a random checkpoint (48-d embeddings)."""
    import torch

    from consent_service.verification.voice_ecapa import _ensure_torchaudio_importable

    _ensure_torchaudio_importable()
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    model = ECAPA_TDNN(
        80,
        channels=[32, 32, 32, 32, 96],
        kernel_sizes=[5, 3, 3, 3, 1],
        dilations=[1, 2, 3, 4, 1],
        attention_channels=16,
        lin_neurons=48,
    )
    torch.save(model.state_dict(), root / "embedding_model.ckpt")
    (root / "hyperparams.yaml").write_text(ECAPA_HPARAMS.replace("PRETRAINED", str(root.resolve())))
    return root


def test_ecapa_checkpoint_loads_through_from_hparams(tmp_path: Path) -> None:
    from consent_service.verification.loaders import voice_embedder

    model_dir = build_tiny_ecapa(tmp_path / "ecapa")
    settings = Settings(
        data_dir=tmp_path, verification_voice_backend="ecapa", verification_voice_model_dir=model_dir
    )
    embedder = voice_embedder(settings)
    t = np.arange(16000 * 2) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    a, b = embedder.embed(wav), embedder.embed(wav)
    assert a.shape == (48,) and np.allclose(a, b, atol=1e-5)
    noise = np.random.default_rng(0).standard_normal(len(wav)).astype(np.float32) * 0.3
    assert not np.allclose(a, embedder.embed(noise), atol=1e-3)
