"""The one domain error hierarchy. Services raise these; the API maps codes to HTTP once."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every error a service raises on purpose; `code` is stable for clients."""

    code = "domain_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidRequest(DomainError):
    code = "invalid_request"


class TooManyCameos(InvalidRequest):
    code = "too_many_cameos"


class PromptTooLong(InvalidRequest):
    code = "prompt_too_long"


class BodyTooLarge(InvalidRequest):
    code = "body_too_large"


class NulCharacter(InvalidRequest):
    """PostgreSQL cannot store U+0000 in text, so no route accepts it, on either database."""

    code = "nul_character"


class Unauthenticated(DomainError):
    code = "unauthenticated"


class Forbidden(DomainError):
    code = "forbidden"


class NotFound(DomainError):
    code = "not_found"


class UnknownHandle(NotFound):
    code = "unknown_handle"


class CameoNotFound(NotFound):
    code = "cameo_not_found"


class Conflict(DomainError):
    code = "conflict"


class HandleTaken(Conflict):
    code = "handle_taken"


class CameoExists(Conflict):
    code = "cameo_exists"


class PolicyViolation(DomainError):
    """A change the consent rules forbid, such as a minor's cameo open to everyone."""

    code = "policy_violation"


class MinorAudienceForbidden(PolicyViolation):
    code = "minor_audience_forbidden"


class StaleRevision(DomainError):
    """This instance cannot answer at the requested revision, so it refuses (fail closed)."""

    code = "revision_unavailable"


class ReceiptInvalid(DomainError):
    code = "receipt_invalid"


class ReceiptExpired(ReceiptInvalid):
    code = "receipt_expired"


class ReceiptForged(ReceiptInvalid):
    code = "receipt_signature_invalid"


class ReceiptMalformed(ReceiptInvalid):
    code = "receipt_malformed"


class ReceiptUnknownKey(ReceiptInvalid):
    code = "receipt_unknown_key"


class LogRequestInvalid(InvalidRequest):
    """A log range, tree size or proof request that cannot be answered."""

    code = "log_request_invalid"


class CheckpointNotFound(NotFound):
    code = "checkpoint_not_found"


class CosignatureRejected(InvalidRequest):
    code = "cosignature_rejected"


class EmptyPrompt(InvalidRequest):
    code = "empty_prompt"


class OverCap(InvalidRequest):
    code = "over_cap"


class UnknownMention(InvalidRequest):
    code = "unknown_mention"


class ConsentRefused(Forbidden):
    """A generation names a cameo without valid consent; details carry the per-cameo reasons."""

    code = "consent_refused"


class NotReleased(Conflict):
    code = "not_released"


class VideoTooLarge(BodyTooLarge):
    code = "video_too_large"


class NotAVideo(InvalidRequest):
    code = "not_a_video"


class NoProvenance(InvalidRequest):
    """The file carries no readable C2PA manifest (stripped, truncated or never signed)."""

    code = "no_provenance"


class UntrustedSigner(InvalidRequest):
    """The manifest is intact but signed by a CA outside this service's trust anchors."""

    code = "untrusted_signer"


class WatermarkNotFound(NotFound):
    code = "watermark_not_found"


class MediaRejected(InvalidRequest):
    """An uploaded verification video that cannot be checked; nothing about the attempt is consumed."""

    code = "media_rejected"


class UnsupportedMedia(MediaRejected):
    code = "media_unsupported"


class MediaNotVideo(UnsupportedMedia):
    code = "media_not_a_video"


class MediaUnsupportedCodec(UnsupportedMedia):
    code = "media_unsupported_codec"


class MediaNoAudio(MediaRejected):
    code = "media_no_audio"


class MediaTruncated(MediaRejected):
    code = "media_truncated"


class MediaTooLong(MediaRejected):
    code = "media_too_long"


class MediaTooShort(MediaRejected):
    code = "media_too_short"


class MediaResolution(MediaRejected):
    code = "media_resolution_unsupported"


class NoticeNotAccepted(Conflict):
    """Verification needs the current biometric consent notice accepted first."""

    code = "biometric_notice_not_accepted"


class ChallengeInvalid(DomainError):
    code = "challenge_invalid"


class ChallengeNotFound(NotFound):
    code = "challenge_not_found"


class ChallengeExpired(ChallengeInvalid):
    code = "challenge_expired"


class NonceReplayed(ChallengeInvalid):
    code = "nonce_replayed"


class NonceMismatch(ChallengeInvalid):
    code = "nonce_invalid"


class VerificationCooldown(DomainError):
    """Too many failed attempts in the window; details carry `retry_after_seconds`."""

    code = "verification_cooldown"


class AttemptNotFound(NotFound):
    code = "verification_attempt_not_found"


class Unavailable(DomainError):
    code = "unavailable"


class AuditUnavailable(Unavailable):
    """The decision could not be audited, so it is not given (fail closed)."""

    code = "audit_unavailable"


class Overloaded(Unavailable):
    """As many checks wait for their audit rows as CONSENT_AUDIT_MAX_PENDING allows: refused at
    once, no decision given or audited; details carry `retry_after_seconds`."""

    code = "overloaded"


class GeneratorUnavailable(Unavailable):
    code = "generator_unavailable"


class LogTreeBehind(Unavailable):
    """The log's tree does not yet cover the requested size: it is being rebuilt."""

    code = "log_tree_rebuilding"


# One table from error class to HTTP status; the most specific class wins.
HTTP_STATUS: dict[type[DomainError], int] = {
    BodyTooLarge: 413,
    UnsupportedMedia: 415,
    ChallengeInvalid: 409,
    ChallengeExpired: 410,
    VerificationCooldown: 429,
    InvalidRequest: 422,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PolicyViolation: 422,
    StaleRevision: 409,
    ReceiptInvalid: 422,
    Unavailable: 503,
}


def http_status_for(error: DomainError) -> int:
    """HTTP status for a domain error, walking up its class hierarchy."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 400
