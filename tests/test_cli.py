"""The ``anoplug`` CLI: listings, user errors (exit 2, one line), and the broken-plugin row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anoplug.cli import main
from tests.fakeplugins import make_dist


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plugins_and_list(capsys):
    code, out, _ = run(capsys, "plugins", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["draem"]["status"] == "ok" and rows["draem"]["provides"]["generators"] == ["draem"]
    code, out, _ = run(capsys, "list", "--category", "cutpaste")
    assert code == 0 and "draem" in out


def test_info_shows_paper_params_and_ranges(capsys):
    code, out, _ = run(capsys, "info", "draem")
    assert code == 0
    assert "ICCV 2021" in out and "probability" in out and "[0.0, 1.0]" in out and "requires:  nothing" in out


@pytest.mark.parametrize("argv, needle", [
    (["info", "nope"], "unknown generator 'nope'"),
    (["generate", "nope", "--data", "toy:metal", "--out", "x"], "unknown generator 'nope'"),
    (["generate", "draem", "--data", "toy:metal", "--out", "x", "-p", "probability=3"], "invalid parameter 'probability'"),
    (["generate", "draem", "--data", "toy:metal", "--out", "x", "-p", "nosuch=1"], "unknown parameter 'nosuch'"),
    (["generate", "draem", "--data", "toy:metal", "--out", "x", "-p", "probability"], "NAME=VALUE"),
    (["generate", "draem", "--data", "nowhere:metal", "--out", "x"], "unknown data source 'nowhere:metal'"),
    (["generate", "draem", "--data", "toy:metal", "--out", "x", "-n", "0"], "-n must be at least 1"),
    (["list", "--category", "magic"], "unknown category or tag 'magic'"),
])
def test_user_errors_exit_2_with_one_line(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(LookupError):
        main(["--debug", "info", "nope"])


def test_generate_draem_writes_tree(tmp_path, capsys):
    code, out, _ = run(capsys, "generate", "draem", "--data", "toy:metal", "-n", "6", "--size", "64",
                       "--out", str(tmp_path), "-p", "probability=1", "-q")
    assert code == 0, out
    root = tmp_path / "metal"
    lines = (root / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 6
    rec = json.loads(lines[0])
    assert rec["method"] == "draem" and rec["params"]["probability"] == 1.0
    images = sorted(p for p in (root / "test").rglob("*.png"))
    assert len(images) == 6
    code, out, _ = run(capsys, "generate", "draem", "--data", "toy:metal", "-n", "6", "--size", "64",
                       "--out", str(tmp_path), "-p", "probability=1", "-q")
    assert code == 0 and "wrote 0 new samples" in out


def test_broken_plugin_shows_as_error_row_and_the_rest_works(tmp_path):
    make_dist(tmp_path, "anoplug-fake-broken", "anoplug_fake_broken", "raise ImportError('missing dependency xyz')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("ANOPLUG_STRICT_PLUGINS", None)
    exe = Path(sys.executable).with_name("anoplug")
    r = subprocess.run([str(exe), "plugins"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0
    row = next(line for line in r.stdout.splitlines() if line.startswith("anoplug_fake_broken"))
    assert "ERROR" in row and "missing dependency xyz" in row
    assert any(line.startswith("draem") and line.rstrip().endswith("ok") for line in r.stdout.splitlines())
    r = subprocess.run([str(exe), "list"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "draem" in r.stdout


def test_datasets_lists_schemes_and_toy_categories(capsys):
    code, out, _ = run(capsys, "datasets")
    assert code == 0
    for word in ("toy", "mvtec", "visa", "folder", "fabric", "surface3d", "tray", "dent", "missing"):
        assert word in out, word
