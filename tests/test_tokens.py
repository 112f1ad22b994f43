"""`relay.security.tokens`: random relay tokens, stored only as HMAC-SHA256 hex digests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest

from relay.security.tokens import MAX_TOKEN_LENGTH, TokenHasher, new_token

SECRET = "token-hmac-secret-0123456789abcdefghijkl"
OTHER = "another-hmac-secret-0123456789abcdefghij"


def test_tokens_are_url_safe_and_carry_at_least_32_random_bytes() -> None:
    for _ in range(100):
        token = new_token()
        assert len(token) >= 43
        assert len(token) <= MAX_TOKEN_LENGTH
        assert re.fullmatch(r"[A-Za-z0-9_-]+", token), token
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert len(raw) >= 32


def test_tokens_are_unique() -> None:
    tokens = {new_token() for _ in range(2000)}
    assert len(tokens) == 2000
    # No shared structure either: the first characters vary as much as the rest.
    assert len({token[:4] for token in tokens}) > 1900


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "",
        "pBn3Cw0v2cB6k1mQ1pU7oT0Zs9vYy8KXo8oN5q3R2sA",
        "é-unicode-🔑",
        "x" * MAX_TOKEN_LENGTH,
    ],
)
def test_hash_is_hex_hmac_sha256(token: str) -> None:
    expected = hmac.new(SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()
    digest = TokenHasher(SECRET).hash(token)
    assert digest == expected
    assert re.fullmatch(r"[0-9a-f]{64}", digest)


def test_one_hasher_hashes_each_token_on_its_own() -> None:
    hasher = TokenHasher(SECRET)
    tokens = [new_token() for _ in range(3)] + ["abc", "abc"]
    digests = [hasher.hash(token) for token in tokens]
    assert digests == [TokenHasher(SECRET).hash(token) for token in tokens]
    assert digests[-1] == digests[-2]


def test_hash_is_not_a_plain_digest() -> None:
    token = new_token()
    digest = TokenHasher(SECRET).hash(token)
    assert digest != hashlib.sha256(token.encode()).hexdigest()
    assert token not in digest


def test_hash_depends_on_the_secret_and_the_token() -> None:
    token = new_token()
    assert TokenHasher(SECRET).hash(token) != TokenHasher(OTHER).hash(token)
    assert TokenHasher(SECRET).hash(token) != TokenHasher(SECRET).hash(new_token())
    assert TokenHasher(SECRET).hash(token) == TokenHasher(SECRET).hash(token)


def test_known_vector() -> None:
    """RFC 4231 test case 2, so the digest is the Node relay's `createHmac('sha256', ...)`."""
    digest = TokenHasher("Jefe").hash("what do ya want for nothing?")
    assert digest == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
