"""The gated generator end to end, with a tiny random-weight Wan pipeline loaded by the production path."""

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from consent_service.app import build_runner
from consent_service.models import Generation, GenerationStatus, WebhookDelivery
from consent_service.services import generations, grants
from consent_service.services.principals import get_by_handle
from generator_adapter.interface import GenerationRequest


def _wait(api, gid, who="bob", timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = api.call("GET", f"/v1/generations/{gid}", who).json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"generation {gid} did not finish")


def _request(api, who, prompt, **extra):
    return api.call("POST", "/v1/generations", who, json={"prompt": prompt, **extra})


def test_generation_consented_is_signed_and_released(gen_api, tmp_path):
    from generator_adapter.signing import TRAINED_ALGORITHMIC_MEDIA, verify_video

    r = _request(gen_api, "bob", "@alice waves at the camera", steps=2)
    assert r.status_code == 202, r.text
    body = _wait(gen_api, r.json()["id"])
    assert body["status"] == "released" and body["model_id"].startswith("WanPipeline"), body
    video = gen_api.call("GET", f"/v1/generations/{body['id']}/video", "bob")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    path = tmp_path / "out.mp4"
    path.write_bytes(video.content)
    anchors = gen_api.client.get("/v1/provenance/anchors").content
    report = verify_video(path, anchors_pem=anchors)
    assert report.state == "Trusted" and report.failures == []
    created = report.actions[0]
    assert created["action"] == "c2pa.created" and created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert created["softwareAgent"]["name"] == body["model_id"]
    assert {v["use"] for v in report.training_mining.values()} == {"notAllowed"}
    alice_cameo = gen_api.call("GET", "/v1/cameos/alice", "alice").json()["id"]
    assert report.consent["cameo_ids"] == [alice_cameo] and report.consent["generation_id"] == body["id"]
    assert report.consent["status_url"].endswith(f"/v1/provenance/status/{body['id']}")
    assert "bob" not in str(report.consent) and "alice" not in str(report.consent)


def test_generation_unconsented_is_refused_before_any_work(gen_api):
    r = _request(gen_api, "carol", "@alice and @carol dance")
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["code"] == "consent_refused"
    assert {c["handle"]: c["reason"] for c in err["details"]["cameos"]} == {
        "alice": "not_granted",
        "carol": "cameo_not_found",
    }
    gid = err["details"]["generation_id"]
    assert gen_api.call("GET", f"/v1/generations/{gid}", "carol").json()["status"] == "refused"


def test_generation_homoglyph_mention_is_still_gated(gen_api):
    r = _request(gen_api, "carol", "@\u0430lice waves")  # Cyrillic a
    assert r.status_code == 403 and r.json()["error"]["details"]["cameos"][0]["handle"] == "alice"


def test_generation_bad_inputs(gen_api):
    cases = [
        ({"prompt": "   "}, 422, "empty_prompt"),
        ({"prompt": "@alice " + "x" * 5000}, 422, "prompt_too_long"),
        ({"prompt": "@nobody waves"}, 422, "unknown_mention"),
        ({"prompt": "@al\u4e2dce waves"}, 422, "unknown_mention"),
        ({"prompt": "@alice", "num_frames": 10_000}, 422, "over_cap"),
        ({"prompt": "@alice", "height": 4096}, 422, "over_cap"),
        ({"prompt": "@alice", "steps": 0}, 422, "over_cap"),
        ({"prompt": "@alice", "extra": True}, 422, "invalid_request"),
    ]
    for body, status, code in cases:
        r = gen_api.call("POST", "/v1/generations", "bob", json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), body


def test_generation_idempotency_key_returns_the_same_job(gen_api):
    first = _request(gen_api, "bob", "@alice jumps", idempotency_key="k1").json()
    again = _request(gen_api, "bob", "@alice jumps", idempotency_key="k1").json()
    assert first["id"] == again["id"]
    _wait(gen_api, first["id"])


def test_generation_platform_on_behalf_of_actor(gen_api):
    r = gen_api.call(
        "POST", "/v1/generations", "plat", json={"prompt": "@alice surfs", "actor_handle": "bob"}
    )
    assert r.status_code == 202
    assert _wait(gen_api, r.json()["id"], who="plat")["status"] == "released"
    r = gen_api.call(
        "POST", "/v1/generations", "plat", json={"prompt": "@alice surfs", "actor_handle": "carol"}
    )
    assert r.status_code == 403
    assert gen_api.call("POST", "/v1/generations", "plat", json={"prompt": "@alice surfs"}).status_code == 422
    assert gen_api.call("POST", "/v1/generations", "auditor", json={"prompt": "@alice"}).status_code == 403


