"""The transparency log: checkpoints (public), entries, proofs and exports (auditors)."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, StreamingResponse

from consent_service.api.deps import RuntimeDep, SessionDep, require
from consent_service.models import PrincipalRef
from consent_service.schemas import INT64_MAX, CosignatureIn, LogEntries, LogKey, Proof, PseudonymPublic
from consent_service.services import audit_read

router = APIRouter(tags=["audit log"])
Auditor = Annotated[PrincipalRef, Depends(require("audit", "read"))]
NOTE = "text/plain; charset=utf-8"
Size = Annotated[int, Path(ge=0, le=INT64_MAX)]


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


@router.get("/v1/log/key", response_model=LogKey)
def log_key(runtime: RuntimeDep) -> LogKey:
    """The log's origin and the verifier key that signs its checkpoints."""
    return LogKey(origin=runtime.log.origin, vkey=runtime.log.signer.vkey)


@router.get("/v1/log/checkpoint", response_class=PlainTextResponse)
def latest_checkpoint(runtime: RuntimeDep) -> PlainTextResponse:
    """The latest signed checkpoint (C2SP signed note), with witness cosignatures."""
    return PlainTextResponse(runtime.log.checkpoint().note, media_type=NOTE)


@router.get("/v1/log/checkpoints/{size}", response_class=PlainTextResponse)
def checkpoint_by_size(size: Size, runtime: RuntimeDep) -> PlainTextResponse:
    """The signed checkpoint of one tree size."""
    return PlainTextResponse(runtime.log.checkpoint(size).note, media_type=NOTE)


@router.post("/v1/log/checkpoints/{size}/cosignatures", status_code=201)
def add_cosignature(size: Size, body: CosignatureIn, runtime: RuntimeDep) -> dict[str, str]:
    """Store a configured witness's cosignature; it is verified, so no API key is needed."""
    return {"witness": runtime.log.add_cosignature(size=size, line=body.cosignature)}


@router.get("/v1/log/entries", response_model=LogEntries)
def log_entries(
    runtime: RuntimeDep,
    caller: Auditor,
    start: Annotated[int, Query(ge=0, le=INT64_MAX)],
    end: Annotated[int, Query(ge=0, le=INT64_MAX)],
) -> LogEntries:
    """Canonical entries with index in [start, end), at most 10,000."""
    rows = runtime.log.entries(start=start, end=end)
    return LogEntries(entries=[{"index": i, "entry": e} for i, e in rows])


@router.get("/v1/log/proofs/inclusion", response_model=Proof)
def inclusion_proof(
    runtime: RuntimeDep,
    caller: Auditor,
    index: Annotated[int, Query(ge=0, le=INT64_MAX)],
    tree_size: Annotated[int, Query(ge=1, le=INT64_MAX)],
) -> Proof:
    """RFC 9162 inclusion proof of one entry in a tree size."""
    return Proof(hashes=_b64(runtime.log.inclusion_proof(index=index, size=tree_size)))


@router.get("/v1/log/proofs/consistency", response_model=Proof)
def consistency_proof(
    runtime: RuntimeDep,
    caller: Auditor,
    first: Annotated[int, Query(ge=1, le=INT64_MAX)],
    second: Annotated[int, Query(ge=1, le=INT64_MAX)],
) -> Proof:
    """RFC 9162 consistency proof between two tree sizes."""
    return Proof(hashes=_b64(runtime.log.consistency_proof(first=first, second=second)))


@router.get("/v1/audit/export")
async def export(
    runtime: RuntimeDep, caller: Auditor, tree_size: Annotated[int | None, Query(ge=0, le=INT64_MAX)] = None
) -> StreamingResponse:
    """NDJSON: a signed checkpoint, then every entry below its size with its inclusion proof."""
    lines = runtime.log.export(size=tree_size)
    first = await run_in_threadpool(next, lines)  # raise 404 before the stream starts
    return StreamingResponse(_chain(first, lines), media_type="application/x-ndjson")


async def _chain(first: str, rest: Any) -> Any:
    yield first
    sentinel = object()
    while (line := await run_in_threadpool(next, rest, sentinel)) is not sentinel:
        yield line


@router.get("/v1/audit/pseudonyms/{principal_id}", response_model=PseudonymPublic)
def resolve_pseudonym(principal_id: str, session: SessionDep, caller: Auditor) -> PseudonymPublic:
    """Who a pseudonymous id in the log is: auditors only."""
    return PseudonymPublic(**audit_read.resolve_pseudonym(session, principal_id=principal_id))
