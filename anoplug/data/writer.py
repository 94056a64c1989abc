"""Write generated anomalies as an MVTec-AD tree that anomalib reads unchanged.

Layout under ``<out>/<category>/``::

    train/good/NNNNNN.png                  normals copied from the source
    test/<label>/NNNNNN.png                generated samples (label "good" -> test/good)
    ground_truth/<label>/NNNNNN_mask.png   0/255 masks of the anomalous ones (none for a sample whose method
                                           provides no mask: ``Generator.provides_mask``; its record has
                                           ``"mask": null, "provides_mask": false``)
    manifest.jsonl                         one line per sample, sorted by index
    draws/NNNNNN.safetensors               a sample's big draws (tensors over 64 values), if any

Sample *i* uses source image ``i % len(source)`` and seed ``sample_seed(seed, i)`` alone,
so the output does not depend on the batch size, on how often the run was interrupted, or on
where it ran: samples are made by :mod:`anoplug.driver` (in this process, ``--workers N``
local processes or a Dask cluster, the same bytes), which streams them back in index order;
this module alone writes them, under the lock.
Each record holds the sample's draws losslessly (``sample``, big tensors in its side file),
so :func:`replay_manifest` regenerates the tree byte for byte from the manifest alone.

Safety rules, each one tested:

- **One writer per directory.** A run holds ``.anoplug.lock`` (an ``fcntl.flock`` on a file
  holding the run's method, parameters, seed, pid, host and start time) for as long as it
  writes; a second writer — another run or the same one — is refused with a
  :class:`DataError` naming the first. The kernel drops the lock when its process dies
  (even by SIGKILL), so a left-over lock file is stale by construction and is taken over;
  where the filesystem has no ``flock`` an ``O_CREAT|O_EXCL`` file is used instead and a
  lock whose pid is gone on this host is stale (``anoplug.data.outlock``; atomic writes and
  disk errors: ``anoplug.data.files``).
- **Never into the input.** An output folder equal to, inside, or containing the source
  dataset's folder (or the ``--masks``/``--boxes`` inputs), symlinks resolved, is refused
  before anything is written.
- **One run per directory.** A directory that holds another run (different method,
  version, parameters, seed, source or conditions) — finished, unfinished, or only its
  copied normals — is refused rather than mixed.
- **Resume to the same bytes.** Every file is written to a temporary name and renamed into
  place; finished samples are journalled after their files exist. A resumed run first
  rewrites a damaged journal (a torn or unreadable line) to the records it keeps, so any
  sequence of interruptions resumes to the bytes of an uninterrupted run. An empty
  (zero-byte) file counts as missing. When the run completes, numbered files under
  ``test/``, ``ground_truth/`` and ``draws/`` that no record describes (left by an
  interrupted run of the same identity) are removed, so the tree is what the manifest says.
- **Bounded.** Sample indices are streamed batch by batch and the manifest is streamed too:
  it is never held in memory. A run keeps ~10 bytes per finished sample (where its record
  lies in the manifest or the journal, and its label); at completion the manifest is written
  by reading those records back in index order. Memory is O(batch + window of shards in
  flight), flat in ``n``. :func:`estimate_output_bytes` sizes a run for a disk check.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from anoplug.data.base import DataError, Dataset
from anoplug.data.files import DISK_ERRNOS, TMP, atomic_write, disk_error, dumps_line, make_dir, temporary_for
from anoplug.data.inputs import ConditionSource, check_used
from anoplug.data.outlock import LOCK, OutputLock
from anoplug.driver import Executor, InProcess, Plan, dataset_id, png_bytes, safe_label, shards
from anoplug.generator import Samples
from anoplug.types import GOOD, to_uint8

__all__ = ["WriteSummary", "write_generated", "replay_manifest", "estimate_output_bytes", "MANIFEST", "JOURNAL",
           "LOCK", "PNG_RATIO"]

MANIFEST = "manifest.jsonl"
JOURNAL = ".manifest.journal.jsonl"  # finished samples of an unfinished run, appended as they complete
_IDENTITY = ("method", "method_version", "params", "seed", "dataset", "conditions")
_NUMBERED = re.compile(r"\d{6,}(?:_mask)?\.(?:png|safetensors)")  # the names the writer gives sample files
#: errors of the disk under --out, reported as DataError (the CLI exits 2 with one line)
#: PNG bytes / raw RGB bytes, an upper bound with headroom: measured on the toy data at compress level 3,
#: 0.37-0.67 at 64 px and 0.18-0.51 at 256 px (normals and DRAEM outputs; fabric and carpet the highest)
PNG_RATIO = 0.7


@dataclass
class WriteSummary:
    """What a :func:`write_generated` call did."""

    root: Path
    written: int
    skipped: int
    manifest: Path
    labels: dict[str, int] = field(default_factory=dict)  # samples per label in the whole manifest
    seconds: float = 0.0  # wall time of the call
    executor: str = "in this process"

    @property
    def rate(self) -> float:
        """New samples written per second of the call."""
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def line(self, verb: str = "wrote", what: str = "new samples") -> str:
        """The summary line of ``anoplug generate``: written, skipped, seconds, images/s."""
        return (f"{verb} {self.written} {what} ({self.skipped} already present) to {self.root} "
                f"in {self.seconds:.1f} s ({self.rate:.1f} images/s, {self.executor})")


_safe_label = safe_label  # the driver's: labels become directory names
_png_bytes = png_bytes
_dataset_id = dataset_id


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw line) of every line of ``path``, streamed."""
    with open(path, "rb") as f:
        offset = 0
        for raw in f:
            yield offset, raw
            offset += len(raw)


