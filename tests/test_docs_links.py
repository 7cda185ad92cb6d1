"""Every relative link in README.md and docs/*.md names a file that exists, and every #anchor a heading
of that page (GitHub's rule: lowercase, punctuation but '-' and '_' dropped, spaces to '-')."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def _prose(text: str) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    for line in _prose(page.read_text()):
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def _broken(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for line in _prose(page.read_text()):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{target}: no file {dest.relative_to(root) if dest.is_relative_to(root) else dest}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(root)}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page):
    assert _broken(page) == [], f"{page.relative_to(ROOT)}: broken links"


def test_the_checker_finds_a_missing_heading_and_file(tmp_path):
    page = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# Some title: `x` (y)\n")
    page.write_text("[ok](b.md#some-title-x-y) [bad](b.md#nothing) [gone](c.md)\n```\n[code](z.md)\n```\n")
    assert _broken(page, tmp_path) == ["b.md#nothing: no heading #nothing in b.md", "c.md: no file c.md"]
