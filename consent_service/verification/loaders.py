"""Builds the configured verifier: shipped default models, or production models from local directories."""

from __future__ import annotations

from consent_service.settings import Settings
from consent_service.verification.interfaces import FaceAnalyser, VoiceEmbedder
from consent_service.verification.pipeline import Thresholds, Verifier


def face_analyser(settings: Settings) -> FaceAnalyser:
    if settings.verification_face_backend == "insightface":
        if settings.verification_face_model_dir is None:
            raise ValueError("set CONSENT_VERIFICATION_FACE_MODEL_DIR to an insightface model pack")
        from consent_service.verification.face_insightface import InsightFaceAnalyser

        return InsightFaceAnalyser(settings.verification_face_model_dir)
    from consent_service.verification.face_dlib import DlibFaceAnalyser

    return DlibFaceAnalyser(settings.verification_face_model_dir)


def voice_embedder(settings: Settings) -> VoiceEmbedder:
    if settings.verification_voice_backend == "ecapa":
        if settings.verification_voice_model_dir is None:
            raise ValueError("set CONSENT_VERIFICATION_VOICE_MODEL_DIR to a speechbrain ECAPA directory")
        from consent_service.verification.voice_ecapa import EcapaVoiceEmbedder

        return EcapaVoiceEmbedder(
            settings.verification_voice_model_dir, savedir=settings.data_dir / "models" / "ecapa"
        )
    from consent_service.verification.voice_resemblyzer import ResemblyzerVoiceEmbedder

    return ResemblyzerVoiceEmbedder()


def build_verifier(settings: Settings) -> Verifier:
    from consent_service.verification.digits_sphinx import SphinxDigitRecogniser

    return Verifier(
        face=face_analyser(settings),
        voice=voice_embedder(settings),
        digits=SphinxDigitRecogniser(settings.data_dir / "models" / "pocketsphinx"),
        thresholds=Thresholds(
            sample_fps=settings.verification_sample_fps,
            frame_side=settings.verification_frame_side,
            yaw=settings.verification_yaw_threshold,
            face_match=settings.verification_face_threshold,
            voice_match=settings.verification_voice_threshold,
            max_audio_seconds=settings.verification_max_seconds,
        ),
    )
