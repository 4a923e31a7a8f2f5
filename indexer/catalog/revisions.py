"""The catalog schema revisions this photodex ships, read from the migration files without importing
Alembic or SQLAlchemy, so that a read-only command can check a catalog's revision quickly."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from ..core.errors import CollectionError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_REVISION_LINE = re.compile(r"^(down_revision|revision)\s*=\s*['\"]?([\w.-]+|None)['\"]?", re.M)


@functools.lru_cache(maxsize=1)
def _revisions() -> tuple[frozenset[str], str]:
    """(every schema revision shipped with this photodex, the newest one)."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict((k, v) for k, v in _REVISION_LINE.findall(path.read_text()))
        if "revision" in found:
            revisions.add(found["revision"])
            parents.add(found.get("down_revision"))
    heads = revisions - parents
    if len(heads) != 1:
        raise CollectionError(f"migrations have {len(heads)} heads {sorted(heads)}; this install is broken")
    return frozenset(revisions), heads.pop()


def head_revision() -> str:
    """The newest schema revision shipped with this photodex."""
    return _revisions()[1]


def refuse_unknown_revision(rev: str | None, where: str) -> None:
    """A catalog written by a newer photodex has a revision this one does not know: say so, change nothing."""
    if rev is not None and rev not in _revisions()[0]:
        raise CollectionError(f"catalog {where} has schema revision {rev}, newer than this photodex knows "
                              f"(newest: {head_revision()}); it was written by a newer photodex: upgrade photodex "
                              "to open it")