def test_generation_owner_sees_every_appearance_and_takes_down(gen_api):
    held = _request(gen_api, "bob", "@alice rides a bike").json()["id"]
    _wait(gen_api, held)
    _request(gen_api, "carol", "@alice sings")
    rows = gen_api.call("GET", "/v1/cameos/alice/appearances", "alice").json()
    by_status = {r["status"]: r for r in rows}
    assert by_status["released"]["actor_handle"] == "bob" and by_status["released"]["consented"] is True
    assert by_status["refused"]["actor_handle"] == "carol" and by_status["refused"]["consented"] is False
    assert by_status["refused"]["prompt"] == "@alice sings"
    assert gen_api.call("GET", "/v1/cameos/alice/appearances", "bob").status_code == 403
    assert gen_api.call("POST", f"/v1/generations/{held}/takedown", "carol").status_code == 404
    gen_api.call(
        "POST", "/v1/webhooks", "plat", json={"url": "https://p.example/h", "events": ["consent.takedown"]}
    )
    r = gen_api.call("POST", f"/v1/generations/{held}/takedown", "alice")
    assert r.status_code == 200 and r.json()["status"] == "taken_down"
    with Session(gen_api.client.app.state.runtime.engine) as s:
        queued = s.exec(select(WebhookDelivery)).all()
    assert [(d.event, d.payload["generation_id"]) for d in queued] == [("consent.takedown", held)]
    assert gen_api.call("GET", f"/v1/generations/{held}/video", "bob").status_code == 409


def test_generation_requester_can_cancel_a_queued_job(gen_api):
    runtime = gen_api.client.app.state.runtime
    runtime.jobs.stop()  # nothing runs, so the job stays queued
    gid = _request(gen_api, "bob", "@alice naps").json()["id"]
    r = gen_api.call("POST", f"/v1/generations/{gid}/cancel", "bob")
    assert r.json()["status"] == "cancelled" and r.json()["reason"] == "requester_cancelled"
    assert gen_api.call("POST", f"/v1/generations/{gid}/cancel", "carol").status_code == 404
    assert runtime.jobs.run(gid) is GenerationStatus.cancelled  # a late delivery does not start it


def test_generation_jobs_left_by_a_stopped_process_are_resumed_or_failed(gen_api):
    """The in-process queue lives in memory; a restarted service picks up what it left."""
    from datetime import timedelta

    from consent_service.app import create_app
    from consent_service.models import utcnow

    runtime = gen_api.client.app.state.runtime
    runtime.jobs.stop()  # the process "stops" with these two in its memory queue
    waiting = _request(gen_api, "bob", "@alice waves", steps=2).json()["id"]
    stuck = _request(gen_api, "bob", "@alice naps", steps=2).json()["id"]
    with Session(runtime.engine) as s:  # one was running, and reported no progress since
        job = s.get(Generation, stuck)
        job.status, job.updated_at = GenerationStatus.running, utcnow() - timedelta(hours=1)
        s.add(job)
        s.commit()
    with TestClient(create_app(gen_api.settings)) as restarted:
        gen_api.client, before = restarted, gen_api.client
        try:
            assert _wait(gen_api, waiting)["status"] == "released"
            body = gen_api.call("GET", f"/v1/generations/{stuck}", "bob").json()
            assert (body["status"], body["reason"]) == ("failed", "interrupted")
            events = gen_api.call("GET", "/v1/audit/events", "auditor", params={"action": "generation.fail"})
            assert [e["reason"] for e in events.json()["events"]] == ["interrupted"]
        finally:
            gen_api.client = before


class _Hooked:
    """The real tiny pipeline, with a hook run after a given step (revoking, cancelling...)."""

    def __init__(self, inner, at_step, hook):
        self.inner, self.at_step, self.hook, self.model_id = inner, at_step, hook, inner.model_id

    def generate(self, request, *, progress, should_cancel):
        def on_progress(done, total):
            progress(done, total)
            if done == self.at_step:
                self.hook()

        return self.inner.generate(request, progress=on_progress, should_cancel=should_cancel)


