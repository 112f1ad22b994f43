"""Relay tokens (made, hashed with an HMAC), the encryption of stored keys, and request
authentication against the store.

May import `relay.errors` and `backends`.
"""
