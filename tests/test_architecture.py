"""Architectural rules, enforced by scanning the source."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["consent_service", "policy", "audit", "generator_adapter"]
HEAVY = {"torch", "diffusers", "insightface", "speechbrain", "onnxruntime", "transformers", "resemblyzer"}


def _sources():
    for pkg in PACKAGES:
        yield from (ROOT / pkg).rglob("*.py")


def test_no_update_or_delete_of_audit_rows():
    pattern = re.compile(
        r"(update|delete)\s*\(\s*(AuditEvent|LogNode|LogCheckpoint)|"
        r"(AuditEvent|LogNode|LogCheckpoint)\b.*\.(delete|update)\(|"
        r"(UPDATE|DELETE FROM)\s+(audit_event|log_node|log_checkpoint)",
        re.IGNORECASE,
    )
    assert pattern.search("session.execute(delete(AuditEvent).where(x))")  # the scan can fail
    assert pattern.search('text("UPDATE audit_event SET reason = 1")')
    offenders = [str(p) for p in _sources() if pattern.search(p.read_text())]
    assert offenders == []


def test_services_never_raise_http_exceptions():
    for path in (ROOT / "consent_service" / "services").rglob("*.py"):
        assert "HTTPException" not in path.read_text(), path
        assert "fastapi" not in path.read_text(), path


def test_heavy_imports_only_at_function_level_in_their_own_modules():
    for path in _sources():
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            assert not HEAVY & set(names), f"{path} imports {names} at module level"


ENTRY_MODULES = {"celery_worker.py"}  # loaded only by a process launcher, like __main__


def test_settings_are_never_built_at_import_time():
    for path in _sources():
        if path.name in ENTRY_MODULES:
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign | ast.AnnAssign | ast.Expr):
                src = ast.unparse(node)
                assert "Settings()" not in src, f"{path}: {src}"


def test_routes_are_thin():
    """A route body stays a few statements; rules live in services."""
    for path in (ROOT / "consent_service" / "api").glob("routes_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.decorator_list:
                body = [n for n in node.body if not isinstance(n, ast.Expr)]
                assert len(body) <= 3, f"{path}:{node.name} has {len(body)} statements"


def test_offline_verifier_shares_only_hash_definitions_with_the_writer():
    tree = ast.parse((ROOT / "audit" / "verifier.py").read_text())
    project = {"consent_service", "policy", "audit", "generator_adapter"}
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert {m for m in imported if m.split(".")[0] in project} == {"audit.hashes"}
