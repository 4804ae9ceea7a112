"""Users and service-account API keys in the application database.

An API key reads ``rck_<key_id>_<secret>``; only ``key_id`` and a SHA-256 of ``secret`` are
stored (the secret is 256 random bits, so a fast hash is enough, as for GitHub tokens). The full
key is shown once, when it is created.

Every change and every credential handed out is audited here, whichever door it came through
(the API, the command line), in the same transaction as the change; a refused one (an unknown
user, a name taken, a wrong password, a sign-in throttled by :class:`SignInGuard`) with outcome
4, minor failure:

=================================  =============================  ======  ================
Method                             Event (PS3.16 CID 400)         Action  Object
=================================  =============================  ======  ================
:meth:`Accounts.add_user`          110113 Security Alert          C       ``user``
:meth:`Accounts.set_disabled`      110113 Security Alert          U       ``user``
:meth:`Accounts.assign_hospital`   110113 Security Alert          U       ``user``
:meth:`Accounts.unassign_hospital` 110113 Security Alert          U       ``user``
:meth:`Accounts.create_api_key`    110113 Security Alert          C       ``api_key``
:meth:`Accounts.revoke_api_key`    110113 Security Alert          D       ``api_key``
:meth:`Accounts.sign_in`           110114 User Authentication     E       (the user signing in)
:meth:`Accounts.issue_token`       110114 User Authentication     E       ``user``
=================================  =============================  ======  ================

Each user is assigned hospitals (``user_hospitals``), each API key one hospital, or either is
explicitly a platform operator (:mod:`core.tenancy`); the scope is read with the credential on
every request, so an assignment changed takes effect at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from core.db import Database, write_transaction
from core.db.models import ApiKey, Role, User, UserHospital, utcnow
from core.exceptions import (
    AlreadyExistsError,
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    TooManyAttemptsError,
)
from core.security._hospitals import (
    api_key_scope,
    check_assignment,
    check_grant,
    hospital_row,
    user_scope,
)
from core.security.lockout import SignInGuard
from core.security.passwords import hash_password, verify_password
from core.security.principal import Actor, AuthMethod, Principal
from core.security.tokens import TokenService
from core.tenancy import HospitalScope

__all__ = ["API_KEY_PREFIX", "Accounts", "NewApiKey", "UserInfo"]

API_KEY_PREFIX = "rck_"
_API_KEY_LOCK_KEY = 0x52414B55  # "RAKU": PostgreSQL advisory lock of an API key's last use
_LAST_USED_RESOLUTION = dt.timedelta(minutes=1)  # last_used_at is kept to the minute


@dataclass(frozen=True)
class UserInfo:
    """A user as shown to admins (never the password hash)."""

    name: str
    role: Role
    has_password: bool
    disabled: bool
    hospitals: tuple[str, ...] = ()
    platform_operator: bool = False
    identified_hospitals: tuple[str, ...] = ()  # an ml_engineer's grants of identified data


def _info(user: User) -> UserInfo:
    assignments = sorted(user.assignments, key=lambda a: a.hospital.name)
    return UserInfo(
        user.name,
        user.role,
        user.password_hash is not None,
        user.disabled,
        tuple(a.hospital.name for a in assignments),
        user.platform_operator,
        tuple(a.hospital.name for a in assignments if a.identified),
    )


@dataclass(frozen=True, repr=False)
class NewApiKey:
    """A freshly created API key; ``key`` is shown once and never stored."""

    name: str
    role: Role
    key: str
    hospital: str | None = None
    platform_operator: bool = False

    def __repr__(self) -> str:
        return f"NewApiKey(name={self.name!r}, role={self.role!r}, key=<redacted>)"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _user(session: Session, name: str, scope: HospitalScope | None = None) -> User:
    """The user called ``name``; with ``scope``, only one it covers (:func:`_covers`)."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None or (scope is not None and not _covers(scope, user)):
        raise NotFoundError("user", name)
    return user


def _covers(scope: HospitalScope, user: User) -> bool:
    """Whether an administrator of ``scope`` may see and manage ``user``: a platform operator
    every user, a hospital's administrator the users assigned one of its hospitals (others
    are answered as if they did not exist)."""
    if scope.platform_operator:
        return True
    return any(a.hospital.name in scope.hospitals for a in user.assignments)


def _flush_new(session: Session, kind: str, name: str) -> None:
    """Write a new row now, so that a name already taken shows as :class:`AlreadyExistsError`."""
    try:
        session.flush()
    except IntegrityError as exc:
        raise AlreadyExistsError(kind, name) from exc


