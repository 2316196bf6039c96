"""The production voice embedder: a speechbrain ECAPA-TDNN checkpoint from a local directory.

The directory holds `hyperparams.yaml` and the checkpoints it names, as in
speechbrain/spkrec-ecapa-voxceleb, and is loaded with `from_hparams(source=dir)`; nothing is
fetched from a hub.

speechbrain imports torchaudio at package import, but ECAPA and its filterbank never call it.
The only torchaudio on PyPI for this torch is a CUDA build that cannot load beside CPU torch,
so when torchaudio cannot be imported this loader registers an empty stand-in module that
fails loudly if anything does reach for it.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np

from consent_service.verification.interfaces import unit


class _AbsentTorchaudio(types.ModuleType):
    __version__ = "0.0.0+absent"

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(f"torchaudio.{name} is unavailable: the ECAPA loader runs without torchaudio")


def _ensure_torchaudio_importable() -> None:
    if "torchaudio" in sys.modules:
        return
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        sys.modules["torchaudio"] = _AbsentTorchaudio("torchaudio")


class EcapaVoiceEmbedder:
    name = "speechbrain-ecapa"
    # Cosine similarity; the usual operating point of the VoxCeleb ECAPA model.
    match_threshold = 0.25

    def __init__(self, model_dir: Path, *, savedir: Path | None = None) -> None:
        if not (model_dir / "hyperparams.yaml").is_file():
            raise FileNotFoundError(f"{model_dir} has no hyperparams.yaml")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        _ensure_torchaudio_importable()
        import torch
        from speechbrain.inference.speaker import EncoderClassifier

        self._torch = torch
        self._model = EncoderClassifier.from_hparams(
            source=str(model_dir.resolve()),
            savedir=str((savedir or model_dir).resolve()),
            run_opts={"device": "cpu"},
        )
        self.name = f"speechbrain-ecapa:{model_dir.name}"

    def embed(self, wav: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            out = self._model.encode_batch(self._torch.from_numpy(wav.astype(np.float32))[None, :])
        return unit(out.reshape(-1).numpy())