def _queued(gen_api, prompt="@alice waves", steps=6):
    runtime = gen_api.client.app.state.runtime
    runtime.jobs.stop()
    gid = _request(gen_api, "bob", prompt, steps=steps).json()["id"]
    return runtime, gid


def _revoke(runtime):
    with Session(runtime.engine, expire_on_commit=False) as s:
        alice = get_by_handle(s, handle="alice")
        grants.revoke_access(
            s, runtime.replica, actor=alice, owner_handle="alice", grantee_handle="bob", adult_age=18
        )


def _status(runtime, gid):
    with Session(runtime.engine) as s:
        g = s.get(Generation, gid)
        return g.status, g.reason, g.progress


def test_generation_revocation_mid_run_cancels_at_the_next_step(gen_api, tiny_wan):
    from generator_adapter.diffusers_backend import DiffusersGenerator

    runtime, gid = _queued(gen_api)
    runner = build_runner(runtime)
    runner._generator = _Hooked(DiffusersGenerator(tiny_wan), 2, lambda: _revoke(runtime))
    assert runner.run(gid) is GenerationStatus.cancelled
    status, reason, progress = _status(runtime, gid)
    assert (status, reason) == (GenerationStatus.cancelled, "consent_revoked")
    assert progress < 100
    assert not (Path(gen_api.settings.outputs_dir) / "held" / f"{gid}.mp4").exists()


def test_generation_requester_cancel_mid_run(gen_api, tiny_wan):
    from generator_adapter.diffusers_backend import DiffusersGenerator

    runtime, gid = _queued(gen_api)
    runner = build_runner(runtime)

    def cancel():
        with Session(runtime.engine) as s:
            generations.cancel_generation(s, caller=get_by_handle(s, handle="bob"), generation_id=gid)

    runner._generator = _Hooked(DiffusersGenerator(tiny_wan), 1, cancel)
    assert runner.run(gid) is GenerationStatus.cancelled
    assert _status(runtime, gid)[1] == "requester_cancelled"


class _RecordingSigner:
    """Stands in for C2PA signing (tested in test_provenance) to exercise the release ordering."""

    def __init__(self):
        self.calls = []

    def sign_in_place(self, path, *, manifest):
        self.calls.append(manifest)


class _Scanner:
    def __init__(self, found=(), hook=None):
        self.found, self.hook = set(found), hook

    def scan(self, frames):
        assert frames.ndim == 4 and frames.shape[-1] == 3
        if self.hook:
            self.hook()
        return self.found


def test_generation_without_a_signer_nothing_is_released(gen_api):
    """No code path writes a releasable file unsigned: without a signer the video is held, never served."""
    runtime, gid = _queued(gen_api)
    runner = build_runner(runtime)
    runner.signer = None
    assert runner.run(gid) is GenerationStatus.held
    assert _status(runtime, gid)[:2] == (GenerationStatus.held, "unsigned")
    assert not (Path(gen_api.settings.outputs_dir) / "released").exists() or not any(
        (Path(gen_api.settings.outputs_dir) / "released").iterdir()
    )
    assert gen_api.call("GET", f"/v1/generations/{gid}/video", "bob").status_code == 409


def test_generation_release_after_final_check_and_signing(gen_api, tiny_wan):
    runtime, gid = _queued(gen_api)
    runner = build_runner(runtime)
    runner.signer = _RecordingSigner()
    assert runner.run(gid) is GenerationStatus.released
    [manifest] = runner.signer.calls
    assert manifest["generation_id"] == gid and manifest["model_id"] == runner._generator.model_id
    assert manifest["consent"]["cameo_ids"] and manifest["consent"]["consent_revision"] >= 1
    video = gen_api.call("GET", f"/v1/generations/{gid}/video", "bob")
    assert (
        video.status_code == 200 and video.headers["content-type"] == "video/mp4" and len(video.content) > 100
    )


def test_generation_revoked_between_generation_and_release_is_not_released(gen_api):
    runtime, gid = _queued(gen_api)
    runner = build_runner(runtime)
    runner.signer = _RecordingSigner()
    runner.scanner = _Scanner(hook=lambda: _revoke(runtime))  # revoke after the frames exist
    assert runner.run(gid) is GenerationStatus.cancelled
    assert runner.signer.calls == []
    assert _status(runtime, gid)[1] == "consent_revoked"


