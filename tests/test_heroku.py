"""What Heroku's Python buildpack builds from: `requirements.txt` and `.python-version`, in step
with pyproject.toml and the Dockerfile (no Heroku account is needed)."""

from __future__ import annotations

import re
import runpy
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.test_deploy_files import dockerfile_instructions

pytestmark = pytest.mark.sqlite

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "deploy" / "requirements.py"
REGENERATE = "regenerate it: .venv/bin/python deploy/requirements.py > requirements.txt"


def project() -> dict[str, Any]:
    document: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    return document["project"]


def requirement_lines() -> list[str]:
    text = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def pins() -> dict[str, str]:
    out = {}
    for line in requirement_lines():
        if line == ".":
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"not a pin: {line!r}"
        out[canonicalize_name(match[1])] = match[2]
    return out


def test_requirements_install_the_relay_itself_last() -> None:
    """The Procfile runs `byok-relay`: the package must be installed, not only its dependencies."""
    lines = requirement_lines()
    assert lines[-1] == "."
    assert lines.count(".") == 1
    editable = [line for line in lines if line.split()[0] in ("-e", "--editable")]
    assert not editable, "an editable install points into the build directory, gone at run time"


def test_every_dependency_of_pyproject_is_pinned_within_its_range() -> None:
    pinned = pins()
    for line in project()["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in requirements.txt; {REGENERATE}"
        specifier: SpecifierSet = requirement.specifier
        assert specifier.contains(pinned[name], prereleases=True), (
            f"requirements.txt pins {name}=={pinned[name]}, pyproject wants {specifier}; "
            + REGENERATE
        )


def test_requirements_hold_the_whole_closure_and_nothing_else() -> None:
    """The generator's closure, computed from this environment's metadata, names the same
    packages as the file: a dependency added to or dropped from pyproject.toml shows here."""
    generator = runpy.run_path(str(GENERATOR))
    expected = set(generator["pinned"]())
    found = set(pins())
    assert found == expected, (
        f"missing {sorted(expected - found)}, extra {sorted(found - expected)}; {REGENERATE}"
    )


def test_python_version_is_the_images_and_the_projects() -> None:
    version = (ROOT / ".python-version").read_text(encoding="utf-8").strip()
    assert re.fullmatch(r"3\.\d+", version), "the buildpack takes a major version"
    defaults = {
        args.partition("=")[0]: args.partition("=")[2]
        for keyword, args in dockerfile_instructions()
        if keyword == "ARG"
    }
    assert defaults["PYTHON_VERSION"] == version
    assert SpecifierSet(project()["requires-python"]).contains(version + ".0")
