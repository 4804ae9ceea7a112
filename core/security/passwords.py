"""Password hashing with Argon2id (argon2-cffi, OWASP's first choice)."""

from __future__ import annotations

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


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
