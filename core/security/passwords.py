"""Password hashing with Argon2id (argon2-cffi, OWASP's first choice)."""

from __future__ import annotations

import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["hash_password", "verify_password"]

_hasher = PasswordHasher()
_MIN_LENGTH = 12


def hash_password(password: str) -> str:
    """Hash ``password`` for storage.

    Raises
    ------
    ValueError
        When the password is shorter than 12 characters.
    """
    if len(password) < _MIN_LENGTH:
        raise ValueError(
            f"password has {len(password)} characters: expected at least {_MIN_LENGTH}"
        )
    return _hasher.hash(password)


@cache
def _stand_in_hash() -> str:
    """A hash of a random password no one knows, made with the same parameters as every other."""
    return _hasher.hash(secrets.token_urlsafe(32))


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches ``password_hash``.

    ``None`` (an unknown user, or one without a password) is checked against a stand-in hash
    and is never a match: the same Argon2 work is done either way, so the time of the answer
    does not tell whether a user name exists.
    """
    try:
        return _hasher.verify(password_hash or _stand_in_hash(), password) and bool(password_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
