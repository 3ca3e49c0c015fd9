"""Sealing what we must keep for a while: platform addresses and what people typed.

Keys are derived from BOT_SECRET_KEY (HKDF, with a purpose label) so that rotating the one
secret rotates everything, and so the pseudonym key and the encryption keys differ.

Rotation: `BOT_SECRET_KEY` is the newest key and `BOT_SECRET_KEY_PREVIOUS` the older ones,
newest first. A Sealer seals with the newest and opens with any (cryptography's MultiFernet),
so what was sealed before a rotation stays readable until it expires.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def fernet(secret: str, purpose: str = "address") -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=f"tsunagu:{purpose}".encode()).derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def _keys(secrets: str | Sequence[str]) -> list[str]:
    keys = [secrets] if isinstance(secrets, str) else [k for k in secrets if k]
    if not keys:
        raise ValueError("at least one secret key is needed")
    return keys


class Sealer:
    """Fernet for one purpose; `secrets` is one key or the accepted keys, newest first."""

    def __init__(self, secrets: str | Sequence[str], purpose: str = "address"):
        self._f = MultiFernet([fernet(k, purpose) for k in _keys(secrets)])

    def seal(self, value: str) -> str:
        return self._f.encrypt(value.encode()).decode()

    def open(self, token: str | bytes) -> str | None:
        raw = token if isinstance(token, bytes) else token.encode()
        try:
            return self._f.decrypt(raw).decode()
        except (InvalidToken, ValueError):
            return None