def _records_at(path: Path) -> Iterator[tuple[int, dict]]:
    """(byte offset, record) of a finished manifest, streamed; a line that is not a JSON object is a DataError."""
    for k, (offset, raw) in enumerate(_lines(path)):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path} line {k + 1} is not valid JSON ({e}); remove the file or choose another --out") from e
        if not isinstance(rec, dict):
            raise DataError(f"{path} line {k + 1} is not a record (a JSON object); remove the file or choose another --out")
        yield offset, rec


def _read_records(path: Path) -> Iterator[dict]:
    return (rec for _, rec in _records_at(path))


def _differs(rec: dict, identity: dict) -> list[str]:
    return [k for k in _IDENTITY if rec.get(k) != identity[k]]


def _refuse_other_run(root: Path, rec: dict, identity: dict, diff: list[str], samples: bool) -> DataError:
    what = "samples of a different run" if samples else "the start of a different run (its copied normals, no samples yet)"
    return DataError(
        f"{root} already holds {what} ({', '.join(diff)} differ: "
        f"{ {k: rec.get(k) for k in diff} } there vs { {k: identity[k] for k in diff} } now); "
        "refusing to mix them — choose another output directory")


class _Done:
    """The finished samples of a run, ~10 bytes each: where its record lies (file, byte offset) and its label.

    What the writer keeps instead of the records themselves, so memory stays flat in ``n``:
    the manifest is written at the end by reading each record back from the old manifest
    (``MANIFEST_FILE``) or the journal (``JOURNAL_FILE``), in index order.
    """

    MANIFEST_FILE, JOURNAL_FILE = 0, 1
    _DRAWS = 0x8000

    def __init__(self) -> None:
        self._where = array("q")  # index -> offset * 2 + file; -1: not finished
        self._label = array("H")  # index -> label code, | _DRAWS when the sample has a draws side file
        self.labels: list[str] = []
        self._codes: dict[str, int] = {}
        self.count = 0

    def add(self, i: int, file: int, offset: int, label: str, draws: bool) -> None:
        if i >= len(self._where):  # grow geometrically: amortised O(1), nothing for indices never finished
            extra = max(i + 1 - len(self._where), len(self._where) // 2, 1024)
            self._where.extend(array("q", [-1]) * extra)
            self._label.extend(array("H", [0]) * extra)
        if self._where[i] < 0:
            self.count += 1
        code = self._codes.get(label)
        if code is None:
            if len(self.labels) >= self._DRAWS:
                raise DataError(f"more than {self._DRAWS} distinct labels in one run")
            code = self._codes[label] = len(self.labels)
            self.labels.append(label)
        self._where[i] = offset * 2 + file
        self._label[i] = code | (self._DRAWS if draws else 0)

    def __contains__(self, i: int) -> bool:
        return 0 <= i < len(self._where) and self._where[i] >= 0

    def where(self, i: int) -> tuple[int, int]:
        w = self._where[i]
        return w & 1, w >> 1

    def label(self, i: int) -> str:
        return self.labels[self._label[i] & ~self._DRAWS]

    def has_draws(self, i: int) -> bool:
        return bool(self._label[i] & self._DRAWS)

    def indices(self) -> Iterator[int]:
        for i, w in enumerate(self._where):
            if w >= 0:
                yield i

    def below(self, n: int) -> int:
        return sum(1 for w in self._where[:n] if w >= 0)

    def label_counts(self) -> dict[str, int]:
        counts = [0] * len(self.labels)
        for i in self.indices():
            counts[self._label[i] & ~self._DRAWS] += 1
        return dict(sorted((lab, c) for lab, c in zip(self.labels, counts) if c))


def _note(root: Path, rec: dict, done: _Done, file: int, offset: int) -> None:
    if "index" in rec and _complete(root, rec):
        done.add(int(rec["index"]), file, offset, str(rec["label"]), bool(rec.get("draws")))


def _scan_manifest(path: Path, root: Path, identity: dict, done: _Done) -> int:
    """Check a finished manifest's records (one run, this one), note the complete ones; returns how many records."""
    if not path.is_file():
        return 0
    count = 0
    for offset, rec in _records_at(path):
        diff = _differs(rec, identity)
        if diff:
            raise _refuse_other_run(root, rec, identity, diff, samples=True)
        count += 1
        _note(root, rec, done, _Done.MANIFEST_FILE, offset)
    return count


def _journal_has_samples(path: Path) -> bool:
    for _, raw in _lines(path):
        with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
            rec = json.loads(raw)
            if isinstance(rec, dict) and "index" in rec:
                return True
    return False


def _scan_journal(path: Path, root: Path, identity: dict, done: _Done, *, samples: bool) -> bool:
    """Check the journal's readable records, note the complete ones; returns whether the file is clean.

    The journal only says which samples are done, and each sample's bytes depend on its index
    alone, so a line that cannot be read (torn by a kill, or glued to the next by an older
    writer) is dropped: that sample is simply made again. Clean means: a header line first,
    every line readable, the last one ended — a journal that is not clean is rewritten before
    anything is appended to it.
    """
    if not path.is_file():
        return False
    clean, first = True, None
    for offset, raw in _lines(path):
        if not raw.endswith(b"\n"):
            clean = False  # a torn last line: appending to it would glue two records
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            clean = clean and not raw.strip()
            continue
        if not isinstance(rec, dict):
            clean = False
            continue
        if first is None:
            first = rec
        diff = _differs(rec, identity)
        if diff:
            has = samples or "index" in rec or _journal_has_samples(path)
            raise _refuse_other_run(root, rec, identity, diff, samples=has)
        _note(root, rec, done, _Done.JOURNAL_FILE, offset)
    return clean and first is not None and "index" not in first  # no header: empty, or an older anoplug's


def _read_line(f: Any, offset: int) -> bytes:
    """The line at ``offset`` of an open binary file (no seek when reading on in order), newline-ended."""
    if f.tell() != offset:
        f.seek(offset)
    line = f.readline()
    return line if line.endswith(b"\n") else line + b"\n"


def _open_or_none(path: Path) -> Any:
    return open(path, "rb") if path.is_file() else contextlib.nullcontext(None)


def _file_ok(path: str | Path) -> bool:
    """A finished file: present and not empty (a crash can leave a renamed file with no data)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size > 0 and stat.S_ISREG(st.st_mode)


def _complete(root: Path, rec: dict) -> bool:
    """A record of this writer (its files named from index and label) whose files are all there and not empty."""
    try:
        i, label = int(rec["index"]), str(rec["label"])
        mask, draws = rec.get("mask"), rec.get("draws")
        named = (rec["image"] == f"test/{label}/{i:06d}.png"
                 and mask == (None if label == GOOD or rec.get("provides_mask") is False
                              else f"ground_truth/{label}/{i:06d}_mask.png")
                 and draws in (None, f"draws/{i:06d}.safetensors"))
    except (KeyError, TypeError, ValueError):
        return False
    # os.path, not pathlib: parsing a Path per record interns every file name (a resume of 10^5 records grew
    # the interpreter's interned-string table by megabytes)
    top = os.fspath(root)
    return named and all(_file_ok(os.path.join(top, rec[k])) for k in ("image", "mask", "draws") if rec.get(k))


# -- the output lock -------------------------------------------------------------------------------------------


# -- inputs the output must stay clear of ----------------------------------------------------------------------
def _input_paths(source: Dataset, conditions: ConditionSource | None) -> list[tuple[str, Path]]:
    """The folders and files a run reads: the source's root folder (a public ``root`` attribute,
    as the file-based loaders have), the folders of source files outside it, and the condition inputs."""
    out: list[tuple[str, Path]] = []
    root = getattr(source, "root", None)
    if isinstance(root, (str, os.PathLike)) and str(root):
        out.append(("source dataset", Path(root)))
    records = getattr(source, "records", None)
    parents = {Path(r.image).parent for r in (records if isinstance(records, (list, tuple)) else ())
               if isinstance(getattr(r, "image", None), (str, os.PathLike))}
    for parent in sorted(parents):
        if not (root and parent.is_relative_to(Path(root))):
            out.append(("source images", parent))
    if conditions is not None:
        if conditions.masks is not None:
            out.append(("--masks folder", Path(conditions.masks)))
        if conditions.boxes is not None:
            out.append(("--boxes file", Path(conditions.boxes)))
        if getattr(conditions, "references", None) is not None:
            out.append(("--references folder", Path(conditions.references)))
        if getattr(conditions, "depth", None) is not None:
            out.append(("--depth folder", Path(conditions.depth)))
    return out


def _refuse_output_in_inputs(root: Path, source: Dataset, conditions: ConditionSource | None) -> None:
    """Refuse an output folder equal to, inside, or holding anything the run reads (symlinks resolved)."""
    mine = root.expanduser().resolve()
    for what, p in _input_paths(source, conditions):
        theirs = p.expanduser().resolve()
        if mine == theirs or mine.is_relative_to(theirs) or theirs.is_relative_to(mine):
            rel = "is" if mine == theirs else "is inside" if mine.is_relative_to(theirs) else "contains"
            raise DataError(f"the output folder {mine} {rel} the {what} {theirs}; writing there would mix generated "
                            "files into the input — choose an --out outside it")


# -- normals copied to train/good --------------------------------------------------------------------------------
def _train_todo(source: Dataset, root: Path, n_train: int) -> list[int]:
    """The normals ``0..n_train-1`` still to copy; copies already there must have this run's size (else refuse)."""
    side = int(source.size)
    todo = []
    for j in range(n_train):
        path = root / "train" / GOOD / f"{j:06d}.png"
        if not _file_ok(path):
            todo.append(j)
            continue
        try:
            with Image.open(path) as im:
                wh = im.size
        except Exception:  # unreadable: copy it again
            todo.append(j)
            continue
        if wh != (side, side):
            raise DataError(f"{path} is {wh[0]}x{wh[1]} but this run copies normals at {side}x{side} "
                            f"(train/good of another run?); refusing to mix them — choose another --out "
                            f"or remove {root}")
    return todo


