"""`ALLOWED_MODELS`: which models an inference request may name (the model is read from the
request by `relay.proxy.modelname`, where the provider table's `model_in` says).

Patterns are comma-separated, case-insensitive, `*` matches any run of characters, and a
pattern must match the whole name: either the bare name (`gpt-4o-mini`) or the prefixed one
(`openai/gpt-4o-mini`). When the list is set, a request whose model cannot be read (no field,
a body that is not JSON or a form, a path without a model) is refused like a forbidden one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from relay.errors import Forbidden

__all__ = ["ModelPolicy"]


class ModelPolicy:
    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(p.strip().lower() for p in patterns if p.strip())
        self._regex = re.compile(
            "|".join("(?:" + ".*".join(map(re.escape, p.split("*"))) + ")" for p in self.patterns),
            re.IGNORECASE | re.DOTALL,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.patterns)

    def allows(self, model: str, provider: str) -> bool:
        if not self.enabled:
            return True
        match = self._regex.fullmatch
        return match(model) is not None or match(f"{provider}/{model}") is not None

    def check(self, model: str | None, provider: str) -> None:
        """403 unless `model` may be used through `provider`."""
        if model is None:
            raise Forbidden(
                "The request names no model this relay can read, and only some models are "
                "permitted on this relay.",
                code="model_not_permitted",
                allowed_models=list(self.patterns),
            )
        if not self.allows(model, provider):
            raise Forbidden(
                f'Model "{model}" is not permitted on this relay.',
                code="model_not_permitted",
                allowed_models=list(self.patterns),
            )
