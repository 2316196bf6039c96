"""In-place C2PA signing: the original bytes stay put, the Merkle tree catches tampering anywhere."""

import itertools
import struct

import numpy as np
import pytest

from generator_adapter import c2pa_embed
from generator_adapter.c2pa_embed import C2PA_UUID, EmbedError, leaf_kb, top_level_boxes
from generator_adapter.signing import C2paSigner, ProvenanceError, SigningIdentity, verify_video
from generator_adapter.video import encode_mp4

MANIFEST = {"generation_id": "g1", "model_id": "tiny", "consent": {"cameo_ids": ["c1"]}}


@pytest.fixture
def identity(tmp_path):
    return SigningIdentity.local(tmp_path / "ca")


@pytest.fixture
def signer(identity):
    return C2paSigner(identity, claim_generator="cameo-consent/0.1.0")


@pytest.fixture
def video(tmp_path):
    """Noise compresses badly, so the mdat spans many 1 KB leaves."""
    frames = np.random.default_rng(7).integers(0, 255, (12, 64, 64, 3), dtype=np.uint8)
    return encode_mp4(frames, tmp_path / "v.mp4", fps=8)


@pytest.fixture
def small_leaves(monkeypatch):
    # 1 KB leaves and reads that straddle them, so one small clip exercises a many-leaf tree.
    monkeypatch.setattr(c2pa_embed, "MIN_LEAF_KB", 1)
    monkeypatch.setattr(c2pa_embed, "READ_BYTES", 3000)


def _boxes(data: bytes):
    import io

    return list(top_level_boxes(io.BytesIO(data), len(data)))


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_c2pa_embed_keeps_every_original_byte_and_appends_one_manifest_box(signer, identity, video):
    original = video.read_bytes()
    signer.sign_in_place(video, manifest=MANIFEST)
    signed = video.read_bytes()
    assert signed[: len(original)] == original  # nothing moved, nothing rewritten
    last = _boxes(signed)[-1]
    assert last.kind == b"uuid" and last.offset == len(original)
    assert signed[last.offset + 8 : last.offset + 24] == C2PA_UUID
    report = verify_video(video, anchors_pem=identity.anchors_pem)
    assert report.state == "Trusted" and report.consent == MANIFEST["consent"]


@pytest.mark.parametrize("where", [0.0, 0.31, 0.5, 0.77, 0.999])
def test_c2pa_embed_merkle_leaves_catch_a_flipped_bit_anywhere_in_mdat(
    signer, identity, video, small_leaves, where
):
    signer.sign_in_place(video, manifest=MANIFEST)
    [mdat] = [b for b in _boxes(video.read_bytes()) if b.kind == b"mdat"]
    payload = mdat.size - mdat.header
    assert payload > 10 * 1024  # a tree of more than ten leaves
    assert verify_video(video, anchors_pem=identity.anchors_pem).state == "Trusted"
    _flip(video, mdat.offset + mdat.header + int(where * (payload - 1)))
    report = verify_video(video, anchors_pem=identity.anchors_pem)
    assert report.state == "Invalid" and "assertion.bmffHash.mismatch" in report.failures


def test_c2pa_embed_moov_is_hashed_too(signer, identity, video):
    signer.sign_in_place(video, manifest=MANIFEST)
    [moov] = [b for b in _boxes(video.read_bytes()) if b.kind == b"moov"]
    _flip(video, moov.offset + moov.size // 2)
    assert verify_video(video, anchors_pem=identity.anchors_pem).state == "Invalid"


def test_c2pa_embed_signs_an_mdat_with_a_64_bit_size(signer, identity, video, small_leaves):
    # ffmpeg reserves an 8-byte `free` box before mdat so the header can grow to 64 bits in place,
    # as it does past 4 GB. Make that header here: the payload stays where moov says it is.
    data = bytearray(video.read_bytes())
    boxes = _boxes(bytes(data))
    free, mdat = next((a, b) for a, b in itertools.pairwise(boxes) if a.kind == b"free")
    assert free.size == 8 and mdat.kind == b"mdat"
    data[free.offset : mdat.offset + 8] = struct.pack(">I4sQ", 1, b"mdat", mdat.size + 8)
    video.write_bytes(bytes(data))
    assert [b.header for b in _boxes(bytes(data)) if b.kind == b"mdat"] == [16]
    signer.sign_in_place(video, manifest=MANIFEST)
    assert verify_video(video, anchors_pem=identity.anchors_pem).state == "Trusted"
    _flip(video, mdat.offset + 100)
    assert verify_video(video, anchors_pem=identity.anchors_pem).state == "Invalid"


@pytest.mark.parametrize(
    "make",
    [
        lambda v: b"this is not a video at all" * 40,
        lambda v: v[: len(v) // 2],  # truncated: the last box overruns the file
        lambda v: v[:32],  # ftyp alone, no moov
    ],
    ids=["not_a_video", "truncated", "no_moov"],
)
def test_c2pa_embed_refuses_bad_input_and_leaves_the_file_as_it_was(signer, video, tmp_path, make):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(make(video.read_bytes()))
    before = bad.read_bytes()
    with pytest.raises(ProvenanceError):
        signer.sign_in_place(bad, manifest=MANIFEST)
    assert bad.read_bytes() == before


def test_c2pa_embed_refuses_to_sign_twice(signer, identity, video):
    signer.sign_in_place(video, manifest=MANIFEST)
    once = video.read_bytes()
    with pytest.raises(ProvenanceError, match="already carries"):
        signer.sign_in_place(video, manifest=MANIFEST)
    assert video.read_bytes() == once
    assert verify_video(video, anchors_pem=identity.anchors_pem).state == "Trusted"


@pytest.mark.parametrize(
    ("mdat_bytes", "kb"),
    [(0, 1024), (10 << 20, 1024), (4 << 30, 1024), ((4 << 30) + 1, 2048), (100 << 30, 32768)],
)
def test_c2pa_embed_leaf_size_bounds_the_manifest(mdat_bytes, kb):
    assert leaf_kb(mdat_bytes) == kb
    assert -(-mdat_bytes // (kb * 1024)) <= c2pa_embed.MAX_LEAVES


def test_c2pa_embed_box_walk_rejects_a_box_smaller_than_its_header():
    import io

    data = struct.pack(">I4s", 4, b"free") + b"\0" * 8
    with pytest.raises(EmbedError, match="does not fit"):
        list(top_level_boxes(io.BytesIO(data), len(data)))
