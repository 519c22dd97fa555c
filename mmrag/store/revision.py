"""Which schema revision this version of mmrag makes, read from its migration files: no SQLAlchemy or
Alembic import (a command checks it before deciding whether to load either)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from mmrag.errors import MmragError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

_REVISION = re.compile(r'^(down_revision|revision): str(?: \| None)? = "?(\w+)"?', re.M)


@functools.cache
def head_revision() -> str:
    """The newest migration's revision id."""
    revisions, parents = set(), set()
    for script in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict((key, value) for key, value in _REVISION.findall(script.read_text(encoding="utf-8")))
        revisions.add(found["revision"])
        parents.add(found.get("down_revision", "None"))
    heads = revisions - parents
    if len(heads) != 1:
        raise MmragError(f"the migrations have {len(heads)} heads ({sorted(heads)}): one expected")
    return heads.pop()
