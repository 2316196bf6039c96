"""Cameo verification through the API with the shipped models: enrolment, the attack kit, privacy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update
from sqlmodel import Session, select

from consent_service.models import (
    AuditEvent,
    CameoTemplate,
    VerificationAttempt,
    VerificationChallenge,
    utcnow,
)
from consent_service.receipts import b64url_decode
from tests.conftest import at_once
from tests.verification_kit import (
    accept_notice,
    attempt,
    challenge,
    clip_for,
    needs_models,
    upload,
    use_shared_models,
    wait,
)

pytestmark = needs_models


@pytest.fixture
def vapi(api: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    use_shared_models(api, tmp_path_factory.getbasetemp() / "verifier")
    api.principal("alice")
    assert api.call("POST", "/v1/cameos", "alice").status_code == 201
    accept_notice(api, "alice")
    return api


def _engine(api: Any) -> Any:
    return api.client.app.state.runtime.engine


def test_enrol_end_to_end_marks_the_cameo_verified(vapi: Any, tmp_path: Path) -> None:
    drawn = challenge(vapi, "alice", pinned=False)
    assert 4 <= len(drawn["digits"]) <= 6 and drawn["digits"].isdigit()
    assert drawn["turns"][0] in ("left", "right") and len(drawn["turns"]) in (2, 3)
    assert len(drawn["nonce"]) >= 32 and drawn["expires_at"]
    ch = challenge(vapi, "alice")
    clip = clip_for(ch, tmp_path / "enrol.mp4")
    r = upload(vapi, "alice", ch, clip)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    done = wait(vapi, "alice", r.json()["id"])
    assert done["status"] == "verified", done
    assert done["reasons"] == [] and done["progress"] == 100 and done["upload_deleted"]
    assert vapi.call("GET", "/v1/cameos/alice", "alice").json()["state"] == "verified"
    # Templates are stored sealed, and appear in no response.
    with Session(_engine(vapi)) as s:
        row = s.exec(select(CameoTemplate)).one()
        attempt_row = s.get(VerificationAttempt, done["id"])
        events = s.exec(select(AuditEvent.action)).all()
    assert row.face_model == "dlib-resnet-v1" and row.voice_model == "resemblyzer-ge2e"
    assert len(row.face_sealed) == 1 + 4 + 12 + 128 * 4 + 16
    assert attempt_row is not None and not Path(attempt_row.upload_path or "").exists()
    assert {"verification.notice_accepted", "verification.challenge", "verification.submitted"} <= set(events)
    assert {"verification.verified", "cameo.verified"} <= set(events)
    text = str(done)
    assert "template" not in text and "embedding" not in text


def test_reverification_matches_the_enrolled_templates(vapi: Any, tmp_path: Path) -> None:
    assert attempt(vapi, "alice", tmp_path, person=0, voice="slt")["status"] == "verified"
    again = attempt(vapi, "alice", tmp_path, person=0, voice="slt")
    assert again["status"] == "verified" and again["reverification"] is True
    assert again["metrics"]["face_match"] > 0.9
    other_voice = attempt(vapi, "alice", tmp_path, person=0, voice="awb")
    assert other_voice["status"] == "rejected"
    assert "voice_mismatch" in other_voice["reasons"] and "face_mismatch" not in other_voice["reasons"]
    other_face = attempt(vapi, "alice", tmp_path, person=2, voice="slt")
    assert "face_mismatch" in other_face["reasons"]


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ({"still": True}, "head_turn_missing"),
        ({"spoken": "wrong"}, "digits_mismatch"),
        ({"voice": None}, "no_speech"),
        ({"swap_to": 2}, "face_identity_changed"),
        ({"second_person": 3, "width": 480, "height": 270}, "multiple_faces"),
    ],
    ids=["still-photo", "wrong-digits", "silent", "face-swap", "two-faces"],
)
def test_attack_kit_is_rejected_with_its_own_reason(
    vapi: Any, tmp_path: Path, attack: dict[str, Any], reason: str
) -> None:
    if attack.get("spoken") == "wrong":
        ch = challenge(vapi, "alice")
        wrong = "".join(str((int(d) + 3) % 10) for d in ch["digits"])
        clip = clip_for(ch, tmp_path / "attack.mp4", spoken=wrong)
        r = upload(vapi, "alice", ch, clip)
        assert r.status_code == 202, r.text
        result = wait(vapi, "alice", r.json()["id"])
    else:
        result = attempt(vapi, "alice", tmp_path, **attack)
    assert result["status"] == "rejected"
    assert reason in result["reasons"], result
    assert vapi.call("GET", "/v1/cameos/alice", "alice").json()["state"] == "unverified"


def test_mirrored_recording_must_be_declared(vapi: Any, tmp_path: Path) -> None:
    ch = challenge(vapi, "alice")
    clip = clip_for(ch, tmp_path / "mirror.mp4", mirrored=True)
    undeclared = wait(vapi, "alice", upload(vapi, "alice", ch, clip).json()["id"])
    assert "head_turn_mismatch" in undeclared["reasons"]
    ch = challenge(vapi, "alice")
    clip = clip_for(ch, tmp_path / "mirror2.mp4", mirrored=True)
    declared = wait(vapi, "alice", upload(vapi, "alice", ch, clip, mirrored=True).json()["id"])
    assert declared["status"] == "verified", declared


def test_nonce_is_single_use_owned_and_expiring(vapi: Any, tmp_path: Path) -> None:
    ch = challenge(vapi, "alice")
    clip = clip_for(ch, tmp_path / "c.mp4")
    wrong = {**ch, "nonce": "x" * 43}
    assert upload(vapi, "alice", wrong, clip).json()["error"]["code"] == "nonce_invalid"
    vapi.principal("mallory")
    assert upload(vapi, "mallory", ch, clip).status_code == 404
    first = upload(vapi, "alice", ch, clip)
    assert first.status_code == 202
    replay = upload(vapi, "alice", ch, clip)
    assert (replay.status_code, replay.json()["error"]["code"]) == (409, "nonce_replayed")
    wait(vapi, "alice", first.json()["id"])

    expired = challenge(vapi, "alice")
    with Session(_engine(vapi)) as s:
        s.execute(
            update(VerificationChallenge)
            .where(VerificationChallenge.id == expired["id"])  # type: ignore[arg-type]
            .values(expires_at=utcnow())
        )
        s.commit()
    r = upload(vapi, "alice", expired, clip)
    assert (r.status_code, r.json()["error"]["code"]) == (410, "challenge_expired")


def test_five_failures_in_three_minutes_start_a_cooldown(vapi: Any, tmp_path: Path) -> None:
    silent: Path | None = None
    for _ in range(5):
        ch = challenge(vapi, "alice")
        silent = silent or clip_for(ch, tmp_path / "silent.mp4", voice=None, still=True)
        result = wait(vapi, "alice", upload(vapi, "alice", ch, silent).json()["id"])
        assert result["status"] == "rejected"
    r = vapi.call("POST", "/v1/cameos/alice/verification/challenges", "alice")
    assert (r.status_code, r.json()["error"]["code"]) == (429, "verification_cooldown")
    assert int(r.headers["Retry-After"]) > 0


def test_who_may_verify(vapi: Any) -> None:
    assert vapi.client.get("/v1/verification/retention").json()["raw_verification_video_seconds"] == 0
    assert "purpose" in vapi.client.get("/v1/verification/notice").json()
    vapi.principal("bob")
    assert vapi.call("POST", "/v1/cameos", "bob").status_code == 201
    r = vapi.call("POST", "/v1/cameos/bob/verification/challenges", "bob")
    assert (r.status_code, r.json()["error"]["code"]) == (409, "biometric_notice_not_accepted")
    assert vapi.call("POST", "/v1/cameos/alice/verification/challenges", "bob").status_code == 403
    assert vapi.call("POST", "/v1/cameos/alice/verification/challenges", "plat").status_code == 403
    assert vapi.call("POST", "/v1/cameos/alice/verification/challenges").status_code == 401
    r = vapi.call("POST", "/v1/verification/notice/acceptance", "bob", json={"version": "1999"})
    assert r.status_code == 422


def _jwks_key(api: Any, kid: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = api.client.get("/.well-known/jwks.json").json()["keys"]
    jwk = next(k for k in keys if k["kid"] == kid)
    return Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))


def test_deleting_a_cameo_destroys_templates_with_a_signed_receipt(vapi: Any, tmp_path: Path) -> None:
    import json

    assert attempt(vapi, "alice", tmp_path)["status"] == "verified"
    r = vapi.call("DELETE", "/v1/cameos/alice", "alice")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["destroyed"] == {"face_template": True, "voice_template": True, "raw_uploads": 0}
    head, claims, sig = body["deletion_receipt"].split(".")
    header = json.loads(b64url_decode(head))
    assert header["typ"] == "cameo-deletion-receipt+jwt"
    _jwks_key(vapi, header["kid"]).verify(b64url_decode(sig), f"{head}.{claims}".encode())
    assert json.loads(b64url_decode(claims))["destroyed"]["face_template"] is True
    with Session(_engine(vapi)) as s:
        assert s.exec(select(CameoTemplate)).first() is None
        assert s.exec(select(AuditEvent).where(AuditEvent.action == "cameo.biometrics_destroyed")).one()
    assert vapi.call("DELETE", "/v1/cameos/alice", "alice").status_code == 404


def test_templates_are_sealed_under_a_rotatable_key(vapi: Any, tmp_path: Path) -> None:
    from consent_service.secretbox import SecretBox
    from consent_service.services.verification import open_template, reseal_templates

    assert attempt(vapi, "alice", tmp_path)["status"] == "verified"
    runtime = vapi.client.app.state.runtime
    old = runtime.biometric_box
    with Session(runtime.engine) as s:
        row = s.exec(select(CameoTemplate)).one()
        face = open_template(old, cameo_id=row.cameo_id, kind="face", sealed=row.face_sealed)
        assert face.shape == (128,) and np.isfinite(face).all()
        # The plaintext vector is nowhere in the stored bytes.
        assert face.astype("<f4").tobytes()[:16] not in row.face_sealed
        with pytest.raises(ValueError):
            open_template(old, cameo_id="another-cameo", kind="face", sealed=row.face_sealed)
    rotated = SecretBox(current=bytes(range(32)), previous=(old.current,))
    with Session(runtime.engine) as s:
        assert reseal_templates(s, box=rotated) == 1
    with Session(runtime.engine) as s:
        row = s.exec(select(CameoTemplate)).one()
        again = open_template(
            SecretBox(current=bytes(range(32))), cameo_id=row.cameo_id, kind="face", sealed=row.face_sealed
        )
    assert np.allclose(again, face)


def test_one_nonce_sent_six_times_at_once_is_accepted_once(vapi: Any, tmp_path: Path) -> None:
    from collections import Counter

    ch = challenge(vapi, "alice")
    clip = clip_for(ch, tmp_path / "c.mp4")
    answers = [
        r if isinstance(r, str) else r.json() for r in at_once(lambda: upload(vapi, "alice", ch, clip), 6)
    ]
    codes = Counter(a if isinstance(a, str) else a.get("error", {}).get("code", "accepted") for a in answers)
    assert codes == Counter({"accepted": 1, "nonce_replayed": 5}), answers
    with Session(_engine(vapi)) as s:
        assert len(s.exec(select(VerificationAttempt)).all()) == 1
    accepted = next(a["id"] for a in answers if not isinstance(a, str) and "error" not in a)
    wait(vapi, "alice", accepted)
