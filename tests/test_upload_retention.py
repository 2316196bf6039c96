"""Raw verification uploads kept for a while are deleted when their time is up, as published."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from consent_service.models import VerificationAttempt
from consent_service.settings import Settings
from tests.verification_kit import accept_notice, attempt, needs_models, use_shared_models

pytestmark = needs_models


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings, with uploads kept for a second and looked for often."""
    return settings.model_copy(
        update={"verification_retain_uploads_seconds": 1, "verification_purge_interval_seconds": 0.1}
    )


def test_a_retained_upload_is_deleted_once_its_time_is_up(
    api: Any, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    schedule = api.client.get("/v1/verification/notice").json()["retention"]
    assert schedule["raw_verification_video_seconds"] == 1
    use_shared_models(api, tmp_path_factory.getbasetemp() / "verifier")
    api.principal("alice")
    assert api.call("POST", "/v1/cameos", "alice").status_code == 201
    accept_notice(api, "alice")
    done = attempt(api, "alice", tmp_path)
    assert done["status"] == "verified", done
    engine = api.client.app.state.runtime.engine
    with Session(engine) as s:
        kept = s.get(VerificationAttempt, done["id"])
        assert kept is not None and kept.upload_path and kept.upload_delete_after is not None
        upload = Path(kept.upload_path)
    deadline = time.monotonic() + 10
    while upload.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not upload.exists(), "the upload outlived its retention"
    with Session(engine) as s:
        purged = s.get(VerificationAttempt, done["id"])
        assert purged is not None and purged.upload_deleted_at is not None
        assert purged.upload_deleted_at >= purged.upload_delete_after
