"""The default voice embedder: resemblyzer's GE2E speaker encoder with the weights its wheel ships.

Only `pretrained.pt` is taken from the package. Importing resemblyzer itself would pull librosa
(and numba) for one mel filterbank, so the network and the filterbank are rebuilt here to the
same definitions: a 3-layer LSTM over 40 mel bands of 25 ms windows every 10 ms, partial
utterances of 1.6 s, averaged and scaled to unit length.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from consent_service.verification.interfaces import unit

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 40
PARTIAL_FRAMES = 160
PARTIALS_PER_SECOND = 1.3
MIN_COVERAGE = 0.75


def shipped_weights() -> Path:
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the resemblyzer package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney's scale: linear below 1 kHz, logarithmic above (librosa's default, htk=False).
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log_region = hz >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * (200.0 / 3)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), hz)


def mel_filterbank() -> np.ndarray:
    """Slaney-normalised triangular filters, shape (N_MELS, N_FFT // 2 + 1)."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_points = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(SAMPLE_RATE / 2)), N_MELS + 2)
    )
    fdiff = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2 : N_MELS + 2] - mel_points[:N_MELS]))[:, None]
    return weights


def mel_spectrogram(wav: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Power mel spectrogram (frames, N_MELS), centred frames with zero padding."""
    padded = np.pad(wav.astype(np.float64), N_FFT // 2)
    count = 1 + (len(padded) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(count)[:, None]
    window = np.hanning(N_FFT + 1)[:-1]  # periodic Hann
    spectrum = np.abs(np.fft.rfft(padded[idx] * window, axis=1)) ** 2
    return (spectrum @ filters.T).astype(np.float32)


def partial_slices(n_samples: int) -> list[slice]:
    """Mel-frame windows of 1.6 s, 1.3 per second, covering the utterance (resemblyzer's scheme)."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round((SAMPLE_RATE / PARTIALS_PER_SECOND) / HOP))
    slices = [
        slice(i, i + PARTIAL_FRAMES) for i in range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step)
    ]
    last = slices[-1]
    coverage = (n_samples - last.start * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < MIN_COVERAGE and len(slices) > 1:
        slices.pop()
    return slices


class ResemblyzerVoiceEmbedder:
    name = "resemblyzer-ge2e"
    # Cosine similarity on unit embeddings; chosen from the LibriSpeech EER in bench/verification.py.
    match_threshold = 0.75

    def __init__(self, weights: Path | None = None) -> None:
        import torch
        from torch import nn

        class Encoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = nn.LSTM(N_MELS, 256, 3, batch_first=True)
                self.linear = nn.Linear(256, 256)

            def forward(self, mels: torch.Tensor) -> torch.Tensor:
                _, (hidden, _) = self.lstm(mels)
                raw = torch.relu(self.linear(hidden[-1]))
                return raw / torch.norm(raw, dim=1, keepdim=True).clamp_min(1e-8)

        state = torch.load(weights or shipped_weights(), map_location="cpu", weights_only=True)["model_state"]
        self._model = Encoder()
        # The checkpoint also holds GE2E's similarity scale and bias, which inference does not use.
        self._model.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))})
        self._model.eval()
        self._filters = mel_filterbank()
        self._torch = torch

    def embed(self, wav: np.ndarray) -> np.ndarray:
        slices = partial_slices(len(wav))
        needed = slices[-1].stop * HOP
        if needed > len(wav):
            wav = np.pad(wav, (0, needed - len(wav)))
        mel = mel_spectrogram(wav, self._filters)
        batch = np.stack([mel[s] for s in slices])
        with self._torch.inference_mode():
            partials = self._model(self._torch.from_numpy(batch)).numpy()
        return unit(partials.mean(axis=0))
