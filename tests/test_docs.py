"""The documentation holds together: the README stays a landing page that links every page of
``docs/``, and every relative link in the README and in ``docs/`` reaches a file (and a heading,
when it names one).

External links (``https://``, ``mailto:``) are not followed: the tests run offline.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.conftest import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
#: The README is the landing page; the reference lives in docs/.
README_MAX_LINES = 200

#: Fenced code blocks and inline code: what looks like a link there is code, not a link.
_FENCED = re.compile(r"^(```|~~~).*?^\1[ \t]*$", flags=re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
#: ``[text](target)`` and ``![alt](target)``, with an optional "title"; and ``[label]: target``.
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", flags=re.M)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", flags=re.I)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", flags=re.M)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    return _INLINE_CODE.sub("", _FENCED.sub("", text))


def links(path: Path) -> list[str]:
    """Every link target in ``path`` outside code."""
    text = _prose(path.read_text(encoding="utf-8"))
    return _INLINE_LINK.findall(text) + _REFERENCE_LINK.findall(text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, code marks, emphasis stars and punctuation dropped
    (``_`` and ``-`` kept), link text kept, spaces to ``-``."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def anchors(path: Path) -> set[str]:
    """The anchors of ``path``'s headings (repeats get ``-1``, ``-2``... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(_FENCED.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links() -> list[tuple[Path, str]]:
    """Each relative link target once per file."""
    return [
        (path, target)
        for path in markdown_files()
        for target in dict.fromkeys(links(path))
        if not _EXTERNAL.match(target)
    ]


def _link_id(case: tuple[Path, str]) -> str:
    path, target = case
    return f"{path.relative_to(PROJECT_ROOT)}->{target}"


class TestLinks:
    @pytest.mark.parametrize("case", relative_links(), ids=_link_id)
    def test_relative_link_reaches_a_file(self, case):
        path, target = case
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / unquote(file_part)).resolve() if file_part else path
        assert resolved.exists(), f"{path.relative_to(PROJECT_ROOT)} links to {target!r}: no such file"
        assert PROJECT_ROOT.resolve() in resolved.parents, f"{target!r} leaves the repository"
        if anchor:
            assert resolved.suffix == ".md", f"{target!r}: an anchor in a file that is not Markdown"
            assert anchor in anchors(resolved), (
                f"{path.relative_to(PROJECT_ROOT)} links to {target!r}: no heading with that anchor in "
                f"{resolved.relative_to(PROJECT_ROOT)}"
            )

    def test_every_page_is_linked_from_the_readme(self):
        linked = {
            (README.parent / unquote(target.partition("#")[0])).resolve()
            for target in links(README)
            if not _EXTERNAL.match(target)
        }
        missing = [page.name for page in sorted(DOCS.glob("*.md")) if page.resolve() not in linked]
        assert not missing, f"docs pages the README does not link: {missing}"

    def test_the_checker_sees_links_and_skips_code(self, tmp_path):
        page = tmp_path / "page.md"
        page.write_text(
            '# A title\n\nSee [x](a.md), ![img](images/b.png "t") and [y](c.md#a-title).\n\n'
            "```python\nf = [z](not-a-link.md)\n```\n\n`[w](nor-this.md)`\n\n[ref]: d.md\n",
            encoding="utf-8",
        )
        assert links(page) == ["a.md", "images/b.png", "c.md#a-title", "d.md"]
        assert anchors(page) == {"a-title"}
        assert slug("Scale-out: one API budget for the `fleet`") == "scale-out-one-api-budget-for-the-fleet"
        assert slug("Choosing `poll_interval` [now](x.md)") == "choosing-poll_interval-now"


class TestReadme:
    def test_is_a_landing_page(self):
        lines = README.read_text(encoding="utf-8").count("\n")
        assert lines < README_MAX_LINES, (
            f"README.md has {lines} lines: keep it a landing page (< {README_MAX_LINES}) and move "
            "reference material to docs/"
        )

    def test_shows_the_two_commands(self):
        text = README.read_text(encoding="utf-8")
        assert "make demo" in text
        assert "make test" in text