class Accounts:
    """User and API-key management, and checking their credentials; every change audited.

    Parameters
    ----------
    db
        The application database.
    audit
        The audit trail the changes are recorded in.
    guard
        Throttles :meth:`sign_in` (default: a :class:`SignInGuard` with its default limits).
    """

    def __init__(self, db: Database, audit: AuditTrail, guard: SignInGuard | None = None) -> None:
        self._db = db
        self._audit = audit
        self._guard = guard or SignInGuard()

    def add_user(
        self,
        name: str,
        role: Role | str,
        password: str | None = None,
        *,
        hospitals: Iterable[str] = (),
        platform_operator: bool = False,
        actor: Actor,
    ) -> UserInfo:
        """Create a user, assigned ``hospitals`` (created if new) or a platform operator; with
        neither, the user sees no study until assigned one.

        Raises
        ------
        AlreadyExistsError
            A user of that name exists.
        ValueError
            The role is unknown, the password too short, or both hospitals and platform
            operator given.
        """
        names = check_assignment(hospitals, platform_operator)
        with self._audit.security_change(
            actor,
            AuditAction.CREATE,
            "user",
            name,
            change="user created",
            role=role,
            hospitals=names,
            platform_operator=platform_operator,
        ) as change:
            check_grant(actor, names, platform_operator)
            role = Role(role)
            password_hash = hash_password(password) if password is not None else None
            user = User(
                name=name,
                role=role,
                password_hash=password_hash,
                platform_operator=platform_operator,
                assignments=[
                    UserHospital(hospital=hospital_row(change.session, hospital))
                    for hospital in names
                ],
            )
            change.session.add(user)
            _flush_new(change.session, "user", name)
            return _info(user)

    def get_user(self, name: str) -> UserInfo:
        """The user called ``name``; :class:`NotFoundError` if there is none."""
        with self._db.session() as session:
            return _info(_user(session, name))

    def list_users(self, scope: HospitalScope | None = None) -> list[UserInfo]:
        """All users, by name; with ``scope``, those an administrator of it manages (assigned
        one of its hospitals; all for a platform operator)."""
        with self._db.session() as session:
            users = session.scalars(select(User).order_by(User.name))
            return [_info(u) for u in users if scope is None or _covers(scope, u)]

    def assign_hospital(
        self, name: str, hospital: str, *, identified: bool = False, actor: Actor
    ) -> UserInfo:
        """Let user ``name`` see the studies of ``hospital`` (created if new) as well; again
        for an assigned hospital, set whether the grant includes identified data.

        ``identified`` matters for an ``ml_engineer`` only, who otherwise gets the hospital's
        data de-identified (the training export) and none of its identified data (DICOMweb,
        results, the viewer): :func:`core.security._hospitals.user_scope`.

        Raises
        ------
        NotFoundError
            There is no user called ``name`` (or none ``actor`` manages: one assigned none of
            its hospitals, unless ``actor`` is a platform operator).
        ValueError
            The user is a platform operator (assigned no hospital).
        PermissionDeniedError
            ``actor`` is not assigned ``hospital`` itself (nor a platform operator).
        """
        with self._audit.security_change(
            actor,
            AuditAction.UPDATE,
            "user",
            name,
            change="hospital assigned",
            hospital=hospital,
            identified=identified,
        ) as change:
            check_grant(actor, [hospital], False)
            user = _user(change.session, name, actor.scope)
            check_assignment([hospital], user.platform_operator)
            row = hospital_row(change.session, hospital)
            assignment = next((a for a in user.assignments if a.hospital_id == row.id), None)
            if assignment is None:
                user.assignments.append(UserHospital(hospital=row, identified=identified))
            else:
                assignment.identified = identified
            change.session.flush()
            return _info(user)

    def unassign_hospital(self, name: str, hospital: str, *, actor: Actor) -> UserInfo:
        """Stop user ``name`` seeing the studies of ``hospital``; at once, tokens included.

        Raises
        ------
        NotFoundError
            There is no user called ``name`` (that ``actor`` manages), or it is not assigned
            ``hospital``.
        PermissionDeniedError
            ``actor`` is not assigned ``hospital`` itself (nor a platform operator).
        """
        with self._audit.security_change(
            actor,
            AuditAction.UPDATE,
            "user",
            name,
            change="hospital unassigned",
            hospital=hospital,
        ) as change:
            check_grant(actor, [hospital], False)
            user = _user(change.session, name, actor.scope)
            assignment = next((a for a in user.assignments if a.hospital.name == hospital), None)
            if assignment is None:
                raise NotFoundError(f'hospital assignment of user "{name}"', hospital)
            user.assignments.remove(assignment)
            change.session.flush()
            return _info(user)

    def export_hospitals(
        self, name: str, hospitals: Iterable[str], *, keep_identifiers: bool
    ) -> tuple[str, ...]:
        """The hospitals a data export made for user ``name`` may hold: those asked for (all
        of the user's when none are), each one the user is assigned; identifiers kept only
        where the user sees identified data (an ``ml_engineer``: its ``--identified`` grants).

        Raises
        ------
        NotFoundError
            There is no user called ``name``.
        PermissionDeniedError
            A hospital the user is not assigned, none at all, or identifiers asked for where
            the user gets de-identified data only.
        """
        user = self.get_user(name)
        asked = tuple(dict.fromkeys(hospitals))
        if user.platform_operator:
            return asked
        chosen = asked or user.hospitals
        beyond = sorted(set(chosen) - set(user.hospitals))
        if beyond or not chosen:
            raise PermissionDeniedError(
                f'user "{name}" of {", ".join(user.hospitals) or "no hospital"}',
                [f"an assignment to {', '.join(beyond) or 'a hospital'}"],
            )
        if keep_identifiers and user.role is Role.ML_ENGINEER:
            plain = sorted(set(chosen) - set(user.identified_hospitals))
            if plain:
                raise PermissionDeniedError(
                    f'ml_engineer "{name}" (de-identified data only of {", ".join(plain)})',
                    [f"identified access to {', '.join(plain)} (users assign --identified)"],
                )
        return tuple(chosen)

    def user_scope(self, name: str) -> HospitalScope:
        """The hospitals user ``name`` may see now (:class:`NotFoundError` if none such)."""
        with self._db.session() as session:
            return user_scope(_user(session, name))

    def set_disabled(self, name: str, disabled: bool, *, actor: Actor) -> None:
        """Disable (or re-enable) a user: their tokens stop working at once.

        Raises
        ------
        NotFoundError
            There is no user called ``name``.
        """
        change = "user disabled" if disabled else "user enabled"
        with self._audit.security_change(
            actor, AuditAction.UPDATE, "user", name, change=change
        ) as audited:
            _user(audited.session, name).disabled = disabled

    def _authenticate_password(self, name: str, password: str) -> Principal:
        with self._db.session() as session:
            user = session.scalar(select(User).where(User.name == name))
        # Argon2 runs for every name, known or not (no timing oracle), before anything else.
        matches = verify_password(user.password_hash if user else None, password)
        if not matches or user is None or user.disabled:
            raise AuthenticationError("user name or password is wrong")
        return Principal(user.name, frozenset({user.role}), AuthMethod.TOKEN)

    def sign_in(self, name: str, password: str, tokens: TokenService, *, actor: Actor) -> str:
        """Check a user's password and return a bearer token for them (sign-in).

        Parameters
        ----------
        name, password
            What the user typed.
        tokens
            Signs the token.
        actor
            Where the sign-in comes from (its ``name`` is the name claimed).

        Raises
        ------
        AuthenticationError
            Unknown user, no password set, wrong password or disabled; one message for all, so
            the answer does not reveal which names exist.
        TooManyAttemptsError
            The address tried too often, or the name is locked after failed sign-ins
            (:class:`SignInGuard`); the password is not checked.
        """
        detail: dict[str, object] = {"method": "password"}
        try:
            self._guard.admit(name, actor.address)
            principal = self._authenticate_password(name, password)
        except (AuthenticationError, TooManyAttemptsError) as exc:
            if isinstance(exc, AuthenticationError) and self._guard.failed(name):
                detail["locked"] = True
            self._audit.record(
                AuditEventCode.USER_AUTHENTICATION,
                actor=actor,
                outcome=AuditOutcome.MINOR_FAILURE,
                detail=detail | {"reason": exc.reason},
            )
            raise
        self._guard.succeeded(name)
        token = tokens.issue(principal.name, principal.roles)
        signed_in = Actor.from_principal(principal, actor.door, actor.address)
        self._audit.record(AuditEventCode.USER_AUTHENTICATION, actor=signed_in, detail=detail)
        return token

    def issue_token(
        self,
        name: str,
        tokens: TokenService,
        *,
        actor: Actor,
        ttl: dt.timedelta | None = None,
    ) -> str:
        """A bearer token for user ``name``, handed out by an operator (``radcloud token``).

        Raises
        ------
        NotFoundError
            There is no user called ``name``.
        AuthenticationError
            The user is disabled.
        """
        with self._audit.audited(
            AuditEventCode.USER_AUTHENTICATION,
            actor=actor,
            action=AuditAction.EXECUTE,
            resource_type="user",
            resource_id=name,
            detail={"method": "token issued"},
        ) as change:
            user = _user(change.session, name)
            if user.disabled:
                raise AuthenticationError(f'user "{name}" is disabled')
            return tokens.issue(user.name, [user.role], ttl)

    def active_user_scope(self, name: str) -> HospitalScope:
        """:meth:`check_user_active` and :meth:`user_scope` of a radcloud-issued token's user
        in one read (every request of such a token asks both).

        Raises
        ------
        AuthenticationError
            The user was removed or disabled.
        """
        with self._db.session() as session:
            user = (
                session.scalars(  # one query: the user joined with its assignments' hospitals
                    select(User)
                    .where(User.name == name)
                    .options(joinedload(User.assignments).joinedload(UserHospital.hospital))
                )
                .unique()
                .first()
            )
            if user is None:
                raise AuthenticationError(f'user "{name}" no longer exists')
            if user.disabled:
                raise AuthenticationError(f'user "{name}" is disabled')
            return user_scope(user)

    def check_user_active(self, name: str, *, must_exist: bool = True) -> None:
        """Refuse a token whose user was disabled or removed.

        ``must_exist=False`` is for tokens of the hospital's identity provider, whose users need
        no row here: such a token is refused only when a user of its name is disabled.
        """
        with self._db.session() as session:
            user = session.scalar(select(User).where(User.name == name))
        if user is None and must_exist:
            raise AuthenticationError(f'user "{name}" no longer exists')
        if user is not None and user.disabled:
            raise AuthenticationError(f'user "{name}" is disabled')

    def create_api_key(
        self,
        name: str,
        role: Role | str,
        *,
        hospital: str | None = None,
        platform_operator: bool = False,
        actor: Actor,
    ) -> NewApiKey:
        """Create a service account's API key of ``hospital`` (created if new; what the key
        stores by STOW-RS is that hospital's) or a platform operator's; the returned key is
        shown once. With neither, the key sees nothing and cannot store.

        Raises
        ------
        AlreadyExistsError
            An API key of that name exists.
        ValueError
            The role is unknown, or both a hospital and platform operator given.
        """
        check_assignment([hospital] if hospital else [], platform_operator)
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        with self._audit.security_change(
            actor,
            AuditAction.CREATE,
            "api_key",
            name,
            change="API key created",
            role=role,
            hospital=hospital,
            platform_operator=platform_operator,
        ) as change:
            check_grant(actor, [hospital] if hospital else [], platform_operator)
            role = Role(role)
            change.session.add(
                ApiKey(
                    name=name,
                    key_id=key_id,
                    secret_hash=_digest(secret),
                    role=role,
                    hospital=hospital_row(change.session, hospital) if hospital else None,
                    platform_operator=platform_operator,
                )
            )
            _flush_new(change.session, "API key", name)
        key = f"{API_KEY_PREFIX}{key_id}_{secret}"
        return NewApiKey(name, role, key, hospital, platform_operator)

    def revoke_api_key(self, name: str, *, actor: Actor) -> None:
        """Revoke the API key called ``name``.

        Raises
        ------
        NotFoundError
            There is no API key called ``name``.
        """
        with self._audit.security_change(
            actor, AuditAction.DELETE, "api_key", name, change="API key revoked"
        ) as change:
            key = change.session.scalar(select(ApiKey).where(ApiKey.name == name))
            if key is None:
                raise NotFoundError("API key", name)
            key.revoked_at = utcnow()

    def list_api_keys(self) -> list[tuple[str, Role, bool, str]]:
        """(name, role, revoked, scope as words) of every API key."""
        with self._db.session() as session:
            keys = session.scalars(select(ApiKey).order_by(ApiKey.name))
            return [
                (k.name, k.role, k.revoked_at is not None, api_key_scope(k).describe())
                for k in keys
            ]

    def authenticate_api_key(self, key: str) -> Principal:
        """Check an API key and return its service account.

        Raises
        ------
        AuthenticationError
            Malformed, unknown, wrong or revoked key.
        """
        body = key.removeprefix(API_KEY_PREFIX)
        key_id, _, secret = body.partition("_")
        if not key.startswith(API_KEY_PREFIX) or not key_id or not secret:
            raise AuthenticationError("API key is malformed")
        with self._db.session() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
            if row is None or not hmac.compare_digest(row.secret_hash, _digest(secret)):
                raise AuthenticationError("API key is not valid")
            if row.revoked_at is not None:
                raise AuthenticationError(f'API key "{row.name}" was revoked')
            principal = Principal(
                row.name, frozenset({row.role}), AuthMethod.API_KEY, scope=api_key_scope(row)
            )
            last_used, row_id = row.last_used_at, row.id
        now = utcnow()
        if last_used is None or now - last_used >= _LAST_USED_RESOLUTION:
            # its own write transaction (BEGIN IMMEDIATE on SQLite: it waits for the lock),
            # not an upgrade of the read above, which SQLite refuses at once ("database is
            # locked") while another writer is active; and at most once a minute per key
            with write_transaction(self._db, _API_KEY_LOCK_KEY) as session:
                session.execute(update(ApiKey).where(ApiKey.id == row_id).values(last_used_at=now))
        return principal
