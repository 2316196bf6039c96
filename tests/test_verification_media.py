"""Bad verification uploads get a clear 4xx and spend nothing; pure liveness rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consent_service.models import VerificationChallenge
from consent_service.verification import liveness
from consent_service.verification.interfaces import DetectedFace
from tests.verification_kit import accept_notice, challenge, clip_for, needs_models, upload


@pytest.fixture
def db_url(tmp_path: Path, sqlite_template: Path) -> str:
    # Media checks do not depend on the database; one backend is enough.
    import shutil

    db = tmp_path / "consent.db"
    shutil.copy(sqlite_template, db)
    return f"sqlite:///{db}"


@pytest.fixture
def mapi(api: Any) -> Any:
    api.principal("alice")
    assert api.call("POST", "/v1/cameos", "alice").status_code == 201
    accept_notice(api, "alice")
    return api


def _video_only(
    path: Path, *, width: int = 320, height: int = 240, codec: str = "libx264", seconds: int = 3
) -> Path:
    import av

    with av.open(str(path), "w", format="mp4") as out:
        stream: Any = out.add_stream(codec, rate=5)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(5 * seconds):
            frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@needs_models
def test_bad_media_is_refused_before_the_nonce_is_spent(mapi: Any, tmp_path: Path) -> None:
    ch = challenge(mapi, "alice")
    good = clip_for(ch, tmp_path / "good.mp4")
    data = good.read_bytes()
    cases = {
        "text.mp4": (b"hello, this is not a video" * 10, 415, "media_not_a_video"),
        "empty.mp4": (b"", 422, "media_truncated"),
        "cut.mp4": (data[: len(data) // 2], 422, "media_truncated"),
        "silent-track.mp4": (_video_only(tmp_path / "v.mp4").read_bytes(), 422, "media_no_audio"),
        "huge.mp4": (
            _video_only(tmp_path / "big.mp4", width=2400, height=240, seconds=2).read_bytes(),
            422,
            "media_resolution_unsupported",
        ),
        "mpeg2.mp4": (
            _video_only(tmp_path / "m2.mp4", codec="mpeg2video").read_bytes(),
            415,
            "media_unsupported_codec",
        ),
    }
    for name, (body, status, code) in cases.items():
        path = tmp_path / name
        path.write_bytes(body)
        r = upload(mapi, "alice", ch, path)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), name
    # Nothing was spent: the same challenge still takes the good clip.
    assert upload(mapi, "alice", ch, good).status_code == 202


@needs_models
def test_length_and_size_caps(api: Any, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from consent_service.app import create_app
    from tests.conftest import Api

    settings = api.settings.model_copy(
        update={"verification_max_seconds": 3.0, "verification_max_upload_bytes": 200_000}
    )
    with TestClient(create_app(settings)) as client:
        small = Api(client=client, settings=settings, admin_key=api.admin_key, keys=dict(api.keys))
        small.principal("alice")
        assert small.call("POST", "/v1/cameos", "alice").status_code == 201
        accept_notice(small, "alice")
        ch = challenge(small, "alice")
        long_clip = clip_for(ch, tmp_path / "long.mp4")
        r = upload(small, "alice", ch, long_clip)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "media_too_long")
        big = tmp_path / "big.mp4"
        big.write_bytes(long_clip.read_bytes() + b"\0" * 300_000)
        r = upload(small, "alice", ch, big)
        assert (r.status_code, r.json()["error"]["code"]) == (413, "video_too_large")


@needs_models
def test_webm_with_vp9_and_opus_is_accepted(mapi: Any, tmp_path: Path) -> None:
    ch = challenge(mapi, "alice")
    clip = clip_for(
        ch, tmp_path / "c.webm", container="webm", video_codec="libvpx-vp9", audio_codec="libopus"
    )
    r = upload(mapi, "alice", ch, clip)
    assert r.status_code == 202, r.text


def _face(nose_x: float, *, x: float = 100, width: float = 80) -> DetectedFace:
    return DetectedFace(
        box=(x, 50, x + width, 50 + width),
        score=1.0,
        eye_image_left=(x + 20, 80),
        eye_image_right=(x + 60, 80),
        nose=(x + 40 + nose_x, 100),
    )


def test_yaw_ratio_flips_under_mirroring_and_ignores_translation() -> None:
    face = _face(8)
    assert face.yaw_ratio() == pytest.approx(0.2)
    assert _face(8, x=300).yaw_ratio() == pytest.approx(0.2)
    mirrored = DetectedFace(
        box=face.box, score=1, eye_image_left=(140, 80), eye_image_right=(180, 80), nose=(152, 100)
    )
    assert mirrored.yaw_ratio() == pytest.approx(-0.2)


def test_turn_sequence_needs_held_turns_in_order() -> None:
    frontal, left, right = [0.02] * 6, [0.25] * 3, [-0.22] * 3
    ratios = frontal + left + frontal + right + frontal
    assert liveness.turn_sequence(ratios, threshold=0.1, min_frames=2, mirrored=False) == ["left", "right"]
    assert liveness.turn_sequence(ratios, threshold=0.1, min_frames=2, mirrored=True) == ["right", "left"]
    blip = [*frontal, 0.25, *frontal]
    assert liveness.turn_sequence(blip, threshold=0.1, min_frames=2, mirrored=False) == []
    assert liveness.turn_sequence([0.0] * 20, threshold=0.1, min_frames=2, mirrored=False) == []


def test_tracking_counts_cuts_and_extra_faces() -> None:
    steady = [[_face(0, x=100 + i)] for i in range(5)]
    assert liveness.follow_main_face(steady).breaks == 0
    cut = [*steady, [_face(0, x=400)]]
    assert liveness.follow_main_face(cut).breaks == 1
    crowd = [[_face(0), _face(0, x=300)] for _ in range(3)]
    assert liveness.follow_main_face(crowd).multi_face_frames == 3
    assert liveness.follow_main_face([[], []]).present == 0


def test_silence_is_not_speech() -> None:
    quiet = np.zeros(16000, np.float32)
    assert not liveness.voiced_mask(quiet, sample_rate=16000).any()
    noise = (np.random.default_rng(1).standard_normal(16000) * 1e-4).astype(np.float32)
    assert liveness.voiced_mask(noise, sample_rate=16000).sum() == 0


def test_an_attempt_left_running_by_a_dead_process_ends_failed(mapi: Any) -> None:
    from datetime import timedelta

    from sqlmodel import Session

    from consent_service.models import VerificationAttempt, VerificationStatus, utcnow
    from consent_service.verification_runner import pending

    ch = challenge(mapi, "alice")
    engine = mapi.client.app.state.runtime.engine
    with Session(engine) as s:
        cameo_id = s.get(VerificationChallenge, ch["id"]).cameo_id  # type: ignore[union-attr]
        owner = s.get(VerificationChallenge, ch["id"]).owner_id  # type: ignore[union-attr]
        old = VerificationAttempt(
            owner_id=owner,
            cameo_id=cameo_id,
            challenge_id=ch["id"],
            status=VerificationStatus.running,
            created_at=utcnow() - timedelta(hours=1),
        )
        s.add(old)
        s.commit()
        attempt_id = old.id
    assert pending(engine) == []
    body = mapi.call("GET", f"/v1/verification/attempts/{attempt_id}", "alice").json()
    assert (body["status"], body["reasons"]) == ("failed", ["interrupted"])
