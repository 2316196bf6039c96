"""Operator commands: migrate, bootstrap the first admin, issue keys, moderate cameos, reseal templates."""

from __future__ import annotations

import argparse
import sys
from datetime import date
from typing import Any

from sqlmodel import Session, select

from consent_service.db import make_engine, migrate
from consent_service.errors import DomainError
from consent_service.models import CameoState, Principal, PrincipalKind
from consent_service.secretbox import SecretBox
from consent_service.secretbox import load_or_create_key as load_secret_key
from consent_service.services import cameos, principals, verification
from consent_service.settings import Settings


class _OfflineReplica:
    """The CLI serves no checks; running instances pick the change up from the change log."""

    def apply_own(self, revision: int, ops: list[dict[str, Any]]) -> int:
        return revision


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consent-admin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations")
    boot = sub.add_parser("bootstrap-admin", help="create the first admin and print its API key once")
    boot.add_argument("--handle", default="admin")
    create = sub.add_parser("create", help="create a principal and print its API key once")
    create.add_argument("kind", choices=[k.value for k in PrincipalKind])
    create.add_argument("handle")
    create.add_argument("--birth-date", type=date.fromisoformat)
    create.add_argument("--display-name", default="")
    key = sub.add_parser("issue-key", help="issue another API key for a principal")
    key.add_argument("handle")
    keys = sub.add_parser("list-keys", help="a principal's API keys: ids, issue times, revoked or not")
    keys.add_argument("handle")
    revoke = sub.add_parser(
        "revoke-key", help="revoke an API key by its id (the token reads csk_<id>_<secret>)"
    )
    revoke.add_argument("handle")
    revoke.add_argument("key_id")
    state = sub.add_parser("set-cameo-state", help="admin: suspend a cameo or return it to unverified")
    state.add_argument("handle")
    # `verified` is reached only through the verification flow (POST .../verification/challenges).
    state.add_argument("state", choices=[s.value for s in CameoState if s is not CameoState.verified])
    sub.add_parser(
        "reseal-templates", help="re-encrypt every face and voice template under the current biometric key"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `consent-admin`."""
    args = _parser().parse_args(argv)
    settings = Settings()
    url = settings.resolved_database_url
    if args.command == "migrate":
        migrate(url)
        print(f"migrated {url.split('@')[-1]}")
        return 0
    engine = make_engine(url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            return _run(args, session, engine)
    except DomainError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()


def _run(args: argparse.Namespace, session: Session, engine: object) -> int:
    if args.command == "bootstrap-admin":
        if session.exec(select(Principal).where(Principal.kind == PrincipalKind.admin)).first():
            print("error: an admin already exists; use `issue-key` for another key", file=sys.stderr)
            return 2
        issued = principals.create_principal(
            session, kind=PrincipalKind.admin, handle=args.handle, created_by=None
        )
    elif args.command == "create":
        issued = principals.create_principal(
            session,
            kind=PrincipalKind(args.kind),
            handle=args.handle,
            display_name=args.display_name,
            birth_date=args.birth_date,
            created_by=None,
        )
    elif args.command == "issue-key":
        issued = principals.issue_key(session, handle=args.handle, issued_by=None)
    elif args.command == "list-keys":
        for k in principals.list_keys(session, handle=args.handle):
            print(f"{k.id}  issued {k.created_at:%Y-%m-%d %H:%M:%S}  {'revoked' if k.revoked else 'active'}")
        return 0
    elif args.command == "revoke-key":
        revoked = principals.revoke_key(session, handle=args.handle, key_id=args.key_id, revoked_by=None)
        # Running instances refuse it within CONSENT_API_KEY_CACHE_SECONDS.
        print(f"revoked api key {revoked.id} of @{args.handle}")
        return 0
    elif args.command == "reseal-templates":
        count = verification.reseal_templates(session, box=_biometric_box(Settings()))
        print(f"resealed {count} cameo templates under the current biometric key")
        return 0
    else:
        change = cameos.set_state(
            session,
            _OfflineReplica(),  # type: ignore[arg-type]
            actor_id=None,
            handle=args.handle,
            state=CameoState(args.state),
        )
        print(f"@{change.owner.handle}: {change.cameo.state} at consent revision {change.revision}")
        return 0
    print(f"{issued.principal.kind} @{issued.principal.handle}\napi key (shown once): {issued.token}")
    return 0


def _biometric_box(settings: Settings) -> SecretBox:
    """The current biometric key plus the previous ones, which must still open what they sealed."""
    return SecretBox(
        current=load_secret_key(settings.resolved_biometric_key_path, create=False),
        previous=tuple(load_secret_key(p, create=False) for p in settings.biometric_previous_key_paths),
    )


if __name__ == "__main__":
    raise SystemExit(main())
