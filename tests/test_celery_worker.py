"""A generation job through a real Celery worker process with the Redis broker."""

import os
import socket
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from consent_service.app import create_app
from tests.conftest import Api, bootstrap_admin

REDIS = ("127.0.0.1", 6379)


def _redis_up() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.mark.skipif(not _redis_up(), reason="Redis is not running on 127.0.0.1:6379 (CI starts it)")
def test_celery_worker_runs_a_gated_job(tmp_path, tiny_wan):
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
    finally:
        worker.terminate()
        worker.wait(timeout=30)
