"""Re-encrypt every stored key under the newest `ENCRYPTION_SECRET` (`byok-relay rotate-keys`).

Run after putting a new secret first in `ENCRYPTION_SECRET`; once it reports no record left
under an old secret, the old one can be dropped from the list. Safe while relays serve: each
record is swapped only if it is unchanged (a user's own write meanwhile wins).
"""

from __future__ import annotations

import dataclasses

from backends import KeyStore
from relay.security.crypto import DecryptionError, KeyCipher

__all__ = ["RotationReport", "rotate_keys"]


@dataclasses.dataclass
class RotationReport:
    found: int = 0
    rotated: int = 0
    current: int = 0
    """Already sealed under the newest secret."""
    changed: int = 0
    """Written by their user while the rotation ran (already under the newest secret)."""
    unreadable: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """(user id, provider) of records no configured secret can decrypt."""

    def summary(self, dry_run: bool) -> str:
        verb = "would be re-encrypted" if dry_run else "re-encrypted"
        return (
            f"{'dry run: ' if dry_run else ''}keys: {self.found} found, {self.rotated} {verb}, "
            f"{self.current} already current, {self.changed} changed meanwhile, "
            f"{len(self.unreadable)} unreadable"
        )


async def rotate_keys(
    store: KeyStore, cipher: KeyCipher, *, dry_run: bool = False
) -> RotationReport:
    report = RotationReport()
    async for user_id, provider, record in store.iter_keys():
        report.found += 1
        if cipher.is_current(record):
            report.current += 1
            continue
        try:
            new = cipher.rotate(record, user_id=user_id, provider=provider)
        except DecryptionError:
            report.unreadable.append((user_id, provider))
            continue
        if dry_run or await store.replace_key(user_id, provider, record, new):
            report.rotated += 1
        else:
            report.changed += 1
    return report
