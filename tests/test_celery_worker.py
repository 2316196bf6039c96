"""Generation and verification jobs through a real Celery worker process with the Redis broker."""

import os
import socket
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from consent_service.app import create_app
from consent_service.verification import testkit
from tests.conftest import Api, bootstrap_admin
from tests.verification_kit import accept_notice, challenge, clip_for, upload, wait

REDIS = ("127.0.0.1", 6379)


def _redis_up() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.mark.skipif(not _redis_up(), reason="Redis is not running on 127.0.0.1:6379 (CI starts it)")
def test_celery_worker_runs_gated_and_verification_jobs(tmp_path, tiny_wan):
    url = f"sqlite:///{tmp_path}/celery.db"
    from consent_service.db import migrate

    migrate(url)
    broker = "redis://127.0.0.1:6379/15"
    env = {
        **os.environ,
        "CONSENT_DATABASE_URL": url,
        "CONSENT_DATA_DIR": str(tmp_path / "data"),
        "CONSENT_GENERATOR_MODEL_DIR": str(tiny_wan),
        "CONSENT_CELERY_BROKER_URL": broker,
        "CONSENT_JOB_BACKEND": "celery",
    }
    subprocess.run(
        [sys.executable, "-m", "celery", "-A", "consent_service.celery_worker", "purge", "-f"],
        env=env,
        check=True,
        capture_output=True,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "consent_service.celery_worker",
            "worker",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--loglevel",
            "warning",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ],
        env=env,
    )
    try:
        from consent_service.settings import Settings

        settings = Settings(
            environment="test",
            database_url=url,
            data_dir=tmp_path / "data",
            job_backend="celery",
            celery_broker_url=broker,
        )
        admin = bootstrap_admin(url)
        with TestClient(create_app(settings)) as client:
            api = Api(client=client, settings=settings, admin_key=admin, keys={"root": admin})
            api.user_with_cameo("alice")
            api.principal("bob")
            api.call(
                "POST",
                "/v1/cameos/alice/grants",
                "alice",
                json={"grantee_handle": "bob", "purposes": ["generate"]},
            )
            gid = api.call("POST", "/v1/generations", "bob", json={"prompt": "@alice waves"}).json()["id"]
            deadline = time.time() + 90
            while time.time() < deadline:
                body = api.call("GET", f"/v1/generations/{gid}", "bob").json()
                if body["status"] not in ("queued", "running"):
                    break
                time.sleep(0.2)
            # The worker process generated, signed and released it (this app runs no in-process worker).
            assert body["status"] == "released", body
            assert body["model_id"].startswith("WanPipeline")
            if testkit.flite_available():
                _verification_through_the_worker(api, tmp_path)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def _verification_through_the_worker(api: Api, tmp_path) -> None:
    """The app only queues the attempt; the worker loads the models and verifies the cameo."""
    api.principal("carol")
    assert api.call("POST", "/v1/cameos", "carol").status_code == 201
    accept_notice(api, "carol")
    ch = challenge(api, "carol")
    r = upload(api, "carol", ch, clip_for(ch, tmp_path / "carol.mp4"))
    assert r.status_code == 202, r.text
    assert api.client.app.state.runtime.verifications.__class__.__name__ == "CeleryVerifications"
    done = wait(api, "carol", r.json()["id"], timeout=120)
    assert done["status"] == "verified", done
    assert api.call("GET", "/v1/cameos/carol", "carol").json()["state"] == "verified"
