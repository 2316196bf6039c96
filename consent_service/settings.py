"""Service settings, read from the environment with the CONSENT_ prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consent_service.hugepages import DEFAULT_MIN_RULES


class Settings(BaseSettings):
    """All configuration in one place; built once by `create_app`, never at import."""

    model_config = SettingsConfigDict(env_prefix="CONSENT_", env_file=None, extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path("var")
    database_url: str = ""
    # FULL makes every SQLite commit survive power loss, not only a killed process.
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"

    # Consent receipts: an Ed25519 key in PEM. Generated under data_dir on
    # first start outside production; production must point at a real key.
    receipt_key_path: Path | None = None
    receipt_previous_key_paths: list[Path] = Field(default_factory=list)
    receipt_ttl_seconds: int = Field(default=300, ge=1, le=600)
    receipt_issuer: str = "cameo-consent"

    max_cameos_per_check: int = Field(default=8, ge=1, le=64)
    max_prompt_chars: int = Field(default=4000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Serve consent checks through api/hot_path.py, skipping FastAPI's per-request
    # machinery; off sends them through the ordinary route (same function, same answers).
    check_hot_path: bool = True
    # FastAPI's native OpenTelemetry traces, metrics and logs, with the globally configured
    # providers (opentelemetry-sdk and an exporter are then the operator's to install).
    otel_telemetry: bool = False
    # The event loop shares the GIL with the log integrator, replica sync and job threads. With
    # CPython's default 5 ms switch interval a busy thread holds the loop off 5 ms at a time;
    # 0.5 ms cut the HTTP benchmark's p90 from about 15 ms to 3-5 ms at 800 checks/s.
    gil_switch_interval_ms: float = Field(default=0.5, gt=0, le=100)

    # How often an instance pulls consent changes written by other instances
    # when no PostgreSQL notification arrives; bounds revocation lag.
    sync_interval_seconds: float = Field(default=0.25, gt=0, le=5)
    # A replica loaded with at least this many rules has the heap moved onto 2 MB pages
    # (hugepages.py): fewer TLB misses a decision. 0 turns it off.
    replica_huge_pages_min_rules: int = Field(default=DEFAULT_MIN_RULES, ge=0)
    adult_age_years: int = 18
    # Transparency log: checkpoints are signed as `log_origin` with an Ed25519
    # key (generated under data_dir outside production) and cosigned by witnesses.
    log_origin: str = "cameo-consent.example/audit-log"
    log_key_path: Path | None = None
    log_witness_keys: list[str] = Field(default_factory=list)
    log_integrate_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    # Log integration and SQLite WAL checkpoints. "process": in a child process, off the
    # event loop's GIL, one per data_dir (housekeeping.py); "thread": in this process,
    # which costs no start-up (tests, embedding).
    housekeeping: Literal["process", "thread"] = "process"
    # SQLite audit rows of consent checks. "journal": appended to a journal file on the event
    # loop, which also signs the receipt, and moved into the table in bulk by a child within
    # about 50 ms (audit_journal.py: with checks answered by consent-serve's protocol, about 30%
    # less CPU a check than "process" and p99 as good or better at 1,500 and 2,500 checks/s and
    # beside a busy neighbour, bench/HTTP_LOG.md, fifteenth sitting); "process": committed by a
    # child process before the check answers (audit_process.py); "loop": committed on the event
    # loop itself.
    audit_writer: Literal["process", "journal", "loop"] = "journal"
    # Checks waiting for their audit rows beyond this are refused at once (503 `overloaded`,
    # Retry-After): a bounded wait instead of a queue, and its memory, growing without end
    # when checks come faster than rows commit. On the slowest machine measured here, at
    # 1,500 checks/s, p99 was 0.45 s: about 700 checks waiting at a time, far below this.
    audit_max_pending: int = Field(default=5_000, ge=1)
    # The gated generator: a local diffusers pipeline directory (none: generation is unavailable).
    generator_model_dir: Path | None = None
    generator_device: str = "auto"
    generator_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    generation_max_frames: int = Field(default=81, ge=1)
    generation_max_side: int = Field(default=832, ge=16)
    generation_max_steps: int = Field(default=50, ge=1)
    # Provenance: every released video is C2PA-signed. Outside production a local CA under
    # data_dir/c2pa is created on first use; production points at a chain, key and anchors.
    public_base_url: str = "http://127.0.0.1:8000"
    c2pa_chain_path: Path | None = None
    c2pa_key_path: Path | None = None
    c2pa_anchors_path: Path | None = None
    # A KMS or HSM instead of a key file: "package.module:function" signing bytes with the
    # leaf's key (used with c2pa_chain_path and c2pa_anchors_path; c2pa_key_path stays unset).
    c2pa_sign_callback: str | None = None
    c2pa_tsa_url: str | None = None
    c2pa_tsa_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    max_video_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    # A visible "AI-generated · @handle" label on every released video.
    visible_label: bool = True
    # Jobs run in this process by default; "celery" sends them to GPU workers through Redis.
    job_backend: Literal["inprocess", "celery"] = "inprocess"
    celery_broker_url: str = "redis://127.0.0.1:6379/0"
    # AES-GCM key (32 bytes) for secrets at rest; older keys still open what they sealed.
    secrets_key_path: Path | None = None
    secrets_previous_key_paths: list[Path] = Field(default_factory=list)
    # A disabled or revoked API key keeps working for at most this long.
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=60)

    # Cameo verification. Face and voice templates are sealed with AES-GCM under this 32-byte
    # key (generated under data_dir outside production); previous keys still open old ones.
    biometric_key_path: Path | None = None
    biometric_previous_key_paths: list[Path] = Field(default_factory=list)
    # dlib and resemblyzer ship their weights; insightface packs and ECAPA checkpoints are
    # production models loaded from these directories.
    verification_face_backend: Literal["dlib", "insightface"] = "dlib"
    verification_face_model_dir: Path | None = None
    verification_voice_backend: Literal["resemblyzer", "ecapa"] = "resemblyzer"
    verification_voice_model_dir: Path | None = None
    # Similarity thresholds; unset uses the model's own operating point.
    verification_face_threshold: float | None = Field(default=None, ge=-1, le=1)
    verification_voice_threshold: float | None = Field(default=None, ge=-1, le=1)
    verification_yaw_threshold: float = Field(default=0.08, gt=0, le=1)
    verification_sample_fps: float = Field(default=5.0, gt=0, le=30)
    verification_frame_side: int = Field(default=480, ge=160, le=1920)
    verification_challenge_ttl_seconds: int = Field(default=300, ge=30, le=300)
    verification_max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    verification_max_seconds: float = Field(default=30.0, gt=0, le=120)
    verification_min_seconds: float = Field(default=2.0, ge=0)
    verification_max_side: int = Field(default=1920, ge=160)
    verification_min_side: int = Field(default=240, ge=16)
    # 5 failed attempts within 3 minutes start a cooldown.
    verification_max_failures: int = Field(default=5, ge=1)
    verification_failure_window_seconds: int = Field(default=180, ge=1)
    verification_cooldown_seconds: int = Field(default=600, ge=1)
    # Raw uploads are deleted when their verification ends (0); otherwise kept this long, and
    # deleted by the housekeeper, which looks for uploads past their time this often.
    verification_retain_uploads_seconds: int = Field(default=0, ge=0, le=30 * 24 * 3600)
    verification_purge_interval_seconds: float = Field(default=30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _refuse_placeholders_in_production(self) -> Settings:
        missing = [
            n
            for n in ("receipt_key_path", "log_key_path", "secrets_key_path", "biometric_key_path")
            if getattr(self, n) is None
        ]
        if self.environment == "production" and missing:
            raise ValueError(f"set {', '.join('CONSENT_' + n.upper() for n in missing)} in production")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The configured database URL, or a SQLite file under data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'consent.db').as_posix()}"

    @property
    def resolved_secrets_key_path(self) -> Path:
        return self.secrets_key_path or self.data_dir / "secrets.key"

    @property
    def resolved_biometric_key_path(self) -> Path:
        return self.biometric_key_path or self.data_dir / "biometric.key"

    @property
    def verification_dir(self) -> Path:
        """Raw verification uploads, deleted when verification ends unless retention says otherwise."""
        return self.data_dir / "verification"

    @property
    def outputs_dir(self) -> Path:
        """Generated videos: held/ (never served) and released/ (signed)."""
        return self.data_dir / "outputs"

    @property
    def resolved_log_key_path(self) -> Path:
        """Where the checkpoint signing key lives."""
        return self.log_key_path or self.data_dir / "log_ed25519.pem"

    @property
    def resolved_receipt_key_path(self) -> Path:
        """Where the receipt signing key lives."""
        return self.receipt_key_path or self.data_dir / "receipt_ed25519.pem"
