"""Write generated anomalies as an MVTec-AD tree that anomalib reads unchanged.

Layout under ``<out>/<category>/``::

    train/good/NNNNNN.png                  normals copied from the source
    test/<label>/NNNNNN.png                generated samples (label "good" -> test/good)
    ground_truth/<label>/NNNNNN_mask.png   0/255 masks of the anomalous ones
    manifest.jsonl                         one line per sample, sorted by index
    draws/NNNNNN.safetensors               a sample's big draws (tensors over 64 values), if any

Sample *i* uses source image ``i % len(source)`` and seed ``sample_seed(seed, i)`` alone,
so the output does not depend on the batch size or on how often the run was interrupted.
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
- **Bounded.** Sample indices are streamed batch by batch; apart from the records already
  written, memory is O(batch). :func:`estimate_output_bytes` sizes a run for a disk check.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anoplug.data.base import DataError, Dataset
from anoplug.data.files import DISK_ERRNOS, TMP, atomic_write, disk_error, dumps_line, make_dir, temporary_for
from anoplug.data.inputs import ConditionSource, sample_inputs, source_indices
from anoplug.data.outlock import LOCK, OutputLock
from anoplug.generator import Samples
from anoplug.seeding import sample_seed
from anoplug.serial import pack
from anoplug.types import GOOD, Batch, to_uint8

__all__ = ["WriteSummary", "write_generated", "replay_manifest", "estimate_output_bytes", "MANIFEST", "JOURNAL",
           "LOCK", "PNG_RATIO"]

MANIFEST = "manifest.jsonl"
JOURNAL = ".manifest.journal.jsonl"  # finished samples of an unfinished run, appended as they complete
_IDENTITY = ("method", "method_version", "params", "seed", "dataset", "conditions")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
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


def _safe_label(label: str) -> str:
    """Labels become directory names: keep letters, digits, ``_ . -`` and nothing that escapes."""
    s = _SAFE.sub("_", str(label)).strip("._") or "anomaly"
    return s


def _png_bytes(arr: np.ndarray) -> bytes:
    """Lossless PNG; zlib level 3 encodes ~2.5x faster than PIL's default 6 for ~15 % more bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _read_jsonl(path: Path, *, tolerate_torn_tail: bool) -> list[dict]:
    """Records of a JSON-lines file; a journal's torn last line (a killed write) is dropped."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and k == len(lines) - 1:
                break
            raise DataError(f"{path} line {k + 1} is not valid JSON ({e}); remove the file or choose another --out") from e
    return out


def _read_journal(path: Path) -> tuple[list[dict], bool]:
    """The journal's readable records (header first, if any) and whether the file is clean.

    The journal only says which samples are done, and each sample's bytes depend on its index
    alone, so a line that cannot be read (torn by a kill, or glued to the next by an older
    writer) is dropped: that sample is simply made again. Clean means: a header line first,
    every line readable, the last one ended — a journal that is not clean is rewritten before
    anything is appended to it.
    """
    if not path.is_file():
        return [], False
    out: list[dict] = []
    clean = True
    with open(path, "rb") as f:
        for raw in f:
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
            out.append(rec)
    if not out or "index" in out[0]:
        clean = False  # no header (empty, or written by an older anoplug)
    return out, clean


def _dataset_id(source: Dataset) -> str:
    return f"{source.scheme or type(source).__name__}:{source.category}@{source.size}"


def _check_same_run(root: Path, records: Iterable[dict], identity: dict) -> None:
    records = list(records)
    for rec in records:
        theirs = {k: rec.get(k) for k in _IDENTITY}
        if theirs != identity:
            diff = [k for k in _IDENTITY if theirs[k] != identity[k]]
            what = ("samples of a different run" if any("index" in r for r in records)
                    else "the start of a different run (its copied normals, no samples yet)")
            raise DataError(
                f"{root} already holds {what} ({', '.join(diff)} differ: "
                f"{ {k: theirs[k] for k in diff} } there vs { {k: identity[k] for k in diff} } now); "
                "refusing to mix them — choose another output directory")


def _file_ok(path: Path) -> bool:
    """A finished file: present and not empty (a crash can leave a renamed file with no data)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size > 0 and stat.S_ISREG(st.st_mode)


def _complete(root: Path, rec: dict) -> bool:
    return all(_file_ok(root / rec[k]) for k in ("image", "mask", "draws") if rec.get(k))


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


def _draws_bytes(store: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in sorted(store.items())})


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


def _caption(out: Batch, src: Batch, k: int, label: str, method: str) -> str:
    """The generator's caption if it wrote one; the source's for a normal; else a plain one."""
    if out.text is not None and (src.text is None or out.text[k] != src.text[k] or label == GOOD):
        return out.text[k]
    if label == GOOD and src.text is not None:
        return src.text[k]
    kind = "" if label == _safe_label(method) else f"{label.replace('_', ' ')} "
    return f"a synthetic {kind}anomaly made by {method}"


def _clean_temporaries(root: Path) -> None:
    if root.is_dir():
        for p in root.rglob(f"*{TMP}"):
            p.unlink(missing_ok=True)


