"""kill -9 the service while it appends; after a restart the log verifies, no acknowledged entry lost."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import date

import httpx
from sqlmodel import Session, func, select

from audit.verifier import VerifierKey, verify_export
from consent_service.db import make_engine, migrate
from consent_service.models import AuditEvent, CameoState, PrincipalKind
from consent_service.services.cameos import create_cameo, set_state, update_settings
from consent_service.services.principals import create_principal


class _NoReplica:
    def apply_own(self, revision, ops):
        return revision


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(env, port):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "consent_service.app:create_app",
            "--factory",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not start")


def test_kill9_during_appends_loses_no_acknowledged_entry(tmp_path):
    url = f"sqlite:///{tmp_path}/crash.db"
    migrate(url)
    engine = make_engine(url)
    with Session(engine, expire_on_commit=False) as s:
        plat = create_principal(s, kind=PrincipalKind.platform, handle="plat", created_by=None).token
        auditor = create_principal(s, kind=PrincipalKind.auditor, handle="aud", created_by=None).token
        alice = create_principal(
            s, kind=PrincipalKind.user, handle="alice", birth_date=date(1990, 1, 1), created_by=None
        ).principal
        create_principal(
            s, kind=PrincipalKind.user, handle="bob", birth_date=date(1990, 1, 1), created_by=None
        )
        create_cameo(s, _NoReplica(), actor=alice)
        set_state(s, _NoReplica(), actor_id=None, handle="alice", state=CameoState.verified)
        update_settings(s, _NoReplica(), actor=alice, handle="alice", audience="everyone", adult_age=18)
    env = {
        **os.environ,
        "CONSENT_DATABASE_URL": url,
        "CONSENT_DATA_DIR": str(tmp_path / "data"),
        "CONSENT_LOG_INTEGRATE_INTERVAL_SECONDS": "0.2",
    }
    port = _port()
    server = _serve(env, port)
    acked: list[str] = []
    stop = threading.Event()

    def hammer():
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {plat}"}
        ) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/consent/checks", json={"actor_handle": "bob", "cameo_handles": ["alice"]})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked.append(r.json()["check_id"])

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.time() + 30
    while True:  # a checkpoint signed mid-load (the housekeeper process needs a moment to start)
        time.sleep(0.2)
        got = httpx.get(f"http://127.0.0.1:{port}/v1/log/checkpoint")
        if got.status_code == 200 or time.time() > deadline:
            break
    assert got.status_code == 200, got.text
    before = got.text
    vkey = httpx.get(f"http://127.0.0.1:{port}/v1/log/key").json()["vkey"]
    time.sleep(0.5)
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) > 20

    server = _serve(env, port)
    try:
        with Session(engine) as s:
            total = s.exec(select(func.count()).select_from(AuditEvent)).one()
        auth = {"Authorization": f"Bearer {auditor}"}
        deadline = time.time() + 15
        while True:
            export = httpx.get(f"http://127.0.0.1:{port}/v1/audit/export", headers=auth, timeout=30).text
            if json.loads(export.splitlines()[0])["size"] >= total or time.time() > deadline:
                break
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/log/key").json()["vkey"] == vkey
    finally:
        server.terminate()
        server.wait()
    report = verify_export(export.splitlines(), key=VerifierKey.parse(vkey), extra_checkpoints=[before])
    assert report.tree_size == total
    logged = {
        json.loads(json.loads(line)["entry"])["details"].get("check_id") for line in export.splitlines()[1:]
    }
    assert set(acked) <= logged
    engine.dispose()
