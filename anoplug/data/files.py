"""Files the writer leaves whole or not at all: atomic writes, folders, and disk errors named in one line.

Every write goes to a temporary beside its target and is renamed into place; a failed
write removes the temporary, and a full, read-only or forbidden disk becomes a
:class:`~anoplug.data.base.DataError` naming the path (the CLI's exit 2).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

from anoplug.data.base import DataError

__all__ = ["DISK_ERRNOS", "TMP", "disk_error", "make_dir", "temporary_for", "atomic_write", "dumps_line"]

TMP = ".anoplug-tmp"


DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def disk_error(e: OSError, path: Path) -> DataError:
    why = e.strerror or type(e).__name__
    return DataError(f"cannot write {path}: {why}" + (" (the disk is full)" if e.errno == errno.ENOSPC else ""))


def make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise DataError(f"cannot create folder {path}: a file of that name is in the way") from e
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise DataError(f"cannot create folder {path}: a file is in the way ({e.filename})") from e
        if e.errno in DISK_ERRNOS:
            raise disk_error(e, path) from e
        raise


@contextlib.contextmanager
def temporary_for(path: Path) -> Iterator[Path]:
    """``<name>.anoplug-tmp`` beside ``path``; a failure removes it and names a full or read-only disk."""
    tmp = path.with_name(f"{path.name}{TMP}")
    try:
        yield tmp
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            raise disk_error(e, path) from e
        raise


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write to a temporary beside ``path``, then rename; a failed write leaves no temporary.

    Strings inside, not Paths: this runs once per sample file, and parsing a Path interns every
    file name (the interpreter's interned-string table then grows with the run)."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        make_dir(Path(parent))
    tmp = path + TMP
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            raise disk_error(e, Path(path)) from e
        raise


def dumps_line(rec: dict) -> str:
    return json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