def _copy_train(source: Dataset, root: Path, todo: list[int], batch_size: int) -> None:
    for s in range(0, len(todo), batch_size):
        idx = todo[s:s + batch_size]
        b = source.batch(idx)
        for k, arr in enumerate(to_uint8(b.image)):
            atomic_write(root / "train" / GOOD / f"{idx[k]:06d}.png", _png_bytes(arr))


def _read_draws(root: Path, rec: dict) -> dict:
    """The side file of a record's big draws (``draws/NNNNNN.safetensors``), or nothing."""
    if not rec.get("draws"):
        return {}
    from safetensors.torch import load_file

    path = root / rec["draws"]
    if not path.is_file():
        raise DataError(f"{path}: side file of sample {rec.get('index')} is missing")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise DataError(f"cannot read {path}: {e}") from e


def _files(top: str | Path) -> Iterator[os.DirEntry]:
    """Every file under ``top`` (not following links), each directory streamed: never a list of a folder's entries."""
    stack = [top]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    yield e


def _clean_temporaries(root: Path) -> None:
    for e in _files(root):
        if e.name.endswith(TMP):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.path)


def _pending(n: int, done: _Done) -> Iterator[int]:
    """The indices ``0..n-1`` not yet done, one at a time, never all of them at once."""
    return (i for i in range(n) if i not in done)


