"""The CLI under hostile or careless use (issue 13): --fit with real defects, bounds, exit codes.

Every failure that is the user's (bad flags, a run too big for the machine, a full or
read-only disk, a refused file, a duplicate plugin) exits 2 with one line naming the cause;
an internal failure exits 1 with the exception's type and a non-empty message.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import py_compile
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import anoplug.cli as cli
from anoplug.cli import main
from anoplug.generator import Generator
from tests.fakeplugins import TOY_GENERATOR, make_dist

BBOX = ["-p", "model=tiny", "-p", "sample_steps=8", "-p", "batch_size=4"]  # the plugin tests' fast config


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- item 7: --fit --anomalies SPEC, --save DIR, --replay --load DIR ---------------------------------------------
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    pytest.importorskip("diffusers")
    pytest.importorskip("anoplug_bboxdiffusion")
    tmp = tmp_path_factory.mktemp("fit")
    code = main(["generate", "bboxdiffusion", "--data", "toy:metal", "--fit", "--anomalies", "toy:metal",
                 "--fit-steps", "2", "--size", "32", "-n", "4", *BBOX, "--save", str(tmp / "w"),
                 "--out", str(tmp / "a"), "-q"])
    assert code == 0
    return tmp


def test_fit_on_real_defects_save_and_replay_with_load_byte_identical(fitted, tmp_path, capsys):
    w, a = fitted / "w", fitted / "a"
    assert (w / "config.json").is_file() and (w / "weights.safetensors").is_file()
    cfg = json.loads((w / "config.json").read_text())
    assert cfg["fitted"] and cfg["classes"][1:]  # trained on the toy's real defect types
    manifest = a / "metal" / "manifest.jsonl"
    assert len(manifest.read_text().splitlines()) == 4
    code, out, err = run(capsys, "generate", "--replay", manifest, "--load", w, "--out", tmp_path / "r", "-q")
    assert code == 0, err
    assert files(tmp_path / "r") == files(a), "replay with the saved weights differs from the fitted run"
    code, out, err = run(capsys, "generate", "bboxdiffusion", "--data", "toy:metal", "--size", "32", "-n", "4",
                         "--load", w, "--out", tmp_path / "l", "-q")
    assert code == 0, err
    assert files(tmp_path / "l") == files(a), "generating with --load differs from the fitted run"


@pytest.mark.parametrize("extra, needle", [
    ([], "--fit --anomalies SPEC"),  # unfitted: the message says exactly what works
    (["--fit"], "--fit --anomalies SPEC"),  # --fit alone cannot train a method that needs real defects
    (["--anomalies", "toy:metal"], "--anomalies is what --fit trains on"),
    (["--save", "W"], "--save writes the weights --fit trains"),
    (["--fit-steps", "2"], "--fit-steps sets the steps of --fit"),
    (["--fit", "--anomalies", "toy:metal", "--load", "W"], "--fit trains a new model and --load reads"),
    (["--fit", "--anomalies", "toy:nosuch"], "toy"),
])
def test_fit_flags_that_cannot_work_exit_2_before_anything_is_written(tmp_path, capsys, extra, needle):
    pytest.importorskip("anoplug_bboxdiffusion")
    out = tmp_path / "out"
    code, _, err = run(capsys, "generate", "bboxdiffusion", "--data", "toy:metal", "--size", "32", "-n", "2",
                       "--out", out, *[str(tmp_path / e) if e == "W" else e for e in extra])
    assert code == 2 and needle in one_line(err)
    assert not out.exists()


@pytest.mark.parametrize("extra, needle", [
    (["--fit"], "draem is not a learned method"),
    (["--anomalies", "toy:metal"], "--anomalies is what --fit trains on"),
    (["--fit", "--anomalies", "toy:metal"], "draem is not a learned method"),
])
def test_fit_flags_on_a_procedural_method_exit_2(tmp_path, capsys, extra, needle):
    code, _, err = run(capsys, "generate", "draem", "--data", "toy:metal", "--size", "32", "-n", "2",
                       "--out", tmp_path / "out", *extra)
    assert code == 2 and needle in one_line(err)
    assert not (tmp_path / "out").exists()


def test_anomalies_for_a_learned_method_that_takes_none_is_refused(tmp_path, capsys, monkeypatch):
    from anoplug.generator import Requires

    pytest.importorskip("anoplug_bboxdiffusion")
    from anoplug_bboxdiffusion.bboxdiffusion import BBoxDiffusion

    monkeypatch.setattr(BBoxDiffusion, "requires", Requires(fit=True, anomalies=False, accepts=("boxes",)))
    code, _, err = run(capsys, "generate", "bboxdiffusion", "--data", "toy:metal", "--out", tmp_path / "o",
                       "--fit", "--anomalies", "toy:metal")
    assert code == 2 and "bboxdiffusion takes no reference anomalies" in one_line(err)


def test_anomalies_without_defects_or_masks_are_refused(tmp_path, capsys, monkeypatch):
    pytest.importorskip("anoplug_bboxdiffusion")
    import anoplug.data.toy as toy

    monkeypatch.setattr(toy.ToyDataset, "label", lambda self, i: "good")
    code, _, err = run(capsys, "generate", "bboxdiffusion", "--data", "toy:metal", "--size", "32", "--out",
                       tmp_path / "o", "--fit", "--anomalies", "toy:metal", *BBOX)
    assert code == 2 and "--anomalies toy:metal: its test split holds no defective images" in one_line(err)
    assert not (tmp_path / "o").exists()


# -- item 8: bounds on -n, --batch-size, --size ------------------------------------------------------------------
def _writer_must_not_run(monkeypatch):
    """A run refused up front never reaches the writer (nor an hour of generating, nor the OOM killer)."""
    import anoplug.data.writer as writer

    def refuse(*a, **k):
        raise AssertionError("the run was not refused up front")

    monkeypatch.setattr(writer, "write_generated", refuse)


def test_a_trillion_samples_is_refused_up_front_with_the_estimate(tmp_path, capsys, monkeypatch):
    _writer_must_not_run(monkeypatch)
    out = tmp_path / "out"
    code, _, err = run(capsys, "generate", "draem", "--data", "toy:metal", "-n", 10**12, "--out", out, "-q")
    line = one_line(err)
    assert code == 2 and "-n 1000000000000" in line and "needs about" in line and "free" in line
    assert not out.exists()


def test_a_batch_too_big_for_memory_is_refused_with_the_estimate(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "available_memory", lambda: 2 * 10**9)
    _writer_must_not_run(monkeypatch)
    code, _, err = run(capsys, "generate", "draem", "--data", "toy:metal", "--batch-size", 4096, "--size", 1024,
                       "--out", tmp_path / "out", "-q")
    line = one_line(err)
    assert code == 2 and "of memory" in line and "batch of 4096 at --size 1024" in line and "2.0 GB" in line
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv(cli.NO_RESOURCE_CHECK, "1")  # the opt-out: the estimate is not checked
    cli.check_resources(n=1, size=1024, batch_size=4096, out=tmp_path)


def test_disk_estimate_counts_what_a_resumed_run_still_needs(tmp_path, capsys, monkeypatch):
    argv = ["generate", "draem", "--data", "toy:metal", "-n", 6, "--size", 32, "--n-train", 2, "--out", tmp_path, "-q"]
    assert run(capsys, *argv)[0] == 0
    from anoplug.data.writer import estimate_output_bytes

    full = estimate_output_bytes(6, 32, n_train=2)
    monkeypatch.setattr(cli, "free_disk", lambda p: (full // 2, Path(p)))
    code, out, err = run(capsys, *argv)  # everything is present: no room needed
    assert code == 0 and "wrote 0 new samples" in out, err
    _writer_must_not_run(monkeypatch)
    code, _, err = run(capsys, "generate", "draem", "--data", "toy:metal", "-n", 6, "--size", 32, "--n-train", 2,
                       "--out", tmp_path / "other", "-q")  # a new run needs room for all of it
    assert code == 2 and "of disk" in one_line(err) and "choose another --out" in err
    assert not (tmp_path / "other").exists()


def test_internal_memory_error_exits_2_with_a_cause_not_an_empty_message(tmp_path, capsys, monkeypatch):
    import anoplug.data.writer as writer

    def boom(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(writer, "write_generated", boom)
    code, _, err = run(capsys, "generate", "draem", "--data", "toy:metal", "-n", 2, "--size", 32,
                       "--out", tmp_path, "-q")
    line = one_line(err)
    assert code == 2 and "out of memory" in line and "MemoryError" in line and "--batch-size" in line


# -- runner-up (a): weights that do not fit are refused when loading, naming the file and key ------------------------
class _Tiny(Generator):
    """A learned-looking generator with one module and lazily known extra state."""

    name = "tiny-weights"

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.net = torch.nn.Linear(3, 2)
        self.vec: torch.Tensor | None = None

    def modules(self):
        return {"net": self.net}

    def extra_state(self):
        return {} if self.vec is None else {"vec": self.vec}

    def load_extra_state(self, tensors):  # as plugins write it: indexes, then copies into a fixed shape
        self.vec = torch.zeros(4)
        self.vec.copy_(tensors["vec"])


@pytest.fixture
def saved(tmp_path):
    g = _Tiny()
    g.vec = torch.arange(4.0)
    g.save(tmp_path / "g")
    return tmp_path / "g"


def _tamper(d: Path, **changes):
    path = d / "weights.safetensors"
    t = load_file(str(path))
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            t.pop(k)
        else:
            t[k] = v
    save_file(t, str(path))


def test_saved_weights_round_trip(saved):
    again = _Tiny.load(saved)
    assert torch.equal(again.vec, torch.arange(4.0))


@pytest.mark.parametrize("changes, needle", [
    ({"net__weight": torch.ones(2, 3, dtype=torch.int8)}, "net.weight is int8 in the file, a floating tensor"),
    ({"net__bias": torch.ones(2, dtype=torch.bool)}, "net.bias is bool in the file"),
    ({"net__bias": None}, "missing net.bias"),
    ({"net__stray": torch.ones(1)}, "unexpected net.stray"),
    ({"net__weight": torch.ones(3, 3)}, "net.weight has shape [3, 3] in the file, [2, 3] expected"),
    ({"extra__vec": None}, "missing extra.vec"),  # a KeyError inside load_extra_state
    ({"extra__vec": torch.ones(7)}, "extra state"),  # a RuntimeError inside load_extra_state
])
def test_weights_that_do_not_fit_are_one_value_error_naming_file_and_key(saved, changes, needle):
    _tamper(saved, **changes)
    with pytest.raises(ValueError) as info:
        _Tiny.load(saved)
    msg = str(info.value)
    assert needle in msg and str(saved / "weights.safetensors") in msg and "\n" not in msg


def test_known_extra_state_is_checked_before_load_extra_state(saved, monkeypatch):
    calls = []
    monkeypatch.setattr(_Tiny, "extra_state", lambda self: {"vec": torch.zeros(4)})
    monkeypatch.setattr(_Tiny, "load_extra_state", lambda self, t: calls.append(t))
    _tamper(saved, extra__vec=torch.ones(5))
    with pytest.raises(ValueError, match=r"extra\.vec has shape \[5\] in the file, \[4\] expected"):
        _Tiny.load(saved)
    assert not calls


def test_cli_load_of_mismatched_weights_exits_2_before_writing(fitted, tmp_path, capsys):
    import shutil

    w = tmp_path / "w"
    shutil.copytree(fitted / "w", w)
    key = next(k for k, v in load_file(str(w / "weights.safetensors")).items() if v.is_floating_point())
    _tamper(w, **{key.replace(".", "__"): load_file(str(w / "weights.safetensors"))[key].to(torch.int8)})
    out = tmp_path / "out"
    code, _, err = run(capsys, "generate", "bboxdiffusion", "--data", "toy:metal", "--size", "32", "-n", "2",
                       "--load", w, "--out", out, "-q")
    assert code == 2 and key in one_line(err) and "int8" in err
    assert not out.exists()
    code, _, err = run(capsys, "generate", "--replay", fitted / "a" / "metal" / "manifest.jsonl", "--load", w,
                       "--out", out, "-q")
    assert code == 2 and key in one_line(err)
    assert not out.exists()


# -- runner-up (b): a quoted title renders code that compiles and passes its tests --------------------------------------
TITLE = 'My "quoted" \\ method — ü'


def test_quoted_title_renders_valid_python_and_toml(tmp_path, capsys):
    tomllib = pytest.importorskip("tomllib")
    for learned in (False, True):
        name = "q-learned" if learned else "q-plain"
        argv = ["new-plugin", name, "--dir", tmp_path, "--title", TITLE] + (["--learned"] if learned else [])
        assert run(capsys, *argv)[0] == 0
        root = tmp_path / f"anoplug-{name}"
        for py in root.rglob("*.py"):
            py_compile.compile(str(py), doraise=True)
        meta = tomllib.loads((root / "pyproject.toml").read_text())
        assert meta["project"]["description"] == f"{TITLE} for anoplug"
        ns: dict = {}
        exec(compile((root / "src" / f"anoplug_{name.replace('-', '_')}" / "plugin.py").read_text(), "plugin", "exec"), ns)
        assert ns["anoplug_generators"]()[0].title == TITLE
    code, _, err = run(capsys, "new-plugin", "q-bad", "--dir", tmp_path, "--title", "two\nlines")
    assert code == 2 and "one line of printable text" in one_line(err)


def test_quoted_title_plugin_passes_its_tests(tmp_path, capsys):
    # in a subprocess: an in-process pytester run drops torch submodules that later tests cannot re-import
    assert run(capsys, "new-plugin", "q-spots", "--dir", tmp_path, "--title", TITLE)[0] == 0
    root = tmp_path / "anoplug-q-spots"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    passed = re.search(r"(\d+) passed", r.stdout)
    assert passed and int(passed.group(1)) >= 10 and "failed" not in r.stdout, r.stdout[-3000:]
    assert f"title={json.dumps(TITLE, ensure_ascii=False)}" in (root / "src/anoplug_q_spots/plugin.py").read_text()


# -- runner-up (c): the user's environment exits 2 naming the cause; internal errors exit 1, never blank ---------------
def _raise_in_writer(monkeypatch, exc):
    import anoplug.data.writer as writer

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(writer, "write_generated", boom)


def _raise_in_open(monkeypatch, exc):
    import anoplug.data as data

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(data, "open_dataset", boom)


@pytest.mark.parametrize("where, exc, needles", [
    ("writer", OSError(errno.ENOSPC, "No space left on device"), ["no space left", "{out}"]),
    ("writer", OSError(errno.ENOSPC, "No space left on device", "{out}/metal/x.png"), ["no space left", "{out}/metal/x.png"]),
    ("writer", OSError(errno.EROFS, "Read-only file system", "{out}/metal"), ["read-only", "{out}/metal"]),
    ("writer", PermissionError(errno.EACCES, "Permission denied", "{out}/metal"), ["permission denied", "read-only", "{out}"]),
    ("open", "bomb", ["Image size", "decompression"]),
    ("open", pickle.UnpicklingError("refusing to load os.system: only numpy arrays are allowed"), ["refusing to load os.system"]),
])
def test_environment_and_refused_input_exit_2_naming_the_cause(tmp_path, capsys, monkeypatch, where, exc, needles):
    out = str(tmp_path / "out")
    if exc == "bomb":
        from PIL import Image

        exc = Image.DecompressionBombError("Image size (2000000000 pixels) exceeds limit of 178956970 pixels, "
                                           "could be decompression bomb DOS attack.")
    elif isinstance(exc, OSError) and exc.filename:
        exc = type(exc)(exc.errno, exc.strerror, exc.filename.format(out=out))
    (_raise_in_writer if where == "writer" else _raise_in_open)(monkeypatch, exc)
    code, _, err = run(capsys, "generate", "draem", "--data", "toy:metal", "-n", 2, "--size", 32, "--out", out, "-q")
    line = one_line(err)
    assert code == 2 and line.startswith("anoplug: error: ")
    for needle in needles:
        assert needle.format(out=out).lower() in line.lower(), (needle, line)


def test_duplicate_plugin_name_exits_2_naming_both(tmp_path, capsys, monkeypatch):
    from anoplug.registry import Registry, set_registry

    for dist in ("anoplug-fake-dupa", "anoplug-fake-dupb"):
        mod = dist.replace("-", "_")
        make_dist(tmp_path, dist, mod, TOY_GENERATOR.format(name="twin", module=mod))
    monkeypatch.syspath_prepend(str(tmp_path))
    for m in [m for m in sys.modules if m.startswith("anoplug_fake")]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.delenv("ANOPLUG_STRICT_PLUGINS", raising=False)
    old = set_registry(Registry())
    try:
        code, _, err = run(capsys, "generate", "twin", "--data", "toy:metal", "--out", tmp_path / "o")
    finally:
        set_registry(old)
    line = one_line(err)
    assert code == 2 and "twin" in line and "anoplug-fake-dupa and anoplug-fake-dupb" in line


@pytest.mark.parametrize("exc, needle", [
    (RuntimeError(), "RuntimeError (no message)"),
    (KeyError("mask_vectors"), "KeyError: missing key 'mask_vectors'"),
    (AssertionError("multi\nline"), "AssertionError: multi line"),
])
def test_internal_errors_exit_1_with_type_and_a_non_empty_message(tmp_path, capsys, monkeypatch, exc, needle):
    _raise_in_writer(monkeypatch, exc)
    code, _, err = run(capsys, "generate", "draem", "--data", "toy:metal", "-n", 2, "--size", 32,
                       "--out", tmp_path / "o", "-q")
    line = one_line(err)
    assert code == 1 and needle in line and "--debug" in line
