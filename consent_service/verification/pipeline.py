"""One verification run: decode samples, follow the face, read the turns, hear the digits, embed.

Every check runs, and every failure adds its own reason code, so a rejected clip says all that
was wrong with it. Timings per stage are kept for the benchmark and the job's status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from consent_service.verification import liveness, media
from consent_service.verification.interfaces import DigitRecogniser, FaceAnalyser, VoiceEmbedder, cosine, unit


class Reason(StrEnum):
    face_not_present = "face_not_present"
    multiple_faces = "multiple_faces"
    face_track_broken = "face_track_broken"
    face_identity_changed = "face_identity_changed"
    head_turn_missing = "head_turn_missing"
    head_turn_mismatch = "head_turn_mismatch"
    no_speech = "no_speech"
    digits_mismatch = "digits_mismatch"
    face_mismatch = "face_mismatch"
    voice_mismatch = "voice_mismatch"


@dataclass(frozen=True)
class Thresholds:
    sample_fps: float = 5.0
    frame_side: int = 480
    min_face_fraction: float = 0.7
    max_multi_face_fraction: float = 0.1
    yaw: float = 0.08
    yaw_min_frames: int = 2
    embed_frames: int = 8
    min_speech_seconds: float = 0.8
    max_audio_seconds: float = 60.0
    # None: the model's own operating point.
    face_match: float | None = None
    voice_match: float | None = None


@dataclass(frozen=True)
class Challenge:
    digits: str
    turns: tuple[str, ...]


@dataclass(frozen=True)
class Enrolled:
    face: np.ndarray
    voice: np.ndarray


@dataclass
class Outcome:
    reasons: list[Reason] = field(default_factory=list)
    face_template: np.ndarray | None = None
    voice_template: np.ndarray | None = None
    # Counts and scores only; never an embedding.
    metrics: dict[str, float | int | str] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.reasons and self.face_template is not None and self.voice_template is not None


Progress = Callable[[str, float], None]


class Verifier:
    def __init__(
        self,
        *,
        face: FaceAnalyser,
        voice: VoiceEmbedder,
        digits: DigitRecogniser,
        thresholds: Thresholds | None = None,
    ) -> None:
        self.face = face
        self.voice = voice
        self.digits = digits
        self.t = thresholds or Thresholds()

    @property
    def face_threshold(self) -> float:
        return self.t.face_match if self.t.face_match is not None else self.face.match_threshold

    @property
    def voice_threshold(self) -> float:
        return self.t.voice_match if self.t.voice_match is not None else self.voice.match_threshold

    def verify(
        self,
        path: Path,
        *,
        challenge: Challenge,
        mirrored: bool = False,
        enrolled: Enrolled | None = None,
        progress: Progress | None = None,
    ) -> Outcome:
        report = progress or (lambda stage, fraction: None)
        out = Outcome()
        report("faces", 0.0)
        frames, detections = self._sample_faces(path, out)
        report("faces", 1.0)
        self._check_face(frames, detections, challenge, mirrored, out)
        report("voice", 0.0)
        self._check_voice(path, challenge, out)
        report("voice", 1.0)
        if enrolled is not None:
            self._check_enrolled(enrolled, out)
        return out

    def _sample_faces(self, path: Path, out: Outcome) -> tuple[list[np.ndarray], list[list]]:
        frames, detections = [], []
        decode = detect = 0.0
        started = time.perf_counter()
        for _, rgb in media.sample_frames(path, fps=self.t.sample_fps, max_side=self.t.frame_side):
            t0 = time.perf_counter()
            decode += t0 - started
            detections.append(self.face.detect(rgb))
            frames.append(rgb)
            started = time.perf_counter()
            detect += started - t0
        out.stages["decode"] = decode
        out.stages["detect"] = detect
        return frames, detections

    def _check_face(
        self,
        frames: list[np.ndarray],
        detections: list[list],
        challenge: Challenge,
        mirrored: bool,
        out: Outcome,
    ) -> None:
        track = liveness.follow_main_face(detections)
        total = max(len(frames), 1)
        out.metrics.update(
            frames_sampled=len(frames), face_frames=track.present, multi_face_frames=track.multi_face_frames
        )
        if track.present < self.t.min_face_fraction * total:
            out.reasons.append(Reason.face_not_present)
        if track.multi_face_frames > self.t.max_multi_face_fraction * total:
            out.reasons.append(Reason.multiple_faces)
        if track.breaks:
            out.reasons.append(Reason.face_track_broken)
        seen = [(i, f) for i, f in enumerate(track.faces) if f is not None]
        if not seen:
            return
        ratios = np.array([f.yaw_ratio() for _, f in seen])
        turns = liveness.turn_sequence(
            ratios, threshold=self.t.yaw, min_frames=self.t.yaw_min_frames, mirrored=mirrored
        )
        out.metrics["turns_seen"] = ",".join(turns)
        if not turns:
            out.reasons.append(Reason.head_turn_missing)
        elif tuple(turns) != challenge.turns:
            out.reasons.append(Reason.head_turn_mismatch)

        # Identity is judged on frames facing the camera: a turned face embeds less reliably,
        # and a swap shows as two frontal faces that do not match.
        frontal = liveness.frontal_frames(liveness.smooth(ratios), width=self.t.yaw / 2)
        pool = frontal if len(frontal) >= 2 else list(range(len(seen)))
        t0 = time.perf_counter()
        picks = [pool[round(x)] for x in np.linspace(0, len(pool) - 1, min(self.t.embed_frames, len(pool)))]
        embeddings = [self.face.embed(frames[seen[k][0]], seen[k][1]) for k in dict.fromkeys(picks)]
        out.stages["face_embed"] = time.perf_counter() - t0
        worst = min(
            (self.face.similarity(a, b) for i, a in enumerate(embeddings) for b in embeddings[i + 1 :]),
            default=1.0,
        )
        out.metrics["face_consistency"] = round(worst, 4)
        if worst < self.face_threshold:
            out.reasons.append(Reason.face_identity_changed)
        out.face_template = np.mean(embeddings, axis=0).astype(np.float32)

    def _check_voice(self, path: Path, challenge: Challenge, out: Outcome) -> None:
        t0 = time.perf_counter()
        wav = media.read_audio(path, max_seconds=self.t.max_audio_seconds)
        mask = liveness.voiced_mask(wav, sample_rate=media.SAMPLE_RATE)
        speech_seconds = float(mask.sum()) * liveness.VAD_FRAME_MS / 1000
        out.metrics["speech_seconds"] = round(speech_seconds, 2)
        out.stages["audio"] = time.perf_counter() - t0
        if speech_seconds < self.t.min_speech_seconds:
            out.reasons.append(Reason.no_speech)
            return
        t0 = time.perf_counter()
        heard = self.digits.recognise(wav, length=len(challenge.digits))
        out.stages["digits"] = time.perf_counter() - t0
        if heard != challenge.digits:
            out.reasons.append(Reason.digits_mismatch)
        t0 = time.perf_counter()
        out.voice_template = unit(
            self.voice.embed(liveness.speech_only(wav, mask, sample_rate=media.SAMPLE_RATE))
        )
        out.stages["voice_embed"] = time.perf_counter() - t0

    def _check_enrolled(self, enrolled: Enrolled, out: Outcome) -> None:
        if out.face_template is not None:
            score = self.face.similarity(out.face_template, enrolled.face)
            out.metrics["face_match"] = round(score, 4)
            if score < self.face_threshold:
                out.reasons.append(Reason.face_mismatch)
        if out.voice_template is not None:
            score = cosine(out.voice_template, enrolled.voice)
            out.metrics["voice_match"] = round(score, 4)
            if score < self.voice_threshold:
                out.reasons.append(Reason.voice_mismatch)
