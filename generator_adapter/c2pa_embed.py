"""Sign an MP4 where it lies, through c2pa-rs's placeholder API.

c2pa-python 0.38 wraps only `Builder.sign`, which writes a whole new copy of the video and hashes
it in 256 MB reads: about 3 s and 450 MB of memory for a 1 GB file. The native library it ships
(c2pa-rs 0.91) also exports the placeholder workflow. This module binds those entry points with
ctypes, against the wrapper's own Builder and Stream handles:

1. `c2pa_builder_placeholder` gives a C2PA `uuid` box. It is appended after the last top-level box,
   so no sample offset in `moov` moves and nothing is rewritten.
2. `c2pa_builder_hash_mdat_bytes` gets each `mdat` payload in bounded reads of our own; c2pa-rs
   hashes it into a Merkle tree of fixed-size leaves (the BMFF v3 hash), all leaves kept in the
   manifest (`merkle_tree_max_proofs = 0`), so no proof boxes need inserting.
3. `c2pa_builder_update_hash_from_stream` hashes the rest of the file, which the Merkle tree
   excludes (`moov` and headers: kilobytes).
4. `c2pa_builder_sign_embeddable` signs. The manifest box is the last box, so the final box
   replaces the placeholder and the file is cut to its end.

The bindings are pinned with c2pa-python==0.38.1 (pyproject); a test signs and validates through
them, so an upgrade that moves these entry points fails loudly rather than silently.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

READ_BYTES = 4 << 20  # one read of mdat payload; bounds memory whatever the video's size
MIN_LEAF_KB = 1024
MAX_LEAVES = 4096  # 32 bytes each in the manifest: a 128 KB ceiling however long the video
MP4 = b"video/mp4"
C2PA_UUID = bytes.fromhex("d8fec3d61b0e483c92975828877ec481")  # the manifest store's uuid box type
MERKLE_SETTINGS = {"core": {"merkle_tree_max_proofs": 0}}

_bound: Any = None


class EmbedError(Exception):
    """The asset is not a signable MP4, or c2pa-rs refused a step."""


@dataclass(frozen=True)
class Box:
    kind: bytes
    offset: int
    size: int
    header: int  # 8, or 16 with a 64-bit size


def top_level_boxes(stream: BinaryIO, end: int) -> Iterator[Box]:
    """The ISO BMFF top-level boxes of a file of `end` bytes; refuses anything that does not tile it."""
    offset = 0
    while offset < end:
        stream.seek(offset)
        head = stream.read(8)
        if len(head) < 8:
            raise EmbedError(f"truncated box header at {offset}")
        size, kind = struct.unpack(">I4s", head)
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", stream.read(8))[0], 16
        elif size == 0:
            size = end - offset
        if size < header or offset + size > end:
            raise EmbedError(f"box {kind!r} at {offset} does not fit the file")
        yield Box(kind, offset, size, header)
        offset += size


def leaf_kb(mdat_bytes: int) -> int:
    """Leaves of at least 1 MiB, doubled until the tree has at most MAX_LEAVES of them."""
    kb = MIN_LEAF_KB
    while mdat_bytes > kb * 1024 * MAX_LEAVES:
        kb *= 2
    return kb


def sign_in_place(path: Path, builder: Any) -> None:
    """Embed `builder`'s signed manifest in the MP4 at `path`; on any failure the file is restored."""
    import c2pa

    lib = _lib()
    original = path.stat().st_size
    with path.open("r+b") as f:
        boxes = list(top_level_boxes(f, original))
        if not any(b.kind == b"moov" for b in boxes):
            raise EmbedError("not an MP4: no moov box")
        if any(_is_manifest(f, b) for b in boxes):
            raise EmbedError("the file already carries a C2PA manifest")
        mdats = [b for b in boxes if b.kind == b"mdat"]
        try:
            placeholder = _call_bytes(lib.c2pa_builder_placeholder, builder._handle, MP4)
            _check(
                lib.c2pa_builder_set_fixed_size_merkle(
                    builder._handle, leaf_kb(max((b.size for b in mdats), default=0))
                )
            )
            f.seek(original)
            f.write(placeholder)
            f.flush()
            for mdat_id, box in enumerate(mdats):
                _hash_mdat(lib, builder, f, mdat_id, box)
            f.seek(0)
            stream = c2pa.Stream(f)
            try:
                _check(lib.c2pa_builder_update_hash_from_stream(builder._handle, MP4, stream._stream))
            finally:
                stream.close()
            signed = _call_bytes(lib.c2pa_builder_sign_embeddable, builder._handle, MP4)
            f.seek(original)
            f.write(signed)
            f.truncate(original + len(signed))
        except BaseException:
            f.truncate(original)
            raise


def _is_manifest(f: BinaryIO, box: Box) -> bool:
    if box.kind != b"uuid":
        return False
    f.seek(box.offset + box.header)
    return f.read(16) == C2PA_UUID


def _hash_mdat(lib: Any, builder: Any, f: BinaryIO, mdat_id: int, box: Box) -> None:
    f.seek(box.offset + box.header)
    left, large = box.size - box.header, box.header == 16
    while left:
        chunk = f.read(min(left, READ_BYTES))
        if not chunk:
            raise EmbedError("file shrank while it was hashed")
        left -= len(chunk)
        _check(lib.c2pa_builder_hash_mdat_bytes(builder._handle, mdat_id, chunk, len(chunk), large))


def _check(result: int) -> int:
    if result < 0:
        from c2pa import c2pa as native

        raise EmbedError(native._read_native_error() or "c2pa-rs refused the step")
    return result


def _call_bytes(fn: Any, handle: Any, fmt: bytes) -> bytes:
    from c2pa import c2pa as native

    out = ctypes.POINTER(ctypes.c_ubyte)()
    n = _check(fn(handle, fmt, ctypes.byref(out)))
    try:
        return ctypes.string_at(out, n)
    finally:
        native._lib.c2pa_free(out)


def _lib() -> Any:
    """The native library with argument types set for the entry points c2pa-python leaves unwrapped."""
    global _bound
    if _bound is None:
        from c2pa import c2pa as native

        lib, builder = native._lib, ctypes.POINTER(native.C2paBuilder)
        out = ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte))
        signatures: dict[str, tuple[list[Any], Any]] = {
            "c2pa_builder_placeholder": ([builder, ctypes.c_char_p, out], ctypes.c_int64),
            "c2pa_builder_sign_embeddable": ([builder, ctypes.c_char_p, out], ctypes.c_int64),
            "c2pa_builder_set_fixed_size_merkle": ([builder, ctypes.c_size_t], ctypes.c_int),
            "c2pa_builder_hash_mdat_bytes": (
                [builder, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_bool],
                ctypes.c_int,
            ),
            "c2pa_builder_update_hash_from_stream": (
                [builder, ctypes.c_char_p, ctypes.POINTER(native.C2paStream)],
                ctypes.c_int,
            ),
        }
        for name, (args, result) in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, result
        _bound = lib
    return _bound