def _start_journal(path: Path, header: dict, done: _Done, clean: bool) -> None:
    """Make the journal a clean file to append to: the run's header line, then the records kept (by index).

    Streamed from the old journal to a temporary renamed into place; the kept records'
    offsets move to the new file.
    """
    if clean:
        return
    make_dir(path.parent)
    with temporary_for(path) as tmp:
        with open(tmp, "wb") as out, _open_or_none(path) as old:
            head = (dumps_line(header) + "\n").encode("utf-8")
            out.write(head)
            pos = len(head)
            for i in done.indices():
                file, offset = done.where(i)
                if file != _Done.JOURNAL_FILE:
                    continue
                line = _read_line(old, offset)
                out.write(line)
                done.add(i, _Done.JOURNAL_FILE, pos, done.label(i), done.has_draws(i))
                pos += len(line)
        os.replace(tmp, path)


def _append(fd: int, path: Path, data: bytes) -> None:
    """Append ``data`` with unbuffered writes (nothing is left to flush, or to fail, at close)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        if e.errno in DISK_ERRNOS:
            raise disk_error(e, path) from e
        raise


def _write_manifest(path: Path, journal: Path, done: _Done) -> None:
    """Write the manifest, sorted by index, by reading each record back from the old manifest or the journal
    (streamed to a temporary: never all records in memory); keep the old file when it has the same bytes."""
    with temporary_for(path) as tmp:
        with open(tmp, "wb") as out, _open_or_none(path) as old, _open_or_none(journal) as jr:
            for i in done.indices():
                file, offset = done.where(i)
                if file == _Done.JOURNAL_FILE:
                    out.write(_read_line(jr, offset))  # written by dumps_line
                else:  # normalised, as the journal's are
                    out.write((dumps_line(json.loads(_read_line(old, offset))) + "\n").encode("utf-8"))
        if path.is_file() and _same_bytes(tmp, path):
            tmp.unlink()
        else:
            os.replace(tmp, path)


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _described(top: str, parts: list[str], done: _Done) -> bool:
    """Whether the numbered file ``top/parts...`` is one that a finished record names."""
    name = parts[-1]
    digits = len(name) - len(name.lstrip("0123456789"))
    i = int(name[:digits])
    if i not in done:
        return False
    label = done.label(i)
    if top == "test":
        return parts[0] == label and name == f"{i:06d}.png"
    if top == "ground_truth":
        return label != GOOD and parts[0] == label and name == f"{i:06d}_mask.png"
    return done.has_draws(i) and name == f"{i:06d}.safetensors"


def _sweep_strays(root: Path, done: _Done) -> None:
    """Remove numbered sample files no record describes (left by an interrupted run of this identity).

    Strings, not Paths, per file (see :func:`_complete`)."""
    for top, depth in (("test", 2), ("ground_truth", 2), ("draws", 1)):
        base = os.path.join(os.fspath(root), top)
        for e in _files(base):
            parts = os.path.relpath(e.path, base).split(os.sep)
            if len(parts) == depth and _NUMBERED.fullmatch(e.name) and not _described(top, parts, done):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path)


def estimate_output_bytes(n: int, size: int, *, n_train: int = 0, ratio: float = PNG_RATIO,
                          block: int = 4096) -> int:
    """Disk bytes a run of ``n`` samples at ``size`` x ``size`` needs at its peak (an upper estimate).

    Per sample: the PNG image (``3 * size**2 * ratio``), a mask (``size**2 * 0.1``; measured
    0.03), its record (2 KiB; measured 0.8-1.2 KiB), a draws side file (1 KiB; measured 0.5),
    counted three times for the journal, the new manifest and the old one at completion; each
    file rounded up to ``block``. Plus ``n_train`` copied normals. Pure arithmetic: O(1), safe for
    any ``n``. ``ratio`` defaults to :data:`PNG_RATIO` (0.7, measured 0.18-0.67 on the toy data).
    """
    if n < 0 or n_train < 0 or size < 1:
        raise ValueError(f"estimate_output_bytes needs n, n_train >= 0 and size >= 1, got {n}, {n_train}, {size}")

    def on_disk(nbytes: float) -> int:
        return -(-int(nbytes) // block) * block if block > 1 else int(nbytes)

    image = on_disk(3 * size * size * ratio)
    per_sample = image + on_disk(size * size * 0.1) + on_disk(1024) + 3 * 2048
    return int(n) * per_sample + int(n_train) * image


def write_generated(generator: Any, source: Dataset, out: str | Path, *, n: int, seed: int = 0, batch_size: int = 16,
                    n_train: int | None = None, progress: bool = True, conditions: ConditionSource | None = None,
                    data: str | None = None, replay: Any = None, replay_root: Path | None = None,
                    executor: Executor | None = None, device: str | None = None) -> WriteSummary:
    """Generate ``n`` samples from the normals of ``source`` and write them under ``out/<category>``.

    Re-running the same call resumes (finished samples are skipped; an immediate re-run
    writes nothing). ``conditions`` gives per-sample target masks, boxes or a prompt;
    ``data`` is the ``--data`` spec recorded for ``--replay``; ``replay`` (index -> the
    manifest record of an earlier run under ``replay_root``, read in index order) regenerates
    from recorded draws. ``executor`` (:mod:`anoplug.driver`: in this process by default,
    :class:`~anoplug.driver.LocalProcesses`, :class:`~anoplug.driver.DaskExecutor`) decides
    where samples are made — never their bytes; ``device`` where the generator runs.
    Raises :class:`DataError` — before writing anything — when another run holds the
    directory, when the directory holds another run, or when it lies in the source's folder.
    """
    t0 = time.perf_counter()
    if n < 1:
        raise DataError(f"n must be at least 1, got {n}")
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if seed < 0:
        raise DataError(f"seed must be non-negative, got {seed}")
    if len(source) < 1:
        raise DataError(f"source dataset {source!r} is empty")
    if n_train is not None and n_train < 0:
        raise DataError(f"n_train must be non-negative, got {n_train}")
    n_train = min(len(source), 64 if n_train is None else int(n_train))  # never more normals than the source has
    check_used(generator, conditions)  # refuse before anything is written
    root = Path(out) / _safe_label(source.category or "dataset")
    identity = {"method": generator.name, "method_version": generator.version,
                "params": generator.params.model_dump(mode="json"), "seed": int(seed), "dataset": _dataset_id(source),
                "conditions": conditions.identity() if conditions else None}
    identity = json.loads(json.dumps(identity))  # normalise (tuples -> lists) to compare with what was read back
    _refuse_output_in_inputs(root, source, conditions)
    executor = executor or InProcess()
    plan = Plan(generator, source, seed=seed, conditions=conditions or None, device=device, encode=True)
    # local worker processes fork here, before the lock is taken: no worker ever holds the output's lock
    with executor.session(plan) as session:
        fresh, made_out = not root.exists(), not Path(out).exists()
        make_dir(root)
        emptied = False
        try:
            with OutputLock(root, identity, data=data):  # a refused run raises here and touches nothing
                try:
                    summary = _write_locked(session, source, root, identity, n=n, batch_size=batch_size,
                                            n_train=n_train, progress=progress, data=data, replay=replay,
                                            replay_root=replay_root, name=generator.name)
                    summary.seconds, summary.executor = time.perf_counter() - t0, executor.describe()
                    return summary
                except BaseException:
                    if fresh and not any((root / "test").rglob("*.png")):  # failed before its first sample
                        for entry in root.iterdir():  # everything but the lock we hold: leave no trace
                            if entry.name == LOCK:
                                continue
                            if entry.is_dir() and not entry.is_symlink():
                                shutil.rmtree(entry, ignore_errors=True)
                            else:
                                entry.unlink(missing_ok=True)
                        emptied = True
                    raise
        finally:
            if emptied:  # the lock is released now; the folders go unless another run has started in them
                with contextlib.suppress(OSError):
                    root.rmdir()
                    if made_out:
                        Path(out).rmdir()


def _write_locked(session: Any, source: Dataset, root: Path, identity: dict, *, n: int, batch_size: int, n_train: int,
                  progress: bool, data: str | None, replay: Any, replay_root: Path | None, name: str) -> WriteSummary:
    """The body of :func:`write_generated`, run while holding the directory's lock."""
    manifest_path, journal_path = root / MANIFEST, root / JOURNAL
    done = _Done()
    finished = _scan_manifest(manifest_path, root, identity, done)  # refuses another run's records
    journal_clean = _scan_journal(journal_path, root, identity, done, samples=finished > 0)
    _clean_temporaries(root)
    # the journal names the run from its first line on, so even a run that fails before its first sample
    # (its train copies written, say) keeps another run out of the directory
    train_todo = _train_todo(source, root, n_train)  # refuses copies of another size before writing anything
    _start_journal(journal_path, dict(identity, journal=1, data=data), done, journal_clean)

    def copy_train() -> None:  # before the first sample is written; worker processes generate meanwhile
        _copy_train(source, root, train_todo, batch_size)

    skipped = done.below(n)
    written = 0
    try:
        journal = os.open(journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        end = os.fstat(journal).st_size  # where the next journal line starts (we are its only writer)
    except OSError as e:
        if e.errno in DISK_ERRNOS:
            raise disk_error(e, journal_path) from e
        raise

    def drawn(idx: list[int]) -> list:
        recs = [replay[i] for i in idx]
        return [Samples.unpack([r["sample"]], _read_draws(replay_root, r))[0] for r in recs]

    bar = None
    try:
        if progress and skipped < n:
            from tqdm.auto import tqdm

            workers = getattr(session, "workers", 1)
            bar = tqdm(total=n, initial=skipped, desc=f"{name} -> {root}" + (f" ({workers} workers)" if workers > 1 else ""),
                       unit="img", smoothing=0.05, dynamic_ncols=True)
        todo = shards(_pending(n, done), batch_size, drawn if replay is not None else None)
        top = os.fspath(root)
        for res in session.map(todo, meanwhile=copy_train):
            lines = []
            for enc in res.encoded:
                rec = dict(identity, **enc.fields, data=data, n_train=n_train)
                for rel, blob in enc.files:
                    atomic_write(os.path.join(top, rel), blob)
                lines.append((dumps_line(rec) + "\n").encode("utf-8"))
            _append(journal, journal_path, b"".join(lines))  # a kill tears at most the last line
            for enc, line in zip(res.encoded, lines):
                done.add(enc.index, _Done.JOURNAL_FILE, end, enc.fields["label"], bool(enc.fields["draws"]))
                end += len(line)
            written += len(res.indices)
            if bar is not None:
                bar.update(len(res.indices))
    finally:
        os.close(journal)
        if bar is not None:
            bar.close()

    _write_manifest(manifest_path, journal_path, done)
    _sweep_strays(root, done)
    journal_path.unlink(missing_ok=True)
    return WriteSummary(root=root, written=written, skipped=skipped, manifest=manifest_path, labels=done.label_counts())


class _ManifestRecords:
    """The records of a finished manifest (line *k* is sample *k*), read forward as a run asks for them.

    ``records[i]`` for increasing ``i`` streams the file once: O(1) memory at any length.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._it: Iterator[dict] | None = None
        self._last: dict | None = None

    def __getitem__(self, i: int) -> dict:
        if self._last is not None and int(self._last["index"]) == i:
            return self._last
        if self._it is None or self._last is None or int(self._last["index"]) > i:
            self._it = _read_records(self.path)
        for rec in self._it:
            self._last = rec
            if int(rec["index"]) == i:
                return rec
        raise DataError(f"--replay {self.path}: no record of sample {i}")


def replay_manifest(manifest: str | Path, out: str | Path, *, load: str | Path | None = None, batch_size: int = 16,
                    progress: bool = True, executor: Executor | None = None) -> WriteSummary:
    """Regenerate the dataset a manifest describes from its recorded draws, byte for byte, under ``out``.

    Procedural methods need nothing else; a learned method needs its fitted weights (``load``).
    The manifest is streamed (checked once, then read forward as samples are made).
    """
    from anoplug.data import open_dataset
    from anoplug.registry import get_registry

    path = Path(manifest)
    if not path.is_file():
        raise DataError(f"--replay {path}: manifest not found")
    first, count = None, 0
    for rec in _read_records(path):
        if first is None:
            first = rec
            missing = [k for k in ("method", "params", "seed", "dataset", "data", "sample", "index") if k not in first]
            if missing:
                raise DataError(f"--replay {path}: records lack {', '.join(missing)} (written by an older anoplug?)")
        if rec.get("index") != count:
            raise DataError(f"--replay {path}: sample indices are not 0, 1, 2, ... in order (record {count} has index "
                            f"{rec.get('index')!r}; an unfinished run?)")
        count += 1
    if first is None:
        raise DataError(f"--replay {path}: the manifest is empty")
    if not first["data"]:
        raise DataError(f"--replay {path}: the run did not record its --data source")
    cls = get_registry().generator_class(first["method"])
    if cls.requires.fit and not load and not cls.pretrained:
        raise DataError(f"--replay {path}: {first['method']} is a learned method; pass --load DIR with its weights")
    if load:
        gen = cls.load(load)
    else:  # a learned method without --load replays from its shipped default (the parameters are checked next)
        gen = cls.from_pretrained() if cls.requires.fit else cls(**first["params"])
    if gen.params.model_dump(mode="json") != first["params"]:
        raise DataError(f"--replay {path}: the parameters saved in {load} differ from the manifest's")
    if gen.version != first["method_version"]:
        raise DataError(f"--replay {path}: written by {first['method']} {first['method_version']}, "
                        f"installed is {gen.version}")
    size = int(str(first["dataset"]).rsplit("@", 1)[1])
    source = open_dataset(first["data"], split="train", size=size)
    cond = first.get("conditions") or {}
    conditions = ConditionSource(masks=(cond.get("masks") or {}).get("dir"), boxes=(cond.get("boxes") or {}).get("file"),
                                 prompt=cond.get("prompt"), defect_type=cond.get("defect_type"),
                                 references=(cond.get("references") or {}).get("dir"),
                                 depth=(cond.get("depth") or {}).get("dir")) if cond else None
    return write_generated(gen, source, out, n=count, seed=int(first["seed"]), batch_size=batch_size,
                           n_train=first.get("n_train"), progress=progress, conditions=conditions, data=first["data"],
                           replay=_ManifestRecords(path), replay_root=path.parent, executor=executor)
