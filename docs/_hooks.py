"""MkDocs hook: the nav's "Probes" section lists every page in ``docs/probes/`` by itself.

A new probe kind adds its page there and edits nothing else: ``writing.md`` (how to write a
kind) comes first, then the kinds' pages in file-name order, each titled by its first heading.
``mkdocs.yml`` keeps an empty ``- Probes: []`` entry where the section goes and names this file
under ``hooks:``; ``tests/test_kinds.py`` calls :func:`probe_pages` to check every kind's page
is listed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SECTION = "Probes"
FIRST = "writing.md"


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("_", " ").capitalize()


def probe_pages(docs_dir: str | Path) -> list[dict[str, str]]:
    """The "Probes" section: ``[{title: "probes/<file>.md"}, ...]``, ``writing.md`` first."""
    pages = sorted(
        (Path(docs_dir) / "probes").glob("*.md"), key=lambda p: (p.name != FIRST, p.name)
    )
    return [{_title(page): f"probes/{page.name}"} for page in pages]


def on_config(config: Any) -> Any:
    """Fill the ``Probes`` entry of the nav (it must be there, so its place is chosen)."""
    nav = config["nav"] or []
    for entry in nav:
        if isinstance(entry, dict) and SECTION in entry:
            entry[SECTION] = probe_pages(config["docs_dir"])
            return config
    raise ValueError(f"mkdocs.yml: the nav has no '{SECTION}' entry for docs/_hooks.py to fill")
