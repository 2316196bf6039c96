"""C2PA provenance: signed releases, live consent status, upload verification, bad input."""

import json

import numpy as np
import pytest

from generator_adapter import verify_cli
from generator_adapter.signing import C2paSigner, SigningIdentity, build_manifest
from generator_adapter.video import encode_mp4
from tests.test_generations import _request, _wait


@pytest.fixture
def released(gen_api):
    gid = _request(gen_api, "bob", "@alice waves", steps=2).json()["id"]
    assert _wait(gen_api, gid)["status"] == "released"
    return gen_api, gid, gen_api.call("GET", f"/v1/generations/{gid}/video", "bob").content


def _verify(api, content, **headers):
    return api.client.post(
        "/v1/provenance/verify", content=content, headers={"Content-Type": "video/mp4", **headers}
    )


def test_provenance_status_url_follows_consent(released):
    api, gid, _ = released
    status = api.client.get(f"/v1/provenance/status/{gid}")  # public, no key
    assert status.status_code == 200 and status.json()["status"] == "valid"
    assert set(status.json()) == {"generation_id", "status", "consent_revision", "checked_at"}
    api.call("DELETE", "/v1/cameos/alice/grants/bob", "alice")
    assert api.client.get(f"/v1/provenance/status/{gid}").json()["status"] == "revoked"
    api.call("POST", f"/v1/generations/{gid}/takedown", "alice")
    assert api.client.get(f"/v1/provenance/status/{gid}").json()["status"] == "taken_down"
    assert api.client.get("/v1/provenance/status/nope").status_code == 404


def test_provenance_verify_upload_is_trusted_with_consent_and_audit(released):
    api, gid, content = released
    r = _verify(api, content)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["validation"] == {"state": "Trusted", "failures": []}
    assert body["consent_status"]["status"] == "valid" and body["consent_status"]["generation_id"] == gid
    assert isinstance(body["audit"]["release_entry"], int)
    entry = api.call(
        "GET",
        "/v1/log/entries",
        "auditor",
        params={"start": body["audit"]["release_entry"], "end": body["audit"]["release_entry"] + 1},
    )
    assert json.loads(entry.json()["entries"][0]["entry"])["action"] == "generation.release"


def test_provenance_tampered_video_reads_invalid(released):
    api, _, content = released
    data = bytearray(content)
    i = data.find(b"mdat")
    data[i + 64] ^= 0xFF
    body = _verify(api, bytes(data)).json()
    assert body["validation"]["state"] == "Invalid"
    assert "assertion.bmffHash.mismatch" in body["validation"]["failures"]


