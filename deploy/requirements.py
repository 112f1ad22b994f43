"""Write `requirements.txt` for the hosts that build from one (Heroku's Python buildpack): every
dependency pyproject.toml names, direct or not, pinned at the version installed here, then the
package itself (`.`, so that the `byok-relay` command of the Procfile exists).

    .venv/bin/python deploy/requirements.py > requirements.txt

Run it in the environment the tests passed in (`./dev test` installs it). `tests/test_heroku.py`
fails when pyproject.toml and the file part ways.
"""

from __future__ import annotations

import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# Generated from pyproject.toml by `python deploy/requirements.py > requirements.txt`: every
# dependency pinned as tested, then the relay itself. For Heroku's Python buildpack; the
# Dockerfile installs from pyproject.toml.
"""


def direct() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return [Requirement(line) for line in project["project"]["dependencies"]]


def pinned() -> dict[str, str]:
    """Canonical name -> installed version, for the closure of pyproject's dependencies (their
    extras included) under this interpreter's markers."""
    found: dict[str, str] = {}
    pending = [(requirement, "") for requirement in direct()]
    seen: set[tuple[str, str]] = set()
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        for wanted in ("", *sorted(requirement.extras)):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            distribution = importlib.metadata.distribution(name)
            found[name] = distribution.version
            for line in distribution.requires or ():
                pending.append((Requirement(line), wanted))
    return dict(sorted(found.items()))


def render() -> str:
    lines = [f"{name}=={version}" for name, version in pinned().items()]
    return HEADER + "\n".join([*lines, "."]) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
