"""The README and docs/: every relative link (and #anchor) leads somewhere, and nothing
points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)#\s]+)?(#[^)\s]+)?\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings."""
    headings = re.findall(r"(?m)^#+ (.*)", page.read_text())
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_leads_somewhere_inside_the_repository(page: Path) -> None:
    text = page.read_text()
    assert "../shared" not in text
    for found in _LINK.finditer(text):
        target, anchor = found.group(1), found.group(2)
        if target and target.startswith(("http://", "https://")):
            continue
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: {target} does not exist"
        assert path.is_relative_to(ROOT), f"{page.name}: {target} is outside the repository"
        if anchor and path.suffix == ".md":
            assert anchor[1:] in anchors(path), f"{page.name}: no heading for {target or ''}{anchor}"
