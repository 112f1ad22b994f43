"""`relay.security.crypto.KeyCipher`: AES-256-GCM records bound to (user, provider), with
rotation."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.security.crypto import DecryptionError, KeyCipher, derive_key

OLD = "old-secret-0123456789abcdefghijklmnopqrstuvwxyz"
NEW = "new-secret-ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210"
SALT = "byok-relay-salt"
KEY = "test-key-abcdefghijklmnopqrstuvwxyz0123456789"

# scrypt costs ~50 ms per secret: every cipher is built once for the module.
NEW_ONLY = KeyCipher([NEW], SALT)
OLD_ONLY = KeyCipher([OLD], SALT)
ROTATING = KeyCipher([NEW, OLD], SALT)
OTHER_SALT = KeyCipher([NEW], "another-salt")
NEW_KEY = derive_key(NEW, SALT)

# The record layout documented in relay/crypto.py.
HEADER = 1 + 8 + 12
TAG = 16


def seal(cipher: KeyCipher = NEW_ONLY, plaintext: str = KEY) -> bytes:
    return cipher.encrypt(plaintext, user_id="user-1", provider="openai")


def open_(cipher: KeyCipher, record: bytes) -> str:
    return cipher.decrypt(record, user_id="user-1", provider="openai")


@pytest.mark.parametrize(
    "plaintext",
    [KEY, "x", "", "sk-ant-" + "a" * 4000, "ключ-🔑-密钥", "with spaces and\ttabs", "\x00nul"],
)
def test_round_trip(plaintext: str) -> None:
    record = seal(plaintext=plaintext)
    assert isinstance(record, bytes)
    assert open_(NEW_ONLY, record) == plaintext
    assert open_(ROTATING, record) == plaintext


def test_record_layout_and_size() -> None:
    record = seal()
    assert record[0] == 1
    assert len(record) == HEADER + len(KEY.encode()) + TAG
    assert KEY.encode() not in record


def test_record_is_aes_gcm_under_the_derived_key_with_user_and_provider_bound() -> None:
    """Decrypting by hand, from the documented layout, proves what the record is."""
    record = seal()
    nonce, sealed = record[9:HEADER], record[HEADER:]
    plain = AESGCM(NEW_KEY).decrypt(nonce, sealed, b"byok-relay:v1:user-1:openai")
    assert plain == KEY.encode()


def test_each_encryption_uses_a_fresh_nonce() -> None:
    records = [seal() for _ in range(50)]
    assert len(set(records)) == 50
    assert len({record[9:HEADER] for record in records}) == 50
    assert all(open_(NEW_ONLY, record) == KEY for record in records)


@pytest.mark.parametrize(
    ("user_id", "provider"),
    [
        ("user-2", "openai"),
        ("user-1", "anthropic"),
        ("user-2", "anthropic"),
        ("user-1", "openai-compatible"),
        ("user-1:openai", ""),
        ("user", "1:openai"),
        ("USER-1", "openai"),
        ("user-1", "OpenAI"),
        ("", "openai"),
    ],
)
def test_record_is_bound_to_user_and_provider(user_id: str, provider: str) -> None:
    record = seal()
    with pytest.raises(DecryptionError):
        NEW_ONLY.decrypt(record, user_id=user_id, provider=provider)
    assert open_(NEW_ONLY, record) == KEY


def test_every_single_flipped_byte_is_detected() -> None:
    record = seal()
    for index in range(len(record)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(record)
            tampered[index] ^= mask
            with pytest.raises(DecryptionError):
                open_(NEW_ONLY, bytes(tampered))
            with pytest.raises(DecryptionError):
                open_(ROTATING, bytes(tampered))


def test_truncated_and_extended_records_are_refused() -> None:
    record = seal()
    for length in range(len(record)):
        with pytest.raises(DecryptionError):
            open_(NEW_ONLY, record[:length])
    for extra in (b"\x00", b"x" * 16):
        with pytest.raises(DecryptionError):
            open_(NEW_ONLY, record + extra)


@pytest.mark.parametrize(
    "record",
    [b"", b"\x01", b"\x00" * 64, b"\x01" * 64, bytes(range(256)), b"not a record at all"],
)
def test_garbage_is_refused(record: bytes) -> None:
    with pytest.raises(DecryptionError):
        open_(NEW_ONLY, record)


@pytest.mark.parametrize("version", [0, 2, 0x7F, 0xFF])
def test_other_versions_are_refused(version: int) -> None:
    record = seal()
    with pytest.raises(DecryptionError):
        open_(NEW_ONLY, bytes([version]) + record[1:])


def test_a_valid_seal_over_invalid_utf8_is_refused() -> None:
    """A record that authenticates but holds no text is as unusable as a tampered one."""
    good = seal()
    nonce = good[9:HEADER]
    sealed = AESGCM(NEW_KEY).encrypt(nonce, b"\xff\xfe key", b"byok-relay:v1:user-1:openai")
    with pytest.raises(DecryptionError):
        open_(NEW_ONLY, good[:HEADER] + sealed)


def test_a_different_salt_is_a_different_key() -> None:
    with pytest.raises(DecryptionError):
        open_(OTHER_SALT, seal())
    with pytest.raises(DecryptionError):
        open_(NEW_ONLY, seal(OTHER_SALT))


def test_no_secrets_is_refused() -> None:
    with pytest.raises(ValueError):
        KeyCipher([], SALT)


# ---------------------------------------------------------------------------------------------
# Rotation


def test_the_newest_secret_encrypts() -> None:
    record = seal(ROTATING)
    assert ROTATING.is_current(record)
    assert NEW_ONLY.is_current(record)
    assert open_(NEW_ONLY, record) == KEY
    with pytest.raises(DecryptionError):
        open_(OLD_ONLY, record)


def test_rotation() -> None:
    old_record = seal(OLD_ONLY)
    assert OLD_ONLY.is_current(old_record)
    # During the rotation the old secret still decrypts ...
    assert open_(ROTATING, old_record) == KEY
    assert not ROTATING.is_current(old_record)
    # ... `rotate` re-seals under the newest ...
    rotated = ROTATING.rotate(old_record, user_id="user-1", provider="openai")
    assert rotated != old_record
    assert ROTATING.is_current(rotated)
    assert open_(ROTATING, rotated) == KEY
    assert open_(NEW_ONLY, rotated) == KEY
    # ... keeping the binding to its owner ...
    with pytest.raises(DecryptionError):
        ROTATING.decrypt(rotated, user_id="user-2", provider="openai")
    # ... and once the old secret is gone, old records are unreadable, rotated ones are fine.
    with pytest.raises(DecryptionError):
        open_(NEW_ONLY, old_record)
    assert not NEW_ONLY.is_current(old_record)
    with pytest.raises(DecryptionError):
        open_(OLD_ONLY, rotated)


def test_rotating_a_current_record_reseals_it() -> None:
    record = seal(ROTATING)
    again = ROTATING.rotate(record, user_id="user-1", provider="openai")
    assert again != record
    assert ROTATING.is_current(again)
    assert open_(ROTATING, again) == KEY


def test_rotate_refuses_what_decrypt_refuses() -> None:
    old_record = seal(OLD_ONLY)
    with pytest.raises(DecryptionError):
        ROTATING.rotate(old_record, user_id="user-2", provider="openai")
    with pytest.raises(DecryptionError):
        NEW_ONLY.rotate(old_record, user_id="user-1", provider="openai")
    tampered = old_record[:-1] + bytes([old_record[-1] ^ 1])
    with pytest.raises(DecryptionError):
        ROTATING.rotate(tampered, user_id="user-1", provider="openai")


def test_is_current_on_malformed_records() -> None:
    assert not NEW_ONLY.is_current(b"")
    assert not NEW_ONLY.is_current(b"\x01")
    assert not NEW_ONLY.is_current(seal(OLD_ONLY))


# ---------------------------------------------------------------------------------------------
# Key derivation: the Node relay's scrypt parameters, so its data stays readable


def test_derive_key_matches_hashlib_scrypt() -> None:
    expected = hashlib.scrypt(NEW.encode(), salt=SALT.encode(), n=16384, r=8, p=1, dklen=32)
    assert expected == NEW_KEY
    assert len(NEW_KEY) == 32


def test_derive_key_matches_node() -> None:
    """Computed with Node's `crypto.scryptSync(secret, salt, 32, {N: 16384, r: 8, p: 1})`."""
    key = derive_key("correct horse battery staple 0123456789", "byok-relay-salt")
    assert key.hex() == "e89476a09d6403b213ce383872afe83cb32866e57c0c6e3c760c52f5eaf05fee"