def _pending(n: int, done: dict[int, dict], batch_size: int) -> Iterator[list[int]]:
    """The indices ``0..n-1`` not yet done, ``batch_size`` at a time, never all of them at once."""
    chunk: list[int] = []
    for i in range(n):
        if i in done:
            continue
        chunk.append(i)
        if len(chunk) == batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _start_journal(path: Path, header: dict, kept: list[dict], clean: bool) -> None:
    """Make the journal a clean file to append to: the run's header line, then the records kept."""
    if clean:
        return
    text = "".join(dumps_line(r) + "\n" for r in [header, *kept])
    atomic_write(path, text.encode("utf-8"))


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


def _write_manifest(path: Path, records: dict[int, dict]) -> None:
    """Write the manifest line by line to a temporary, keep the old file when it has the same bytes."""
    with temporary_for(path) as tmp:
        with open(tmp, "wb") as f:
            for i in sorted(records):
                f.write((dumps_line(records[i]) + "\n").encode("utf-8"))
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


def _sweep_strays(root: Path, records: dict[int, dict]) -> None:
    """Remove numbered sample files no record describes (left by an interrupted run of this identity)."""
    keep = {rec[k] for rec in records.values() for k in ("image", "mask", "draws") if rec.get(k)}
    for top, pattern in (("test", "*/*"), ("ground_truth", "*/*"), ("draws", "*")):
        d = root / top
        if not d.is_dir():
            continue
        for p in d.glob(pattern):
            if _NUMBERED.fullmatch(p.name) and p.relative_to(root).as_posix() not in keep and p.is_file():
                p.unlink(missing_ok=True)


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
                    data: str | None = None, replay: dict[int, dict] | None = None,
                    replay_root: Path | None = None) -> WriteSummary:
    """Generate ``n`` samples from the normals of ``source`` and write them under ``out/<category>``.

    Re-running the same call resumes (finished samples are skipped; an immediate re-run
    writes nothing). ``conditions`` gives per-sample target masks, boxes or a prompt;
    ``data`` is the ``--data`` spec recorded for ``--replay``; ``replay`` (index -> the
    manifest record of an earlier run under ``replay_root``) regenerates from recorded draws.
    Raises :class:`DataError` — before writing anything — when another run holds the
    directory, when the directory holds another run, or when it lies in the source's folder.
    """
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
    unused = [c for c in (conditions.names() if conditions else ()) if c not in generator.requires.uses]
    if unused:  # refuse before anything is written
        raise DataError(f"{generator.name} does not use conditions.{unused[0]} "
                        f"(it uses: {', '.join(generator.requires.uses) or 'none'})")
    root = Path(out) / _safe_label(source.category or "dataset")
    identity = {"method": generator.name, "method_version": generator.version,
                "params": generator.params.model_dump(mode="json"), "seed": int(seed), "dataset": _dataset_id(source),
                "conditions": conditions.identity() if conditions else None}
    identity = json.loads(json.dumps(identity))  # normalise (tuples -> lists) to compare with what was read back
    _refuse_output_in_inputs(root, source, conditions)
    fresh, made_out = not root.exists(), not Path(out).exists()
    make_dir(root)
    emptied = False
    try:
        with OutputLock(root, identity, data=data):  # a refused run raises here and touches nothing
            try:
                return _write_locked(generator, source, root, identity, n=n, seed=seed, batch_size=batch_size,
                                     n_train=n_train, progress=progress, conditions=conditions, data=data,
                                     replay=replay, replay_root=replay_root)
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


