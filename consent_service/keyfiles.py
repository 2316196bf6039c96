"""Key files created once, whole, however many processes start on a fresh data directory at once."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def read_or_create(path: Path, *, create: bool, make: Callable[[], bytes]) -> bytes:
    """The bytes of the key file at `path`; where it is missing and `create`, `make()`'s first.

    uvicorn workers start side by side, and each builds its keys. When each wrote a key of its
    own, every process kept the one it made, the file held the last, and after a restart
    everything made with the others was lost: receipts no key verifies, webhook secrets and
    biometric templates nothing decrypts, log checkpoints under a key no one publishes. So each
    candidate is written whole to a private file (mode 0600) and linked into place; linking fails
    when the name exists, so exactly one candidate wins, and every process reads the winner.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise FileNotFoundError(f"key file {path} does not exist") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, candidate = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(make())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(candidate, path)
        except FileExistsError:
            pass  # another process was first; its key is the one
        else:
            _fsync_directory(path.parent)  # a key must not vanish after data was sealed with it
    finally:
        os.unlink(candidate)
    return path.read_bytes()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
