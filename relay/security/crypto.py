"""Provider keys at rest: AES-256-GCM, bound to (user, provider), with rotation by key id.

Modelled on cryptography's `MultiFernet`: the cipher takes an ordered list of secrets, newest
first; the newest encrypts, every one can decrypt, `rotate()` re-encrypts under the newest.
Every way a decryption can fail raises the same opaque `DecryptionError`.

Record format (version 1), opaque to the key stores:

    0x01 | key id (8 bytes) | nonce (12 bytes) | ciphertext + GCM tag (16 bytes)

The key id is a hash of the derived key, so the record names the secret that sealed it without
revealing anything about it. The associated data binds a record to its user and provider: a
ciphertext copied onto another user's or provider's row does not decrypt.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["DecryptionError", "KeyCipher", "derive_key"]

VERSION: Final = 1
_KID_LEN: Final = 8
_NONCE_LEN: Final = 12
_HEADER_LEN: Final = 1 + _KID_LEN + _NONCE_LEN


class DecryptionError(Exception):
    """The record could not be decrypted (wrong secret, tampered, wrong owner, or malformed)."""


def derive_key(secret: str, salt: str) -> bytes:
    """The 32-byte AES key for a secret: scrypt(N=16384, r=8, p=1), as the Node relay derives it."""
    return hashlib.scrypt(secret.encode(), salt=salt.encode(), n=16384, r=8, p=1, dklen=32)


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"byok-relay key id\0" + key).digest()[:_KID_LEN]


def _associated_data(user_id: str, provider: str) -> bytes:
    return f"byok-relay:v{VERSION}:{user_id}:{provider}".encode()


class KeyCipher:
    def __init__(self, secrets: Sequence[str], salt: str) -> None:
        if not secrets:
            raise ValueError("KeyCipher needs at least one secret")
        keys = [derive_key(secret, salt) for secret in secrets]
        self._ciphers = {_key_id(key): AESGCM(key) for key in reversed(keys)}
        self._newest_id = _key_id(keys[0])
        self._newest = self._ciphers[self._newest_id]

    def encrypt(self, plaintext: str, *, user_id: str, provider: str) -> bytes:
        nonce = os.urandom(_NONCE_LEN)
        sealed = self._newest.encrypt(
            nonce, plaintext.encode(), _associated_data(user_id, provider)
        )
        return bytes([VERSION]) + self._newest_id + nonce + sealed

    def decrypt(self, record: bytes, *, user_id: str, provider: str) -> str:
        if len(record) < _HEADER_LEN + 16 or record[0] != VERSION:
            raise DecryptionError
        cipher = self._ciphers.get(record[1 : 1 + _KID_LEN])
        if cipher is None:
            raise DecryptionError
        nonce = record[1 + _KID_LEN : _HEADER_LEN]
        try:
            plain = cipher.decrypt(nonce, record[_HEADER_LEN:], _associated_data(user_id, provider))
            return plain.decode()
        except (InvalidTag, UnicodeDecodeError):
            raise DecryptionError from None

    def is_current(self, record: bytes) -> bool:
        """True when `record` is sealed under the newest secret."""
        return record[1 : 1 + _KID_LEN] == self._newest_id

    def rotate(self, record: bytes, *, user_id: str, provider: str) -> bytes:
        """`record` re-encrypted under the newest secret (raises `DecryptionError` like decrypt)."""
        plain = self.decrypt(record, user_id=user_id, provider=provider)
        return self.encrypt(plain, user_id=user_id, provider=provider)
