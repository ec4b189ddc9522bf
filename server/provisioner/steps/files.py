"""Atomic file replacement, the way every step writes state others read."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by this user alone: readers see the old file or
    the new, never half of one.

    The temporary file (`.<name>.*.tmp`, swept at start if a crash leaves one) is in the
    same directory, because a rename is atomic only within one file system, and a watcher
    of the directory (Envoy) sees the rename as the change. It is flushed to disk first, so
    a crash never leaves a renamed but empty file.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