def test_provenance_bad_uploads(released, tmp_path):
    api, _, content = released
    assert _verify(api, b"this is not a video at all").json()["error"]["code"] == "not_a_video"
    assert _verify(api, content[: len(content) // 3]).json()["error"]["code"] == "no_provenance"
    plain = encode_mp4(np.zeros((3, 32, 32, 3), dtype=np.uint8), tmp_path / "plain.mp4", fps=8).read_bytes()
    assert _verify(api, plain).json()["error"]["code"] == "no_provenance"
    stranger = SigningIdentity.local(tmp_path / "other-ca")
    signed = tmp_path / "stranger.mp4"
    signed.write_bytes(plain)
    C2paSigner(stranger, claim_generator="someone/1.0").sign_in_place(
        signed, manifest={"generation_id": "x", "model_id": "m", "consent": {}}
    )
    r = _verify(api, signed.read_bytes())
    assert r.status_code == 422 and r.json()["error"]["code"] == "untrusted_signer"


def test_provenance_upload_cap(settings, tiny_wan):
    from fastapi.testclient import TestClient

    from consent_service.app import create_app

    small = settings.model_copy(update={"max_video_bytes": 2048})
    with TestClient(create_app(small)) as client:
        r = client.post("/v1/provenance/verify", content=b"\0" * 5000)
        assert r.status_code == 413 and r.json()["error"]["code"] == "video_too_large"

        def chunks():
            for _ in range(10):
                yield b"\0" * 1024

        assert client.post("/v1/provenance/verify", content=chunks()).status_code == 413


def test_provenance_cli(released, tmp_path, capsys):
    api, _, content = released
    video, anchors = tmp_path / "v.mp4", tmp_path / "root.pem"
    video.write_bytes(content)
    anchors.write_bytes(api.client.get("/v1/provenance/anchors").content)
    assert verify_cli.main([str(video), "--anchors", str(anchors)]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "Trusted"
    data = bytearray(content)
    data[data.find(b"mdat") + 64] ^= 0xFF
    video.write_bytes(bytes(data))
    assert verify_cli.main([str(video), "--anchors", str(anchors)]) == 1


def test_provenance_local_identity_is_made_once(tmp_path):
    first = SigningIdentity.local(tmp_path / "ca")
    again = SigningIdentity.local(tmp_path / "ca")
    assert first == again and b"BEGIN CERTIFICATE" in first.anchors_pem
    assert oct((tmp_path / "ca" / "signer-key.pem").stat().st_mode & 0o777) == "0o600"


def test_provenance_local_identity_made_by_processes_at_once_is_one_identity(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from tests.conftest import at_once

    for trial in range(5):
        made = at_once(lambda trial=trial: SigningIdentity.local(tmp_path / f"ca{trial}"), 6)
        assert all(m == made[0] for m in made), "workers kept different signing identities"
        leaf = x509.load_pem_x509_certificates(made[0].chain_pem)[0]
        key = serialization.load_pem_private_key(made[0].key_pem, password=None)
        assert key.public_key() == leaf.public_key()  # the chain and the key on disk belong together
        assert SigningIdentity.local(tmp_path / f"ca{trial}") == made[0]


def test_provenance_manifest_declares_watermark_when_present():
    manifest = build_manifest(
        {
            "generation_id": "g",
            "model_id": "m",
            "consent": {"cameo_ids": []},
            "watermark": {"alg": "com.example.dwtdctsvd", "value": "abcd"},
        },
        claim_generator="cameo-consent/0.1.0",
    )
    labels = [a["label"] for a in manifest["assertions"]]
    assert "c2pa.soft-binding" in labels
    actions = manifest["assertions"][0]["data"]["actions"]
    assert [a["action"] for a in actions] == ["c2pa.created", "c2pa.watermarked"]


def test_provenance_remote_signer_keeps_the_key_out_of_the_service(tmp_path, settings):
    from consent_service.app import signing_identity
    from generator_adapter.signing import ProvenanceError, verify_video
    from tests import remote_signer

    local = SigningIdentity.local(tmp_path / "ca")
    remote_signer.provision(local.key_pem)
    configured = settings.model_copy(
        update={
            "c2pa_sign_callback": "tests.remote_signer:sign",
            "c2pa_chain_path": tmp_path / "ca" / "chain.pem",
            "c2pa_anchors_path": tmp_path / "ca" / "root.pem",
        }
    )
    identity = signing_identity(configured)
    assert identity.key_pem == b"" and identity.sign_callback is not None
    signer = C2paSigner(identity, claim_generator="cameo-consent/0.1.0")
    frames = np.zeros((4, 64, 64, 3), dtype=np.uint8)
    video, unsigned = tmp_path / "out.mp4", tmp_path / "never.mp4"
    encode_mp4(frames, video, fps=8)
    unsigned.write_bytes(video.read_bytes())
    manifest = {"generation_id": "g1", "model_id": "tiny", "consent": {"cameo_ids": ["c1"]}}
    signer.sign_in_place(video, manifest=manifest)
    assert remote_signer.calls() == 1
    report = verify_video(video, anchors_pem=local.anchors_pem)
    assert report.state == "Trusted" and report.consent == {"cameo_ids": ["c1"]}

    remote_signer.fail(True)
    before = unsigned.read_bytes()
    with pytest.raises(ProvenanceError):
        signer.sign_in_place(unsigned, manifest=manifest)
    assert unsigned.read_bytes() == before  # a refused signature leaves no placeholder behind
    remote_signer.fail(False)
    with pytest.raises(ValueError, match="CHAIN_PATH"):
        signing_identity(configured.model_copy(update={"c2pa_chain_path": None}))