def _write_locked(generator: Any, source: Dataset, root: Path, identity: dict, *, n: int, seed: int, batch_size: int,
                  n_train: int, progress: bool, conditions: ConditionSource | None, data: str | None,
                  replay: dict[int, dict] | None, replay_root: Path | None) -> WriteSummary:
    """The body of :func:`write_generated`, run while holding the directory's lock."""
    manifest_path, journal_path = root / MANIFEST, root / JOURNAL
    finished = _read_jsonl(manifest_path, tolerate_torn_tail=False)
    journalled, journal_clean = _read_journal(journal_path)
    _check_same_run(root, finished + journalled, identity)
    _clean_temporaries(root)
    records: dict[int, dict] = {}
    for rec in finished:
        if _complete(root, rec):
            records[int(rec["index"])] = rec
    kept = []
    for rec in journalled:
        if "index" in rec and _complete(root, rec):
            records[int(rec["index"])] = rec
            kept.append(rec)
    del finished, journalled
    # the journal names the run from its first line on, so even a run that fails before its first sample
    # (its train copies written, say) keeps another run out of the directory
    train_todo = _train_todo(source, root, n_train)  # refuses copies of another size before writing anything
    _start_journal(journal_path, dict(identity, journal=1, data=data), kept, journal_clean)
    del kept
    _copy_train(source, root, train_todo, batch_size)

    skipped = sum(1 for i in records if i < n)
    written = 0
    try:
        journal = os.open(journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno in DISK_ERRNOS:
            raise disk_error(e, journal_path) from e
        raise
    bar = None
    try:
        if progress and skipped < n:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, initial=skipped, desc=f"{generator.name} -> {root}", unit="img")
        for idx in _pending(n, records, batch_size):
            src_idx = source_indices(idx, len(source))
            src = sample_inputs(generator, source, idx, conditions)
            seeds = [sample_seed(seed, i) for i in idx]
            drawn = None
            if replay is not None:
                drawn = [Samples.unpack([replay[i]["sample"]], _read_draws(replay_root, replay[i]))[0] for i in idx]
            gen_out = generator.generate(src, seeds=seeds, samples=drawn)
            if len(gen_out) != len(idx):
                raise RuntimeError(f"{generator.name} returned {len(gen_out)} images for {len(idx)} inputs")
            images, masks = to_uint8(gen_out.image), to_uint8(gen_out.mask)[..., 0]
            lines = []
            for k, i in enumerate(idx):
                label = _safe_label(gen_out.label[k])
                store: dict = {}
                packed = pack(gen_out.meta[k].get("sample"), store, prefix="sample")
                rec = dict(identity, index=i, label=label, image=f"test/{label}/{i:06d}.png", mask=None,
                           sample_seed=seeds[k], source_index=src_idx[k], data=data, n_train=n_train,
                           source=str(src.meta[k].get("source", f"{_dataset_id(source)}/{src_idx[k]}")),
                           caption=_caption(gen_out, src, k, label, generator.name), sample=packed,
                           draws=f"draws/{i:06d}.safetensors" if store else None,
                           sample_conditions=conditions.for_sample(i) if conditions else None)
                if store:
                    atomic_write(root / rec["draws"], _draws_bytes(store))
                atomic_write(root / rec["image"], _png_bytes(images[k]))
                if label != GOOD:
                    rec["mask"] = f"ground_truth/{label}/{i:06d}_mask.png"
                    atomic_write(root / rec["mask"], _png_bytes(np.where(masks[k] >= 128, 255, 0).astype(np.uint8)))
                records[i] = rec
                lines.append(dumps_line(rec) + "\n")
            _append(journal, journal_path, "".join(lines).encode("utf-8"))  # a kill tears at most the last line
            written += len(idx)
            if bar is not None:
                bar.update(len(idx))
    finally:
        os.close(journal)
        if bar is not None:
            bar.close()

    _write_manifest(manifest_path, records)
    _sweep_strays(root, records)
    journal_path.unlink(missing_ok=True)
    labels = dict(sorted(Counter(r["label"] for r in records.values()).items()))
    return WriteSummary(root=root, written=written, skipped=skipped, manifest=manifest_path, labels=labels)


def replay_manifest(manifest: str | Path, out: str | Path, *, load: str | Path | None = None, batch_size: int = 16,
                    progress: bool = True) -> WriteSummary:
    """Regenerate the dataset a manifest describes from its recorded draws, byte for byte, under ``out``.

    Procedural methods need nothing else; a learned method needs its fitted weights (``load``).
    """
    from anoplug.data import open_dataset
    from anoplug.registry import get_registry

    path = Path(manifest)
    if not path.is_file():
        raise DataError(f"--replay {path}: manifest not found")
    records = _read_jsonl(path, tolerate_torn_tail=False)
    if not records:
        raise DataError(f"--replay {path}: the manifest is empty")
    first = records[0]
    missing = [k for k in ("method", "params", "seed", "dataset", "data", "sample", "index") if k not in first]
    if missing:
        raise DataError(f"--replay {path}: records lack {', '.join(missing)} (written by an older anoplug?)")
    if not first["data"]:
        raise DataError(f"--replay {path}: the run did not record its --data source")
    by_index = {int(r["index"]): r for r in records}
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(f"--replay {path}: sample indices are not 0..{len(by_index) - 1} (an unfinished run?)")
    cls = get_registry().generator_class(first["method"])
    if cls.requires.fit and not load:
        raise DataError(f"--replay {path}: {first['method']} is a learned method; pass --load DIR with its weights")
    gen = cls.load(load) if load else cls(**first["params"])
    if gen.params.model_dump(mode="json") != first["params"]:
        raise DataError(f"--replay {path}: the parameters saved in {load} differ from the manifest's")
    if gen.version != first["method_version"]:
        raise DataError(f"--replay {path}: written by {first['method']} {first['method_version']}, "
                        f"installed is {gen.version}")
    size = int(str(first["dataset"]).rsplit("@", 1)[1])
    source = open_dataset(first["data"], split="train", size=size)
    cond = first.get("conditions") or {}
    conditions = ConditionSource(masks=(cond.get("masks") or {}).get("dir"), boxes=(cond.get("boxes") or {}).get("file"),
                                 prompt=cond.get("prompt")) if cond else None
    return write_generated(gen, source, out, n=len(by_index), seed=int(first["seed"]), batch_size=batch_size,
                           n_train=first.get("n_train"), progress=progress, conditions=conditions, data=first["data"],
                           replay=by_index, replay_root=path.parent)
