"""Shared helpers for verification tests: skip conditions, a shared verifier, and the enrol flow."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import pytest

from consent_service.verification import testkit

needs_models = pytest.mark.skipif(
    not testkit.flite_available(), reason="flite (Debian package) speaks the test digits"
)


@functools.cache
def shared_verifier(workdir: str) -> Any:
    """Load the shipped models once per test session; every app's runner uses this one."""
    from consent_service.settings import Settings
    from consent_service.verification.loaders import build_verifier

    return build_verifier(Settings(data_dir=Path(workdir)))


def use_shared_models(api: Any, workdir: Path) -> None:
    api.client.app.state.runtime.verifications._verifier = shared_verifier(str(workdir))


def accept_notice(api: Any, who: str) -> None:
    version = api.client.get("/v1/verification/notice").json()["version"]
    r = api.call("POST", "/v1/verification/notice/acceptance", who, json={"version": version})
    assert r.status_code == 201, r.text


# Challenges are random; tests pin them (as one seeds a generator) so that a verdict depends on
# the attack, not on the draw. bench/verification.py measures error rates over random draws.
PINNED = {"digits": "4815", "turns": ["left", "right"]}


def challenge(api: Any, who: str, *, pinned: bool = True) -> dict[str, Any]:
    from sqlalchemy import update
    from sqlmodel import Session

    from consent_service.models import VerificationChallenge

    r = api.call("POST", f"/v1/cameos/{who}/verification/challenges", who)
    assert r.status_code == 201, r.text
    body = dict(r.json())
    if pinned:
        with Session(api.client.app.state.runtime.engine) as s:
            s.execute(
                update(VerificationChallenge)
                .where(VerificationChallenge.id == body["id"])  # type: ignore[arg-type]
                .values(**PINNED)
            )
            s.commit()
        body.update(PINNED)
    return body


def upload(api: Any, who: str, ch: dict[str, Any], clip: Path, *, mirrored: bool = False) -> Any:
    return api.call(
        "POST",
        f"/v1/verification/challenges/{ch['id']}/upload",
        who,
        params={"mirrored": str(mirrored).lower()},
        headers={"X-Challenge-Nonce": ch["nonce"], "Content-Type": "video/mp4"},
        content=clip.read_bytes(),
    )


def wait(api: Any, who: str, attempt_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = api.call("GET", f"/v1/verification/attempts/{attempt_id}", who).json()
        if body["status"] in ("verified", "rejected", "failed"):
            return dict(body)
        time.sleep(0.05)
    raise AssertionError(f"attempt {attempt_id} did not finish")


def clip_for(ch: dict[str, Any], path: Path, **overrides: Any) -> Path:
    spec = testkit.ClipSpec(digits=ch["digits"], turns=ch["turns"], **overrides)
    return testkit.build_clip(spec, path)


def attempt(api: Any, who: str, tmp: Path, **overrides: Any) -> dict[str, Any]:
    """One full try: a fresh challenge, a clip built for it (with any attack applied), the verdict."""
    ch = challenge(api, who)
    clip = clip_for(ch, tmp / f"{ch['id']}.mp4", **overrides)
    r = upload(api, who, ch, clip, mirrored=bool(overrides.get("mirrored", False)))
    assert r.status_code == 202, r.text
    return wait(api, who, r.json()["id"])
