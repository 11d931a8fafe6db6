"""Files that are either fully written or not changed at all.

A run directory is rewritten while training (configs, metadata, curves at every checkpoint); a
process killed mid-write must not leave a truncated file where a good one was. Each write goes
to a temporary file in the same directory, is flushed to disk, and then replaces the target in
one ``os.replace`` (atomic on POSIX and Windows).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_text"]


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically.

    Arguments:
        path: the destination (its directory must exist).
        text: the new contents.
        encoding: the text encoding.

    Returns:
        ``path``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
