"""The transparency log through the API, the offline verifier CLI, and every tamper case."""

import base64
import json
import sqlite3
import threading

import pytest
from sqlalchemy import text

from audit import verify_cli
from audit.hashes import leaf_hash
from audit.notes import NoteSigner, checkpoint_body, witness_cosign
from audit.verifier import (
    VerificationError,
    VerifierKey,
    parse_checkpoint,
    verify_consistency,
    verify_inclusion,
    verify_note,
)


def _activity(api, checks=3):
    api.user_with_cameo("alice", audience="everyone")
    api.principal("bob")
    for _ in range(checks):
        api.check("bob", ["alice"])


def _integrate(api):
    log = api.client.app.state.runtime.log
    while log.integrate() is not None:
        pass
    return log


def _vkey(api):
    r = api.client.get("/v1/log/key")
    assert r.status_code == 200
    return r.json()["vkey"]


def test_log_checkpoint_is_a_signed_c2sp_note(api):
    _activity(api)
    _integrate(api)
    r = api.client.get("/v1/log/checkpoint")  # public: no key needed
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    note = r.text
    body = verify_note(note, VerifierKey.parse(_vkey(api)))
    cp = parse_checkpoint(body)
    assert cp.origin == "cameo-consent.example/audit-log" and cp.size >= 10
    assert note.split("\n")[4].startswith("\u2014 cameo-consent.example/audit-log ")
    assert api.client.get(f"/v1/log/checkpoints/{cp.size}").text == note
    assert api.client.get("/v1/log/checkpoints/999999").status_code == 404


def test_log_entry_and_inclusion_proof_verify_offline(api):
    _activity(api)
    _integrate(api)
    cp = parse_checkpoint(
        verify_note(api.client.get("/v1/log/checkpoint").text, VerifierKey.parse(_vkey(api)))
    )
    entries = api.call("GET", "/v1/log/entries", "auditor", params={"start": 0, "end": cp.size}).json()[
        "entries"
    ]
    assert [e["index"] for e in entries] == list(range(cp.size))
    checks = [e for e in entries if json.loads(e["entry"])["action"] == "consent.check"]
    assert len(checks) == 3 and "bob" not in checks[0]["entry"]  # pseudonymous: ids, not handles
    for e in (entries[0], checks[-1]):
        proof = api.call(
            "GET", "/v1/log/proofs/inclusion", "auditor", params={"index": e["index"], "tree_size": cp.size}
        ).json()["hashes"]
        verify_inclusion(
            leaf_hash(e["entry"].encode()), e["index"], cp.size, [base64.b64decode(h) for h in proof], cp.root
        )


def test_log_consistency_between_checkpoints(api):
    _activity(api, checks=1)
    log = _integrate(api)
    first = log.checkpoint()
    api.check("bob", ["alice"])
    api.call("PATCH", "/v1/cameos/alice", "alice", json={"audience": "approved"})
    _integrate(api)
    second = log.checkpoint()
    assert second.size > first.size
    proof = api.call(
        "GET", "/v1/log/proofs/consistency", "auditor", params={"first": first.size, "second": second.size}
    ).json()["hashes"]
    verify_consistency(first.size, second.size, first.root, second.root, [base64.b64decode(h) for h in proof])
    r = api.call("GET", "/v1/log/proofs/consistency", "auditor", params={"first": 1, "second": 10**9})
    assert r.status_code == 422 and r.json()["error"]["code"] == "log_request_invalid"


def test_log_read_routes_are_for_auditors_only(api):
    _activity(api, checks=1)
    _integrate(api)
    api.principal("carol")
    routes = [
        ("/v1/log/entries", {"start": 0, "end": 2}),
        ("/v1/log/proofs/inclusion", {"index": 0, "tree_size": 2}),
        ("/v1/log/proofs/consistency", {"first": 1, "second": 2}),
        ("/v1/audit/export", {}),
        ("/v1/audit/pseudonyms/x", {}),
    ]
    for path, params in routes:
        for who in ("plat", "carol"):
            assert api.call("GET", path, who, params=params).status_code == 403, (who, path)
        assert api.client.get(path, params=params).status_code == 401
        assert api.call("GET", path, "root", params=params).status_code in (200, 404)


def test_log_pseudonyms_resolve_for_auditors(api):
    bob = api.principal("bob")
    r = api.call("GET", f"/v1/audit/pseudonyms/{bob}", "auditor")
    assert r.status_code == 200 and r.json() == {"id": bob, "kind": "user", "handle": "bob"}
    assert api.call("GET", "/v1/audit/pseudonyms/nobody", "auditor").status_code == 404


def _export(api, tmp_path):
    _integrate(api)
    r = api.call("GET", "/v1/audit/export", "auditor")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    path = tmp_path / "export.ndjson"
    path.write_text(r.text)
    key = tmp_path / "log.vkey"
    key.write_text(_vkey(api))
    return path, key


def _cli(export, key, *checkpoints):
    args = ["--export", str(export), "--key", str(key)]
    for cp in checkpoints:
        args += ["--checkpoint", str(cp)]
    return verify_cli.main(args)


