"""Fixtures: a real migrated database per test, on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session

from consent_service.app import create_app
from consent_service.db import make_engine, migrate
from consent_service.models import CameoState, PrincipalKind
from consent_service.settings import Settings

PG_URL = os.environ.get("CONSENT_TEST_DATABASE_URL", "")
TABLES = [
    "verification_attempt",
    "verification_challenge",
    "cameo_template",
    "biometric_consent",
    "webhook_delivery",
    "webhook_subscription",
    "generation_cameo",
    "generation",
    "log_cosignature",
    "log_checkpoint",
    "log_node",
    "audit_event",
    "audit_journal",
    "consent_change",
    "likeness_grant",
    "cameo_block",
    "follow",
    "cameo",
    "guardian_link",
    "api_key",
    "principal",
]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "consent.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_migrated() -> str:
    engine = make_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    migrate(PG_URL)
    return PG_URL


def _pg_reset(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        conn.execute(text("UPDATE revision_counter SET value = 0"))
        conn.execute(text("UPDATE log_counter SET next = 0"))
    engine.dispose()


BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql", marks=pytest.mark.skipif(not PG_URL, reason="CONSENT_TEST_DATABASE_URL not set")
    ),
]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A freshly migrated, empty database for this test."""
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path / "consent.db"
        shutil.copy(template, path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_migrated")
    _pg_reset(url)
    return url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        environment="test",
        database_url=db_url,
        data_dir=tmp_path / "data",
        sync_interval_seconds=0.05,
        housekeeping="thread",
        audit_writer="loop",
    )


@dataclass
class Api:
    """A test client plus helpers that create principals through the real services and routes."""

    client: TestClient
    settings: Settings
    admin_key: str
    keys: dict[str, str] = field(default_factory=dict)

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def call(self, method: str, url: str, who: str | None = None, **kw: Any) -> Any:
        headers = {**(self.auth(who) if who else {}), **kw.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kw)

    def principal(self, handle: str, kind: str = "user", birth_date: str | None = "1990-01-01") -> str:
        body: dict[str, Any] = {"kind": kind, "handle": handle}
        if kind == "user":
            body["birth_date"] = birth_date
        r = self.client.post(
            "/v1/principals", json=body, headers={"Authorization": f"Bearer {self.admin_key}"}
        )
        assert r.status_code == 201, r.text
        self.keys[handle] = r.json()["api_key"]
        return r.json()["principal"]["id"]

    def user_with_cameo(
        self,
        handle: str,
        *,
        audience: str = "approved",
        verified: bool = True,
        birth_date: str = "1990-01-01",
    ) -> None:
        self.principal(handle, birth_date=birth_date)
        assert self.call("POST", "/v1/cameos", handle).status_code == 201
        if verified:
            self.set_state(handle, CameoState.verified)
        if audience != "only_me":
            r = self.call("PATCH", f"/v1/cameos/{handle}", handle, json={"audience": audience})
            assert r.status_code == 200, r.text

    def set_state(self, handle: str, state: CameoState) -> int:
        from consent_service.services.cameos import set_state

        runtime = self.client.app.state.runtime  # type: ignore[attr-defined]
        with Session(runtime.engine, expire_on_commit=False) as session:
            return set_state(session, runtime.replica, actor_id=None, handle=handle, state=state).revision

    def check(self, actor: str, cameos: list[str], platform: str = "plat", **extra: Any) -> Any:
        body = {"actor_handle": actor, "cameo_handles": cameos, **extra}
        return self.call("POST", "/v1/consent/checks", platform, json=body)


def bootstrap_admin(url: str) -> str:
    from consent_service.services.principals import create_principal

    engine = make_engine(url)
    with Session(engine, expire_on_commit=False) as session:
        token = create_principal(session, kind=PrincipalKind.admin, handle="root", created_by=None).token
    engine.dispose()
    return token


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    """A running app over a fresh database, with an admin, a platform and an auditor."""
    admin_key = bootstrap_admin(settings.resolved_database_url)
    with TestClient(create_app(settings)) as client:
        helper = Api(client=client, settings=settings, admin_key=admin_key, keys={"root": admin_key})
        helper.principal("plat", kind="platform")
        helper.principal("auditor", kind="auditor")
        yield helper
        full_log_check(client.app.state.runtime.log)  # type: ignore[attr-defined]


def full_log_check(log: Any) -> None:
    """End every app session like a transparency log's fsck: integrate, export, verify offline."""
    from audit.verifier import VerifierKey, verify_export

    while log.integrate() is not None:
        pass
    report = verify_export(log.export(), key=VerifierKey.parse(log.signer.vkey))
    assert report.entries == report.tree_size > 0


def adult_birth_date() -> str:
    return date(1990, 1, 1).isoformat()


def minor_birth_date() -> str:
    today = date.today()
    return date(today.year - 12, 1, 1).isoformat()


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight WanPipeline saved once per test session."""
    from generator_adapter.tiny import build_tiny_wan

    return build_tiny_wan(tmp_path_factory.mktemp("models") / "tiny-wan")


@pytest.fixture
def gen_api(settings: Settings, tiny_wan: Path) -> Iterator[Api]:
    """An app with the tiny generator configured, plus alice (cameo), bob (granted) and carol (not)."""
    settings = settings.model_copy(update={"generator_model_dir": tiny_wan})
    admin_key = bootstrap_admin(settings.resolved_database_url)
    with TestClient(create_app(settings)) as client:
        api = Api(client=client, settings=settings, admin_key=admin_key, keys={"root": admin_key})
        api.principal("plat", kind="platform")
        api.principal("auditor", kind="auditor")
        api.user_with_cameo("alice")
        api.principal("bob")
        api.principal("carol")
        api.call(
            "POST",
            "/v1/cameos/alice/grants",
            "alice",
            json={"grantee_handle": "bob", "purposes": ["generate"]},
        )
        yield api
        full_log_check(client.app.state.runtime.log)


def at_once(fn: Callable[[], Any], copies: int) -> list[Any]:
    """Run `fn` in `copies` threads released together: each one's result, or the name of what it raised.

    The test client re-raises what the app left unhandled, so a 500 shows up here as an exception name.
    """
    results: list[Any] = []
    start = threading.Barrier(copies)

    def one() -> None:
        start.wait()
        try:
            results.append(fn())
        except Exception as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(copies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
