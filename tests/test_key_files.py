"""Key files: made once, whole and private, however many processes start at once."""

import stat

import pytest
from cryptography.hazmat.primitives import serialization

from consent_service import receipts, secretbox
from tests.conftest import at_once


def _raw(key):
    if isinstance(key, bytes):
        return key
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


@pytest.mark.parametrize("load", [receipts.load_or_create_key, secretbox.load_or_create_key])
def test_processes_starting_at_once_all_get_the_key_on_disk(tmp_path, load):
    # uvicorn workers on a fresh data directory each build their keys at the same moment.
    for trial in range(10):
        path = tmp_path / f"trial{trial}" / "some.key"
        keys = at_once(lambda path=path: _raw(load(path, create=True)), 8)
        assert len(set(keys)) == 1, "processes kept different keys"
        assert keys[0] == _raw(load(path, create=False))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [p.name for p in path.parent.iterdir()] == ["some.key"]  # no candidates left behind


@pytest.mark.parametrize("load", [receipts.load_or_create_key, secretbox.load_or_create_key])
def test_a_missing_key_is_not_made_where_creation_is_off(tmp_path, load):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.key", create=False)
    assert list(tmp_path.iterdir()) == []