def test_log_export_verifies_with_the_cli(api, tmp_path, capsys):
    _activity(api)
    path, key = _export(api, tmp_path)
    assert _cli(path, key) == 0
    assert "OK:" in capsys.readouterr().out


def _rewrite(path, change):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(change(lines)))


def _flip_byte(lines):
    doc = json.loads(lines[3])
    doc["entry"] = doc["entry"].replace('"action":"', '"action":"X', 1)
    lines[3] = json.dumps(doc) + "\n"
    return lines


@pytest.mark.parametrize(
    ("case", "change", "message"),
    [
        ("flipped byte in an entry", _flip_byte, "not included"),
        ("deleted entry", lambda lines: lines[:4] + lines[5:], "missing or reordered"),
        (
            "two entries reordered",
            lambda lines: [*lines[:3], lines[4], lines[3], *lines[5:]],
            "missing or reordered",
        ),
        ("truncated export", lambda lines: lines[:-1], "export holds"),
    ],
)
def test_log_tampering_is_detected(api, tmp_path, capsys, case, change, message):
    _activity(api)
    path, key = _export(api, tmp_path)
    _rewrite(path, change)
    assert _cli(path, key) == 1, case
    assert message in capsys.readouterr().err


def test_log_fork_is_detected(api, tmp_path, capsys):
    """Two checkpoints of one size with different roots, both validly signed: a split view."""
    _activity(api)
    path, key = _export(api, tmp_path)
    log = api.client.app.state.runtime.log
    real = log.checkpoint()
    forged_root = leaf_hash(b"a different history")
    forked = NoteSigner(name=log.origin, key=log.signer.key).sign(
        checkpoint_body(log.origin, real.size, forged_root)
    )
    fork_file = tmp_path / "fork.txt"
    fork_file.write_text(forked)
    assert _cli(path, key, fork_file) == 1
    assert "fork" in capsys.readouterr().err


def test_log_older_checkpoints_agree_with_the_export(api, tmp_path):
    _activity(api, checks=1)
    log = _integrate(api)
    old = tmp_path / "old.txt"
    old.write_text(log.checkpoint().note)
    api.check("bob", ["alice"])
    path, key = _export(api, tmp_path)
    assert _cli(path, key, old) == 0


def test_log_database_tampering_breaks_verification(api, tmp_path, capsys):
    _activity(api)
    _integrate(api)
    engine = api.client.app.state.runtime.engine
    with engine.begin() as conn:  # an attacker with database access rewrites history
        seq = conn.execute(
            text("SELECT max(seq) FROM audit_event WHERE action = 'consent.check'")
        ).scalar_one()
        conn.execute(
            text("UPDATE audit_event SET entry = replace(entry, 'allow', 'deny') WHERE seq = :s"), {"s": seq}
        )
    path, key = _export(api, tmp_path)
    assert _cli(path, key) == 1
    assert "not included" in capsys.readouterr().err
    with engine.begin() as conn:  # restore so the session-end check sees the true log
        conn.execute(
            text("UPDATE audit_event SET entry = replace(entry, 'deny', 'allow') WHERE seq = :s"), {"s": seq}
        )


def test_log_refuses_to_sign_over_a_rewritten_tree(api):
    """If the stored subtree the next checkpoint builds on is altered, the log stops signing."""
    from audit.tree import Frontier

    _activity(api)
    log = _integrate(api)
    level, idx = Frontier.coords(log.checkpoint().size)[0]
    engine = log.tree_engine
    where = "WHERE level = :l AND idx = :i"
    with engine.begin() as conn:
        original = conn.execute(
            text(f"SELECT hash FROM log_node {where}"), {"l": level, "i": idx}
        ).scalar_one()
        conn.execute(
            text(f"UPDATE log_node SET hash = :h {where}"), {"h": b"\x01" * 32, "l": level, "i": idx}
        )
    api.check("bob", ["alice"])
    with pytest.raises(RuntimeError, match="refusing to sign"):
        log.integrate()
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE log_node SET hash = :h {where}"), {"h": original, "l": level, "i": idx})


