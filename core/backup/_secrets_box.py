"""``secrets.json`` sealed with an operator's passphrase: scrypt (RFC 7914) derives an AES-256
key, AES-GCM encrypts and authenticates the file (``cryptography``). The envelope is JSON:
the KDF's parameters, the salt and nonce (base64) and the ciphertext."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from core.backup.exceptions import RestoreSecretsError

__all__ = ["open_secrets", "read_passphrase", "seal_secrets"]

_N, _R, _P = 2**15, 8, 1
_AAD = b"radcloud secrets.json"


def read_passphrase(path: Path) -> bytes:
    """The passphrase in ``path`` (one line; the trailing newline is not part of it)."""
    try:
        passphrase = path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise RestoreSecretsError(f"cannot read the passphrase file {path}: {exc}") from exc
    if len(passphrase) < 12:
        raise RestoreSecretsError(
            f"the passphrase in {path} has {len(passphrase)} characters: at least 12 expected"
        )
    return passphrase


def _key(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def seal_secrets(plain: bytes, passphrase: bytes) -> bytes:
    """The sealed envelope of ``plain`` (the bytes of ``secrets.json``)."""
    salt, nonce = os.urandom(16), os.urandom(12)
    sealed = AESGCM(_key(passphrase, salt, _N, _R, _P)).encrypt(nonce, plain, _AAD)
    envelope = {
        "kdf": {"name": "scrypt", "n": _N, "r": _R, "p": _P},
        "cipher": "AES-256-GCM",
        "salt": base64.b64encode(salt).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    return json.dumps(envelope, indent=2).encode()


def open_secrets(envelope: bytes, passphrase: bytes) -> bytes:
    """The plain ``secrets.json`` of a sealed envelope.

    Raises
    ------
    RestoreSecretsError
        A wrong passphrase, or an envelope that was altered.
    """
    try:
        data = json.loads(envelope)
        kdf = data["kdf"]
        key = _key(
            passphrase, base64.b64decode(data["salt"]), int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        )
        return AESGCM(key).decrypt(
            base64.b64decode(data["nonce"]), base64.b64decode(data["ciphertext"]), _AAD
        )
    except InvalidTag as exc:
        raise RestoreSecretsError(
            "the passphrase does not open the backup's secrets (or they were altered)"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise RestoreSecretsError(f"the backup's sealed secrets are unreadable: {exc}") from exc