def test_generation_output_scan_holds_an_unconsented_likeness(gen_api):
    gen_api.user_with_cameo("dora")
    runtime = gen_api.client.app.state.runtime
    dora = gen_api.call("GET", "/v1/cameos/dora", "dora").json()["id"]
    runtime.jobs.stop()
    gid = _request(gen_api, "bob", "@alice waves at a crowd").json()["id"]
    runner = build_runner(runtime)
    runner.signer = _RecordingSigner()
    runner.scanner = _Scanner(found={dora})
    assert runner.run(gid) is GenerationStatus.held
    assert _status(runtime, gid)[1] == "unconsented_likeness" and runner.signer.calls == []
    events = gen_api.call("GET", "/v1/audit/events", "auditor", params={"action": "generation.hold"}).json()
    assert events["events"][0]["details"] == {"cameos": [dora]}


def test_generation_backend_loads_real_classes_from_a_directory(tiny_wan, tmp_path):
    from generator_adapter.diffusers_backend import DiffusersGenerator
    from generator_adapter.interface import GeneratorFailed

    gen = DiffusersGenerator(tiny_wan)
    seen = []
    out = gen.generate(
        GenerationRequest(prompt="a cat", num_frames=5, steps=3, seed=7),
        progress=lambda d, t: seen.append((d, t)),
        should_cancel=lambda: False,
    )
    again = gen.generate(
        GenerationRequest(prompt="a cat", num_frames=5, steps=3, seed=7),
        progress=lambda d, t: None,
        should_cancel=lambda: False,
    )
    assert out.frames.shape == (5, 64, 64, 3) and out.frames.dtype.name == "uint8"
    assert (out.frames == again.frames).all() and seen == [(1, 3), (2, 3), (3, 3)]
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(GeneratorFailed, match="unsupported"):
        DiffusersGenerator(tmp_path)
    with pytest.raises(GeneratorFailed, match="model_index"):
        DiffusersGenerator(tmp_path / "missing")


def test_generation_backend_runs_ltx_video_too(tmp_path):
    from generator_adapter.diffusers_backend import DiffusersGenerator
    from generator_adapter.interface import GenerationCancelled
    from generator_adapter.tiny import build_tiny_ltx

    gen = DiffusersGenerator(build_tiny_ltx(tmp_path / "tiny-ltx"))
    assert gen.model_id.startswith("LTXPipeline")
    out = gen.generate(
        GenerationRequest(prompt="a cat", num_frames=9, height=32, width=32, steps=2),
        progress=lambda d, t: None,
        should_cancel=lambda: False,
    )
    assert out.frames.shape == (9, 32, 32, 3) and out.fps == 24
    steps = []
    with pytest.raises(GenerationCancelled):
        gen.generate(
            GenerationRequest(prompt="a cat", num_frames=9, height=32, width=32, steps=4),
            progress=lambda d, t: steps.append(d),
            should_cancel=lambda: len(steps) >= 1,
        )
    assert steps == [1]


def test_generation_takedown_during_signing_is_never_released(gen_api):
    runtime, gid = _queued(gen_api)
    runner = build_runner(runtime)
    inner = runner.signer

    class _TakedownWhileSigning:
        def sign_in_place(self, path, *, manifest):
            inner.sign_in_place(path, manifest=manifest)
            with Session(runtime.engine) as s:
                generations.take_down(s, caller=get_by_handle(s, handle="alice"), generation_id=gid)

    runner.signer = _TakedownWhileSigning()
    assert runner.run(gid) is GenerationStatus.taken_down
    assert _status(runtime, gid)[0] is GenerationStatus.taken_down
    assert gen_api.call("GET", f"/v1/generations/{gid}/video", "bob").status_code == 409


def test_generation_idempotency_key_sent_six_times_at_once_makes_one_job(gen_api):
    from tests.conftest import at_once

    def send():
        r = _request(gen_api, "bob", "@alice jumps", idempotency_key="same")
        return r.json()["id"] if r.status_code == 202 else r.status_code

    ids = at_once(send, 6)
    assert len(set(ids)) == 1 and isinstance(ids[0], str) and len(ids[0]) > 8, ids
    _wait(gen_api, ids[0])
