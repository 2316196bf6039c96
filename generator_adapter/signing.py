"""C2PA provenance for generated videos: a signing identity, a signer, and a verifier (c2pa-python).

Signing embeds the manifest in the file where it lies (see c2pa_embed), so a video is never held in
memory whole, nor copied.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONSENT_LABEL = "org.cameo-consent.consent"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
NOT_ALLOWED = {"use": "notAllowed"}


class ProvenanceError(Exception):
    """Signing or reading failed; wraps the c2pa library's error."""


@dataclass(frozen=True)
class SigningIdentity:
    """A certificate chain (leaf first), its private key or a remote signer, and the trust anchors.

    With `sign_callback` the private key never enters this process: the callback (a KMS or HSM
    client) gets the bytes to sign and returns the signature, DER or raw, for the chain's leaf.
    """

    chain_pem: bytes
    key_pem: bytes
    anchors_pem: bytes
    alg: str = "es256"
    sign_callback: Callable[[bytes], bytes] | None = None

    @classmethod
    def remote(
        cls, *, chain: Path, anchors: Path, sign: Callable[[bytes], bytes], alg: str = "es256"
    ) -> SigningIdentity:
        return cls(chain.read_bytes(), b"", anchors.read_bytes(), alg, sign)

    @classmethod
    def from_files(cls, *, chain: Path, key: Path, anchors: Path, alg: str = "es256") -> SigningIdentity:
        return cls(chain.read_bytes(), key.read_bytes(), anchors.read_bytes(), alg)

    @classmethod
    def local(cls, directory: Path) -> SigningIdentity:
        """A local root CA and a signing certificate, created on first use and reused after.

        Workers starting together on a fresh data directory each made a CA of their own, and
        their files interleaved: a process could read one CA's chain beside another's key. They
        now take turns on a lock file, and each file is written whole before it takes its name.
        """
        files = [directory / n for n in ("root.pem", "chain.pem", "signer-key.pem")]
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".create-lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not all(f.exists() for f in files):
                _create_local_ca(directory)
        return cls.from_files(chain=files[1], key=files[2], anchors=files[0])


