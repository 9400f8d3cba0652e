"""The documentation holds together: every relative link and anchor in the
README and ``docs/`` resolves, and the configuration table lists exactly the
flags ``presence serve`` takes, with their variables and defaults."""

from __future__ import annotations

import argparse
import dataclasses
import re
from functools import cache
from pathlib import Path

from presence import Settings
from presence.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[(?:[^\]]|\](?=[^(]))*?\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation
    dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    """Every anchor of a Markdown page (a repeated heading gets -1, -2, …)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links(page: Path) -> list[str]:
    text = _CODE.sub("", _FENCE.sub("", page.read_text()))
    return _LINK.findall(text)


def test_every_relative_link_and_anchor_resolves() -> None:
    broken = []
    for page in pages():
        for target in links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            where = (page.parent / path).resolve() if path else page
            if not where.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and where.suffix == ".md" and anchor not in anchors(where):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such anchor)")
    assert not broken, "\n".join(broken)


def test_the_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Two words\n\n[a](#two-words) [b](#nothing) `[c](#code)`\n"
        "[two\nlines](#wrapped)\n```\n[d](#fenced)\n```\n"
    )
    assert links(page) == ["#two-words", "#nothing", "#wrapped"]
    assert anchors(page) == {"title", "two-words"}
    assert slug("`presence doctor` and the `--json` flag") == "presence-doctor-and-the---json-flag"


def _serve_flags() -> dict[str, argparse.Action]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    return {
        action.option_strings[-1]: action
        for action in serve._actions
        if action.option_strings and action.dest != "help"
    }


def _table() -> dict[str, tuple[str, str]]:
    """Each documented flag's variable and default, from the configuration page."""
    rows = {}
    for line in CONFIGURATION.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`--"):
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2])
    return rows


def _documented_default(cell: str) -> str:
    """The default as the table writes it: its first code span, else its
    first word (``empty``, ``none``, ``off``)."""
    code = re.search(r"`([^`]*)`", cell)
    return code[1] if code else cell.split(":")[0].split()[0]


def test_the_configuration_table_is_the_parsers_and_the_settings() -> None:
    flags = _serve_flags()
    table = _table()
    assert sorted(table) == sorted(flags), "flags documented and flags taken differ"
    defaults = {f.name: f.default for f in dataclasses.fields(Settings) if f.init}
    for flag, (variable, cell) in table.items():
        dest = flags[flag].dest
        assert variable == f"PRESENCE_{dest.upper()}", flag
        assert dest in defaults, f"{flag} is no setting"
        default = defaults[dest]
        shown = _documented_default(cell)
        if dest == "server_id":
            assert shown == "<host name>:<port>"
        elif isinstance(default, bool):
            assert shown == ("on" if default else "off"), (flag, cell)
        elif default == "" or default is None:
            assert shown in ("empty", "none"), (flag, cell)
        elif isinstance(default, float):
            assert float(shown) == default, (flag, cell)
        else:
            assert shown == str(default), (flag, cell)


def test_every_test_file_is_described() -> None:
    listed = (ROOT / "docs" / "development.md").read_text()
    missing = [
        t.name
        for t in sorted((ROOT / "tests").glob("test_*.py"))
        if f"`tests/{t.name}`" not in listed
    ]
    assert not missing, f"docs/development.md does not describe {missing}"
