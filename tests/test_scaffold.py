"""The plugin template renders into a plugin that registers and passes the conformance kit."""

from __future__ import annotations

import pytest
import torch  # noqa: F401  (imported before pytester snapshots sys.modules; torch cannot be re-imported)

from anoplug.cli import main
from anoplug.scaffold import new_plugin


def test_rendered_plugin_passes_the_kit(tmp_path, pytester, monkeypatch):
    root = new_plugin("my-spots", tmp_path, title="My spots", category="gan")
    monkeypatch.syspath_prepend(str(root / "src"))
    pytester.syspathinsert(str(root / "src"))
    result = pytester.runpytest_inprocess(str(root / "tests"), "-q", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 10 and not outcomes.get("failed"), outcomes


def test_rendered_learned_plugin_passes_the_learned_kit(tmp_path, pytester, monkeypatch, capsys):
    assert main(["new-plugin", "my-painter", "--dir", str(tmp_path), "--learned", "--title", "My painter"]) == 0
    root = tmp_path / "anoplug-my-painter"
    assert "LearnedGenerator" in (root / "src/anoplug_my_painter/method.py").read_text()
    monkeypatch.syspath_prepend(str(root / "src"))
    pytester.syspathinsert(str(root / "src"))
    result = pytester.runpytest_inprocess(str(root / "tests"), "-q", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    # the learned kit adds fit / resume / save-load checks on top of the generator kit
    assert outcomes.get("passed", 0) >= 18 and not outcomes.get("failed") and not outcomes.get("errors"), outcomes
    names = [r.nodeid for r in result.reprec.getreports("pytest_runtest_logreport") if r.when == "call" and r.passed]
    assert any("test_resume_gives_the_weights_of_an_uninterrupted_run" in n for n in names)
    assert any("test_every_used_condition_is_honoured" in n for n in names)


def test_rendered_plugin_registers(tmp_path, monkeypatch, tmp_plugin, anoplug_pm):
    import importlib

    root = new_plugin("spots-two", tmp_path)
    monkeypatch.syspath_prepend(str(root / "src"))
    tmp_plugin(importlib.import_module("anoplug_spots_two.plugin"), "spots-two")
    assert anoplug_pm.get_generator("spots-two").name == "spots-two"


def test_bad_names_and_existing_dirs(tmp_path, capsys):
    with pytest.raises(ValueError, match="lowercase"):
        new_plugin("Bad Name", tmp_path)
    with pytest.raises(ValueError, match="unknown category"):
        new_plugin("ok", tmp_path, category="nope")
    new_plugin("twice", tmp_path)
    assert main(["new-plugin", "twice", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