def _create_local_ca(directory: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cameo-consent (local)"),
            ]
        )

    def usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=sign,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=ca,
            crl_sign=ca,
            encipher_only=False,
            decipher_only=False,
        )

    now = dt.datetime.now(dt.UTC)
    root_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = (
        x509.CertificateBuilder()
        .subject_name(name("cameo-consent local root"))
        .issuer_name(name("cameo-consent local root"))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(sign=False, ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    # c2pa accepts a leaf only with digitalSignature, EKU emailProtection, SKI and AKI, not self-signed.
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("cameo-consent signer"))
        .issuer_name(root.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(sign=True, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    # The key last: `local` takes the three files as complete only once it is there.
    _write_whole(directory / "root.pem", root.public_bytes(pem))
    _write_whole(directory / "chain.pem", leaf.public_bytes(pem) + root.public_bytes(pem))
    _write_whole(
        directory / "signer-key.pem",
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def _write_whole(path: Path, data: bytes) -> None:
    """Write to a private temporary file, then rename it into place: never a partial file."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def build_manifest(manifest: Mapping[str, Any], *, claim_generator: str) -> dict[str, Any]:
    """The C2PA manifest of a generated video: AI-created, consent used, training and mining not allowed."""
    name, _, version = claim_generator.partition("/")
    assertions: list[dict[str, Any]] = [
        {
            "label": "c2pa.actions",
            "data": {
                "actions": [
                    {
                        "action": "c2pa.created",
                        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                        "softwareAgent": {
                            "name": manifest["model_id"],
                            "version": manifest.get("model_version", ""),
                        },
                    },
                    *(
                        [{"action": "c2pa.watermarked", "softwareAgent": {"name": name, "version": version}}]
                        if manifest.get("watermark")
                        else []
                    ),
                ]
            },
        },
        {
            "label": "cawg.training-mining",
            "data": {
                "entries": {
                    "cawg.ai_generative_training": NOT_ALLOWED,
                    "cawg.ai_inference": NOT_ALLOWED,
                    "cawg.ai_training": NOT_ALLOWED,
                    "cawg.data_mining": NOT_ALLOWED,
                }
            },
        },
        {"label": CONSENT_LABEL, "data": dict(manifest["consent"])},
    ]
    if manifest.get("watermark"):
        mark = manifest["watermark"]
        value = base64.b64encode(bytes.fromhex(mark["value"])).decode()
        assertions.append(
            {
                "label": "c2pa.soft-binding",
                "data": {"alg": mark["alg"], "blocks": [{"scope": {}, "value": value}]},
            }
        )
    return {
        "claim_generator_info": [{"name": name, "version": version}],
        "title": f"{manifest['generation_id']}.mp4",
        "format": "video/mp4",
        "assertions": assertions,
    }


class C2paSigner:
    """Signs MP4s in place with one reusable c2pa signer; an optional TSA is bounded by a hard timeout."""

    def __init__(
        self,
        identity: SigningIdentity,
        *,
        claim_generator: str,
        tsa_url: str | None = None,
        tsa_timeout: float = 10.0,
    ) -> None:
        import c2pa

        from generator_adapter.c2pa_embed import MERKLE_SETTINGS

        self.identity = identity
        self._claim_generator = claim_generator
        self._tsa_timeout = tsa_timeout
        try:
            if identity.sign_callback is not None:
                signer = c2pa.Signer.from_callback(
                    _guarded(identity.sign_callback),
                    getattr(c2pa.C2paSigningAlg, identity.alg.upper()),
                    identity.chain_pem.decode(),
                    tsa_url,
                )
            else:
                info = c2pa.C2paSignerInfo(
                    identity.alg.encode(),
                    identity.chain_pem,
                    identity.key_pem,
                    tsa_url.encode() if tsa_url else None,
                )
                signer = c2pa.Signer.from_info(info)
            # The context takes the signer over: the placeholder API signs with the context's signer.
            self._context = c2pa.Context(settings=c2pa.Settings.from_dict(MERKLE_SETTINGS), signer=signer)
        except (c2pa.C2paError, AttributeError) as exc:
            raise ProvenanceError(f"signing identity refused: {exc}") from exc
        self._lock = threading.Lock()  # one c2pa signer is reused; calls into it are serialised

    def sign_in_place(self, path: Path, *, manifest: Mapping[str, Any]) -> None:
        """Embed a signed manifest in the MP4 at `path`; raises ProvenanceError and leaves it unsigned."""
        import c2pa

        from generator_adapter.c2pa_embed import sign_in_place

        document = json.dumps(build_manifest(manifest, claim_generator=self._claim_generator))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock, c2pa.Builder(document, context=self._context) as builder:
                    sign_in_place(path, builder)
            except BaseException as exc:  # handed to the caller's thread
                errors.append(exc)

        worker = threading.Thread(target=run, name="c2pa-sign", daemon=True)
        worker.start()
        worker.join(self._tsa_timeout + 60)
        if worker.is_alive():
            raise ProvenanceError("signing timed out (time-stamp authority did not answer)")
        if errors:
            raise ProvenanceError(f"signing failed: {errors[0]}") from errors[0]


def _guarded(sign: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """A remote signer that fails returns no signature, so c2pa fails the signing, never the process."""

    def call(data: bytes) -> bytes:
        try:
            return bytes(sign(data))
        except Exception:
            log.exception("remote signer failed")
            return b""

    return call


def load_callback(spec: str) -> Callable[[bytes], bytes]:
    """`package.module:function`, a callable that signs bytes with a key held in a KMS or HSM."""
    import importlib

    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"sign callback {spec!r} must look like package.module:function")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise ValueError(f"{spec} is not callable")
    return fn


@dataclass(frozen=True)
class ProvenanceReport:
    state: str  # Trusted, Valid or Invalid
    failures: list[str]
    trusted: bool
    title: str | None = None
    claim_generator: str | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)
    training_mining: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)


def verify_video(path: Path, *, anchors_pem: bytes) -> ProvenanceReport:
    """Read and validate a video's C2PA manifest against the given trust anchors."""
    import c2pa

    context = c2pa.Context.from_dict({"trust": {"user_anchors": anchors_pem.decode()}})
    try:
        with path.open("rb") as stream:
            report = json.loads(c2pa.Reader("video/mp4", stream, context=context).json())
    except c2pa.C2paError as exc:
        raise ProvenanceError(f"no readable C2PA manifest: {exc}") from exc
    results = report.get("validation_results", {}).get("activeManifest", {})
    failures = [f["code"] for f in results.get("failure", [])]
    manifest = report.get("manifests", {}).get(report.get("active_manifest", ""), {})
    by_label = {
        a["label"].split(".v")[0] if a["label"].startswith("c2pa.actions") else a["label"]: a.get("data", {})
        for a in manifest.get("assertions", [])
    }
    generator = (manifest.get("claim_generator_info") or [{}])[0]
    return ProvenanceReport(
        state=report.get("validation_state", "Invalid"),
        failures=failures,
        trusted=report.get("validation_state") == "Trusted",
        title=manifest.get("title"),
        claim_generator=f"{generator.get('name', '')}/{generator.get('version', '')}",
        actions=by_label.get("c2pa.actions", {}).get("actions", []),
        training_mining=by_label.get("cawg.training-mining", {}).get("entries", {}),
        consent=by_label.get(CONSENT_LABEL, {}),
    )
