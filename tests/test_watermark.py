"""The invisible watermark, the stripped-metadata lookup, and the visible label."""

import numpy as np
import pytest

from consent_service.app import build_runner
from consent_service.models import GenerationStatus
from generator_adapter import watermark
from generator_adapter.interface import GenerationResult
from generator_adapter.label import draw_label
from generator_adapter.signing import verify_video
from generator_adapter.tiny import textured_frames
from generator_adapter.video import encode_mp4
from tests.test_generations import _queued, _status


class _SyntheticGenerator:
    """Frames large and structured enough to carry the watermark; the real pipelines are tested elsewhere."""

    model_id = "synthetic:textured"

    def generate(self, request, *, progress, should_cancel):
        progress(1, 1)
        # 24 frames of 384x384: the vote needs frames, and real clips have 49 or more. With 12
        # frames about 1 in 40 random payloads failed to decode here; with 24, none in 40.
        return GenerationResult(
            frames=textured_frames(n=24, h=384, w=384), fps=16, model_id=self.model_id, seed=0, timings={}
        )


@pytest.mark.parametrize("crf", [18, 23, 28])
def test_watermark_survives_h264(tmp_path, crf):
    payload = bytes.fromhex("c0ffee42")
    marked = watermark.embed(textured_frames(), payload)
    path = encode_mp4(marked, tmp_path / "m.mp4", fps=16, crf=crf)
    assert watermark.extract(watermark.sample_frames(path)) == payload


def test_watermark_absent_or_too_small(tmp_path):
    plain = encode_mp4(textured_frames(), tmp_path / "p.mp4", fps=16)
    assert watermark.extract(watermark.sample_frames(plain)) is None
    assert not watermark.can_embed(np.zeros((2, 64, 64, 3), dtype=np.uint8))
    with pytest.raises(watermark.NotAVideoFile):
        (tmp_path / "x.mp4").write_bytes(b"nope")
        watermark.sample_frames(tmp_path / "x.mp4")


def test_label_marks_the_corner_only():
    frames = textured_frames(n=2)
    labelled = draw_label(frames, "AI-generated \u00b7 @bob")
    h = frames.shape[1]
    assert (
        labelled[:, h - h // 8 :, : frames.shape[2] // 2] != frames[:, h - h // 8 :, : frames.shape[2] // 2]
    ).any()
    assert (labelled[:, : h // 2] == frames[:, : h // 2]).all()


def test_lookup_finds_a_stripped_video(gen_api, tmp_path, monkeypatch):
    # Decoding is measured over random payloads in bench/provenance.py; here a fixed payload
    # keeps this end-to-end test deterministic (generation ids are random).
    monkeypatch.setattr(watermark, "payload_for", lambda generation_id: bytes.fromhex("c0ffee42"))
    runtime, gid = _queued(gen_api)
    runner = build_runner(runtime)
    runner._generator = _SyntheticGenerator()
    assert runner.run(gid) is GenerationStatus.released
    released = gen_api.call("GET", f"/v1/generations/{gid}/video", "bob").content
    signed = tmp_path / "signed.mp4"
    signed.write_bytes(released)
    report = verify_video(signed, anchors_pem=gen_api.client.get("/v1/provenance/anchors").content)
    assert [a["action"] for a in report.actions] == ["c2pa.created", "c2pa.watermarked"]
    stripped = _remux(signed, tmp_path / "s.mp4")  # the C2PA manifest is gone, the pixels stay
    assert (
        gen_api.client.post("/v1/provenance/verify", content=stripped.read_bytes()).json()["error"]["code"]
        == "no_provenance"
    )
    r = gen_api.client.post("/v1/provenance/lookup", content=stripped.read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["generation_id"] == gid and body["consent_status"]["status"] == "valid"
    assert body["manifest"]["state"] == "Trusted" and body["watermark"] == "c0ffee42"
    gen_api.call("DELETE", "/v1/cameos/alice/grants/bob", "alice")
    assert (
        gen_api.client.post("/v1/provenance/lookup", content=stripped.read_bytes()).json()["consent_status"][
            "status"
        ]
        == "revoked"
    )


def _remux(source, dest):
    """Copy the video packets into a fresh MP4, as an uploader that strips metadata does."""
    import av

    with av.open(str(source)) as src, av.open(str(dest), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dest


def test_lookup_bad_inputs(gen_api, tmp_path):
    assert (
        gen_api.client.post("/v1/provenance/lookup", content=b"garbage").json()["error"]["code"]
        == "not_a_video"
    )
    plain = encode_mp4(textured_frames(n=4), tmp_path / "p.mp4", fps=16)
    r = gen_api.client.post("/v1/provenance/lookup", content=plain.read_bytes())
    assert r.status_code == 404 and r.json()["error"]["code"] == "watermark_not_found"
    other = encode_mp4(watermark.embed(textured_frames(n=6), b"\x00\x01\x02\x03"), tmp_path / "o.mp4", fps=16)
    assert gen_api.client.post("/v1/provenance/lookup", content=other.read_bytes()).status_code == 404


def test_small_outputs_are_labelled_but_not_watermarked(gen_api):
    runtime, gid = _queued(gen_api)
    assert build_runner(runtime).run(gid) is GenerationStatus.released
    from sqlmodel import Session

    from consent_service.models import Generation

    with Session(runtime.engine) as s:
        assert s.get(Generation, gid).watermark is None
    assert _status(runtime, gid)[0] is GenerationStatus.released
