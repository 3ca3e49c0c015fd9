"""Encryption of the one thing we must keep to answer a person: their platform address.

The key is derived from BOT_SECRET_KEY (HKDF, with a purpose label) so that rotating the one
secret rotates everything, and so the pseudonym key and the encryption key differ.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def fernet(secret: str, purpose: str = "address") -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=f"tsunagu:{purpose}".encode()).derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


class Sealer:
    def __init__(self, secret: str, purpose: str = "address"):
        self._f = fernet(secret, purpose)

    def seal(self, value: str) -> str:
        return self._f.encrypt(value.encode()).decode()

    def open(self, token: str) -> str | None:
        try:
            return self._f.decrypt(token.encode()).decode()
        except (InvalidToken, ValueError):
            return None