def test_log_tree_lives_beside_a_sqlite_database(api):
    """Integrating takes only the tree file's write lock, so audit commits never wait for it."""
    _activity(api)
    log = api.client.app.state.runtime.log
    if log.engine.dialect.name != "sqlite":
        assert log.tree_engine is log.engine  # PostgreSQL locks rows, not the database
        return
    assert log.tree_engine.url.database == log.engine.url.database.removesuffix(".db") + ".tree.db"
    with log.engine.connect() as conn:
        assert not conn.execute(text("SELECT 1 FROM sqlite_master WHERE name = 'log_node'")).all()
    holder = sqlite3.connect(log.engine.url.database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # an audit commit in progress
    try:
        done = threading.Event()
        worker = threading.Thread(target=lambda: (log.integrate(sign=False), done.set()))
        worker.start()
        worker.join(timeout=10)
        assert done.is_set(), "integration waited for the database's write lock"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with log.tree_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM log_node WHERE level = 0")).scalar_one() >= 8


def _drop_tree(log):
    with log.tree_engine.begin() as conn:
        conn.execute(text("DELETE FROM log_node"))  # a lost tree file, as the integrator sees it


def test_log_rebuilds_a_lost_tree_one_checkpoint_at_a_time(api):
    _activity(api, checks=1)
    log = _integrate(api)
    log.stop()  # the background integrator would race this test's steps
    api.check("bob", ["alice"])
    _integrate(api)
    before = log.checkpoint()
    old_proof = log.inclusion_proof(index=1, size=before.size)
    with log.engine.connect() as conn:
        sizes = list(conn.execute(text("SELECT tree_size FROM log_checkpoint ORDER BY tree_size")).scalars())
    assert len(sizes) >= 2
    _drop_tree(log)
    r = api.call("GET", "/v1/log/proofs/inclusion", "auditor", params={"index": 1, "tree_size": before.size})
    assert r.status_code == 503 and r.json()["error"]["code"] == "log_tree_rebuilding"
    api.check("bob", ["alice"])
    # Unsigned steps that each end on a checkpoint, whatever max_leaves asks, each stored only
    # once its root is that checkpoint's; nothing new is signed until the last is reached.
    assert [log.integrate(max_leaves=1) for _ in sizes] == sizes
    assert log.checkpoint().size == before.size
    _integrate(api)
    after = log.checkpoint()
    assert after.size > before.size
    assert log.inclusion_proof(index=1, size=before.size) == old_proof
    proof = log.consistency_proof(first=before.size, second=after.size)
    verify_consistency(before.size, after.size, before.root, after.root, proof)


def test_log_refuses_to_rebuild_over_rewritten_entries(api):
    _activity(api)
    log = _integrate(api)
    log.stop()
    size = log.checkpoint().size
    _drop_tree(log)
    with log.engine.begin() as conn:
        original = conn.execute(text("SELECT entry FROM audit_event WHERE seq = 2")).scalar_one()
        conn.execute(text("UPDATE audit_event SET entry = :e WHERE seq = 2"), {"e": original + " "})
    try:
        with pytest.raises(RuntimeError, match="refusing to rebuild"):
            _integrate(api)
        # Read a chunk at a time into one transaction: the chunks before the mismatch are not kept.
        with pytest.raises(RuntimeError, match="refusing to rebuild"):
            log.integrate(max_leaves=1)
        with log.tree_engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM log_node")).scalar_one() == 0
        assert log.checkpoint().size == size  # nothing new was signed
    finally:
        with log.engine.begin() as conn:
            conn.execute(text("UPDATE audit_event SET entry = :e WHERE seq = 2"), {"e": original})


def test_log_accepts_only_known_witness_cosignatures(settings, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from fastapi.testclient import TestClient

    from consent_service.app import create_app
    from tests.conftest import bootstrap_admin

    witness_key = Ed25519PrivateKey.generate()
    vkey, _ = witness_cosign(witness_key, "witness.example", "x\n", 0)
    bootstrap_admin(settings.resolved_database_url)
    with TestClient(create_app(settings.model_copy(update={"log_witness_keys": [vkey]}))) as client:
        log = client.app.state.runtime.log
        log.integrate()
        cp = log.checkpoint()
        body = checkpoint_body(log.origin, cp.size, cp.root)
        _, line = witness_cosign(witness_key, "witness.example", body, 1_700_000_000)
        r = client.post(f"/v1/log/checkpoints/{cp.size}/cosignatures", json={"cosignature": line})
        assert r.status_code == 201 and r.json() == {"witness": "witness.example"}
        assert line in client.get("/v1/log/checkpoint").text
        _, wrong_body = witness_cosign(witness_key, "witness.example", body.replace("\n", "\n\n", 1), 1)
        bad = client.post(f"/v1/log/checkpoints/{cp.size}/cosignatures", json={"cosignature": wrong_body})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "cosignature_rejected"
        _, stranger = witness_cosign(Ed25519PrivateKey.generate(), "stranger", body, 1)
        assert (
            client.post(
                f"/v1/log/checkpoints/{cp.size}/cosignatures", json={"cosignature": stranger}
            ).status_code
            == 422
        )
        # The log's own signature still verifies with cosignatures appended.
        verify_note(client.get("/v1/log/checkpoint").text, VerifierKey.parse(log.signer.vkey))


def test_log_verifier_rejects_bad_keys_and_notes():
    with pytest.raises(VerificationError):
        VerifierKey.parse("name+00000000+AAAA")
    signer_key = __import__(
        "cryptography.hazmat.primitives.asymmetric.ed25519", fromlist=["x"]
    ).Ed25519PrivateKey
    signer = NoteSigner(name="log.example", key=signer_key.generate())
    other = NoteSigner(name="log.example", key=signer_key.generate())
    note = signer.sign("log.example\n1\n" + base64.b64encode(b"\x00" * 32).decode() + "\n")
    assert verify_note(note, VerifierKey.parse(signer.vkey)).startswith("log.example\n1\n")
    with pytest.raises(VerificationError):
        verify_note(note, VerifierKey.parse(other.vkey))
    with pytest.raises(VerificationError):
        verify_note(note.replace("\n1\n", "\n2\n"), VerifierKey.parse(signer.vkey))
