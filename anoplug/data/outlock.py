"""The output-directory lock: one run writes a directory at a time, and a second is refused naming the first.

``<out>/<category>/.anoplug.lock`` holds the run's identity (method, parameters, seed,
dataset, pid, host, start time). It is an ``fcntl.flock`` on that file: taking it is
atomic and the kernel drops it when the holder dies (even by SIGKILL or the OOM killer),
so a lock file left behind but not locked is stale by definition and is taken over.
Where ``flock`` is unavailable the lock falls back to ``O_CREAT | O_EXCL``, stale when it
names this host and its pid is gone.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from anoplug.data.base import DataError
from anoplug.data.files import DISK_ERRNOS, disk_error, dumps_line

__all__ = ["LOCK", "OutputLock", "describe_run"]


LOCK = ".anoplug.lock"  # held by the run writing the directory (see OutputLock)


def describe_run(run: dict) -> str:
    """A run in a few words: ``draem seed 0 on toy:metal@256``."""
    return f"{run.get('method')} seed {run.get('seed')} on {run.get('dataset')}"


def _pid_alive(pid: Any) -> bool:
    """Whether ``pid`` runs on this host; True when it cannot be told (never signals anything)."""
    if not isinstance(pid, int) or pid <= 0 or os.name == "nt":  # os.kill(pid, 0) would terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by someone else
        return True
    return True


def _flock(fd: int) -> bool:
    """Try an exclusive ``flock``: True when taken, False when held elsewhere; OSError when unsupported."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTSUP}


class OutputLock:
    """The advisory lock of one output directory, held while a run writes it.

    Why ``flock`` on a lock file rather than only ``O_CREAT|O_EXCL``: taking it is atomic, and
    the kernel drops it when the holder dies, however it dies (SIGKILL, OOM, power cut of a
    process), so stale locks need no guessing and there is no check-then-delete race between
    two runs that both find a stale file. The file's content — the run's identity, pid, host
    and start time — only serves the refusal message. Released on exit, on error and on
    KeyboardInterrupt (the lock file is removed while still locked; a run that opened the old
    file meanwhile notices that the path now names another file and retries). Where ``flock``
    is unavailable (no ``fcntl``, or a filesystem answering ENOLCK/EOPNOTSUPP) it falls back
    to creating the file with ``O_CREAT|O_EXCL``; such a lock is stale when its host is this
    one and its pid is gone.
    """

    def __init__(self, root: Path, identity: dict, *, data: str | None = None) -> None:
        self.path = root / LOCK
        self.root = root
        self.identity = identity
        self.info = dict(identity, data=data, pid=os.getpid(), host=socket.gethostname(),
                         started=datetime.now(timezone.utc).isoformat(timespec="seconds"), argv=sys.argv[:8])
        self._fd: int | None = None
        self._exclusive = False  # True in the O_EXCL fallback

    # acquiring
    def __enter__(self) -> OutputLock:
        try:
            self._acquire()
        except OSError as e:
            if e.errno in DISK_ERRNOS:
                raise disk_error(e, self.path) from e
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _payload(self) -> bytes:
        return (dumps_line(self.info) + "\n").encode("utf-8")

    def _acquire(self) -> None:
        for _ in range(50):  # only a release racing us makes this loop turn
            try:
                fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, os.O_RDWR), False
                except FileNotFoundError:  # released in between
                    continue
            try:
                try:
                    taken = _flock(fd)
                except (OSError, ImportError) as e:
                    if isinstance(e, OSError) and e.errno not in _NO_FLOCK:
                        raise
                    if created:  # not a lock of anyone's: leave the path free for the O_EXCL fallback
                        self.path.unlink(missing_ok=True)
                    os.close(fd)
                    fd = -1
                    return self._acquire_exclusive()
                if not taken:
                    raise self._refusal(self._read_holder(fd), flocked=True)
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:  # the holder released (and removed) the file between our open and our flock
                    continue
                # ours; whatever the file held was a run that died without releasing it (stale)
                os.ftruncate(fd, 0)
                os.write(fd, self._payload())
                self._fd, fd = fd, -1
                return None
            finally:
                if fd >= 0:
                    os.close(fd)
        raise DataError(f"cannot take the lock {self.path}: it keeps changing hands")

    def _acquire_exclusive(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._read_holder(None)
                if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise self._refusal(holder, flocked=False) from None
            os.write(fd, self._payload())
            os.close(fd)
            self._exclusive = True
            return None
        raise DataError(f"cannot take the lock {self.path}: it keeps changing hands")

    def _read_holder(self, fd: int | None) -> dict:
        """The identity written by the lock's holder (it may still be writing it: wait a little)."""
        for _ in range(20):
            try:
                if fd is not None:
                    raw = os.pread(fd, 1 << 16, 0)
                else:
                    raw = self.path.read_bytes()
                info = json.loads(raw)
                if isinstance(info, dict):
                    return info
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return {}

    def _refusal(self, holder: dict, *, flocked: bool) -> DataError:
        if not holder:
            return DataError(f"{self.root} is being written by another anoplug run (lock {self.path}); "
                             "wait for it to finish or choose another --out")
        pid, host = holder.get("pid"), holder.get("host")
        where = f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
        if holder.get("started"):
            where += f", started {holder['started']}"
        note = ""
        if flocked and host == socket.gethostname() and not _pid_alive(pid):
            note = " (that pid is gone; a process it started still holds the lock)"
        elif not flocked:
            note = f" (if no such run is going on, remove {self.path})"
        if {k: holder.get(k) for k in self.identity} == self.identity:
            return DataError(f"{self.root} is being written by this same run already ({describe_run(holder)}, {where})"
                             f"{note}; wait for it to finish — re-running afterwards resumes and skips what it wrote")
        return DataError(f"{self.root} is being written by another run: {describe_run(holder)} ({where}){note}; "
                         "refusing to mix two runs — wait for it to finish or choose another --out")

    # releasing
    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                self.path.unlink(missing_ok=True)  # while still locked: nobody can hold this file meanwhile
            finally:
                os.close(fd)  # drops the flock
        elif self._exclusive:
            self._exclusive = False
            try:
                if json.loads(self.path.read_bytes()).get("pid") == os.getpid():
                    self.path.unlink(missing_ok=True)
            except (OSError, ValueError):
                pass
