"""The documents for people hold together: every link resolves, and every setting is documented.

A link that points nowhere (or outside the repository, where a clone does not have it), or a
setting the code reads that no page names, is found here rather than by a reader.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from relay.config import Settings
from relay.providers.table import PROVIDERS
from tests.test_deploy_files import variables_read_by_the_relay

pytestmark = pytest.mark.sqlite

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted({*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md")})
CONFIGURATION = ROOT / "docs" / "configuration.md"

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(path: Path) -> str:
    """The Markdown of `path` without its code: a link inside a code block is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))


def links(path: Path) -> list[str]:
    text = prose(path)
    return INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)


def anchors(path: Path) -> set[str]:
    """The fragment ids GitHub gives the headings of `path`: lower-cased, punctuation dropped,
    spaces as hyphens, a repeated heading numbered (`-1`, `-2`, ...)."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    ids = set()
    for heading in HEADING.findall(text):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    return ids


def broken(document: Path, target: str) -> str | None:
    """Why the relative link `target` in `document` leads nowhere, or None when it resolves."""
    path, _, fragment = target.partition("#")
    resolved = (document.parent / path).resolve() if path else document
    if not resolved.is_relative_to(ROOT):
        return "points outside the repository"
    if not resolved.exists():
        return "no such file"
    if fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
        return f"no heading #{fragment} in {resolved.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(document: Path) -> None:
    relative = [target for target in links(document) if not SCHEME.match(target)]
    problems = [
        f"{target}: {why}" for target in relative if (why := broken(document, target)) is not None
    ]
    assert not problems, f"{document.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_documents_are_all_checked() -> None:
    names = {str(path.relative_to(ROOT)) for path in DOCUMENTS}
    assert {"README.md", "CONTRIBUTING.md", "docs/README.md", "docs/configuration.md"} <= names
    assert links(ROOT / "README.md"), "the link scan finds nothing: its pattern is broken"


def configuration_rows() -> set[str]:
    """The variables named in the first cell of a table row of docs/configuration.md: a
    setting counts as documented only where the page gives it a row, not in passing."""
    names: set[str] = set()
    for line in CONFIGURATION.read_text(encoding="utf-8").splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2:
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*(?:<[A-Z]+>[A-Z0-9_]*)?)`", cells[1]))
    return names


def settings_variables() -> set[str]:
    """Every environment variable the relay reads.

    `Settings` cannot say this itself: its fields carry no environment names (nor aliases), and
    `relay/config.py` maps them in its parser (`get("PORT")`, `_number(get, "DB_POOL_SIZE",
    ...)`, the `RELAY_<PROVIDER>_BASE_URL` pattern), so the names are read out of the source as
    its string constants shaped like a variable, by the scan `.env.example`'s test uses (which
    adds `relay/cli.py`'s platform markers). Every field but the base-URL family has a name of
    its own; fewer names than that means the scan no longer sees the parser.
    """
    names = variables_read_by_the_relay()
    fields = {field.name for field in dataclasses.fields(Settings)}
    assert len(names) >= len(fields - {"base_url_overrides"}), "the scan misses settings"
    return names


@pytest.mark.parametrize("document", ["docs/configuration.md", ".env.example"])
def test_every_setting_is_documented(document: str) -> None:
    """A row on the configuration page, and a mention in `.env.example` (as
    `test_deploy_files` also requires, there together with the store options it names)."""
    names = settings_variables()
    if document == "docs/configuration.md":
        documented = configuration_rows()
        missing = sorted(names - documented)
    else:
        text = (ROOT / document).read_text(encoding="utf-8")
        missing = sorted(name for name in names if not re.search(rf"\b{name}\b", text))
    assert not missing, f"{document} does not document {missing}"


def test_every_provider_base_url_has_a_row() -> None:
    """The family, and each of its names, which is what `Settings` reads for that provider."""
    rows = configuration_rows()
    assert "RELAY_<PROVIDER>_BASE_URL" in rows
    for provider in PROVIDERS:
        name = f"RELAY_{provider.upper().replace('-', '_')}_BASE_URL"
        assert name in rows, name
        settings = Settings.from_env({"ENCRYPTION_SECRET": "s" * 32, name: "https://egress.test"})
        assert settings.base_url_for(provider, "") == "https://egress.test", name


def test_documented_settings_exist() -> None:
    """No row for a setting the relay no longer reads: a reader would set it to no effect."""
    family = {name for name in configuration_rows() if re.fullmatch(r"RELAY_\w+_BASE_URL", name)}
    stale = configuration_rows() - settings_variables() - family - {"RELAY_<PROVIDER>_BASE_URL"}
    assert not stale, f"docs/configuration.md documents {sorted(stale)}, which nothing reads"
