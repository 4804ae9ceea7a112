"""Users and service-account API keys in the application database.

An API key reads ``rck_<key_id>_<secret>``; only ``key_id`` and a SHA-256 of ``secret`` are
stored (the secret is 256 random bits, so a fast hash is enough, as for GitHub tokens). The full
key is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core.db import Database
from core.db.models import ApiKey, Role, User, utcnow
from core.exceptions import AlreadyExistsError, AuthenticationError, NotFoundError
from core.security.passwords import hash_password, verify_password
from core.security.principal import AuthMethod, Principal

__all__ = ["API_KEY_PREFIX", "Accounts", "NewApiKey", "UserInfo"]

API_KEY_PREFIX = "rck_"


@dataclass(frozen=True)
class UserInfo:
    """A user as shown to admins (never the password hash)."""

    name: str
    role: Role
    has_password: bool
    disabled: bool


@dataclass(frozen=True, repr=False)
class NewApiKey:
    """A freshly created API key; ``key`` is shown once and never stored."""

    name: str
    role: Role
    key: str

    def __repr__(self) -> str:
        return f"NewApiKey(name={self.name!r}, role={self.role!r}, key=<redacted>)"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Accounts:
    """User and API-key management, and checking their credentials."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_user(self, name: str, role: Role | str, password: str | None = None) -> UserInfo:
        """Create a user.

        Raises
        ------
        AlreadyExistsError
            A user of that name exists.
        ValueError
            The role is unknown or the password too short.
        """
        role = Role(role)
        password_hash = hash_password(password) if password is not None else None
        try:
            with self._db.session() as session:
                session.add(User(name=name, role=role, password_hash=password_hash))
        except IntegrityError as exc:
            raise AlreadyExistsError("user", name) from exc
        return UserInfo(name, role, password_hash is not None, disabled=False)

    def get_user(self, name: str) -> UserInfo:
        """The user called ``name``; :class:`NotFoundError` if there is none."""
        with self._db.session() as session:
            user = session.scalar(select(User).where(User.name == name))
            if user is None:
                raise NotFoundError("user", name)
            return UserInfo(user.name, user.role, user.password_hash is not None, user.disabled)

    def list_users(self) -> list[UserInfo]:
        """All users, by name."""
        with self._db.session() as session:
            users = session.scalars(select(User).order_by(User.name))
            return [
                UserInfo(u.name, u.role, u.password_hash is not None, u.disabled) for u in users
            ]

    def set_disabled(self, name: str, disabled: bool) -> None:
        """Disable (or re-enable) a user: their tokens stop working at once."""
        with self._db.session() as session:
            user = session.scalar(select(User).where(User.name == name))
            if user is None:
                raise NotFoundError("user", name)
            user.disabled = disabled

    def authenticate_password(self, name: str, password: str) -> Principal:
        """Check a user's password (sign-in).

        Raises
        ------
        AuthenticationError
            Unknown user, no password set, wrong password or disabled; one message for all, so
            the answer does not reveal which names exist.
        """
        with self._db.session() as session:
            user = session.scalar(select(User).where(User.name == name))
        ok = (
            user is not None
            and user.password_hash is not None
            and verify_password(user.password_hash, password)
            and not user.disabled
        )
        if not ok or user is None:
            raise AuthenticationError("user name or password is wrong")
        return Principal(user.name, frozenset({user.role}), AuthMethod.TOKEN)

    def check_user_active(self, name: str) -> None:
        """Refuse a radcloud-issued token whose user was disabled or removed."""
        with self._db.session() as session:
            user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise AuthenticationError(f'user "{name}" no longer exists')
        if user.disabled:
            raise AuthenticationError(f'user "{name}" is disabled')

    def create_api_key(self, name: str, role: Role | str) -> NewApiKey:
        """Create a service account's API key; the returned key is shown once."""
        role = Role(role)
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        try:
            with self._db.session() as session:
                session.add(
                    ApiKey(name=name, key_id=key_id, secret_hash=_digest(secret), role=role)
                )
        except IntegrityError as exc:
            raise AlreadyExistsError("API key", name) from exc
        return NewApiKey(name, role, f"{API_KEY_PREFIX}{key_id}_{secret}")

    def revoke_api_key(self, name: str) -> None:
        """Revoke the API key called ``name``."""
        with self._db.session() as session:
            key = session.scalar(select(ApiKey).where(ApiKey.name == name))
            if key is None:
                raise NotFoundError("API key", name)
            key.revoked_at = utcnow()

    def list_api_keys(self) -> list[tuple[str, Role, bool]]:
        """(name, role, revoked) of every API key."""
        with self._db.session() as session:
            keys = session.scalars(select(ApiKey).order_by(ApiKey.name))
            return [(k.name, k.role, k.revoked_at is not None) for k in keys]

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
            row.last_used_at = utcnow()
            return Principal(row.name, frozenset({row.role}), AuthMethod.API_KEY)
