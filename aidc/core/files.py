"""The data directory's files: readable by aidc's user only (directories 0700, files 0600).

SQLite creates its -wal and -shm files with the database file's permissions, so making the
database file 0600 before the first connect covers all three.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def private_dir(path: Path) -> Path:
    """``path`` (and missing parents) as a directory only its owner reads."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def private_file(path: Path, text: str) -> None:
    """Write ``text`` to a new file only its owner reads (made 0600 before anything is in it)."""
    private_dir(path.parent)
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    path.write_text(text)


def private_sqlite(path: str | Path, **connect_kwargs) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path``, created 0600 in a 0700 directory."""
    path = Path(path)
    private_dir(path.parent)
    path.touch(mode=0o600, exist_ok=True)
    os.chmod(path, 0o600)
    return sqlite3.connect(path, **connect_kwargs)
