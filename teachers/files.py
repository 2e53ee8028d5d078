"""Writing a directory so that a reader never sees half of it.

Teacher and student exports and the self-generated data sets are all built under a temporary name
beside their final path and renamed at the end; an interrupted write leaves nothing at the path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_directory(path: str | os.PathLike, done_marker: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `path`; rename it to `path` when the block ends.

    If the block or the rename fails, the temporary directory is removed and the error raised, except
    when `done_marker` names a file that is now present under `path`: then a concurrent writer has
    finished the same directory first (a rank of a multi-process run, say), and its copy is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.rename(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (isinstance(err, OSError) and done_marker is not None and (path / done_marker).is_file()):
            raise
