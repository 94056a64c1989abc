"""The copier plugin template renders plugins that register and pass the conformance kit, and updates them.

``anoplug new-plugin`` renders ``anoplug/templates/plugin`` through copier from a local git
mirror of the template (``anoplug.scaffold.template_repo``); these tests point that mirror at a
temporary directory (``ANOPLUG_TEMPLATE_REPO``) so nothing lands in the user's cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import copier
import pytest
import torch  # noqa: F401  (imported before pytester snapshots sys.modules; torch cannot be re-imported)
import yaml

from anoplug.cli import main
from anoplug.scaffold import REPO_ENV, TEMPLATE_DIR, TemplateError, _next_tag, new_plugin, template_repo, update_plugin
from anoplug.specs import CATEGORIES
from tests.test_plugin_metadata import metadata_problems, tomllib


@pytest.fixture(autouse=True)
def _template_repo_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REPO_ENV, str(tmp_path / "template-repo"))


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false",
                           *args], cwd=root, check=True, capture_output=True, text=True).stdout


def _kit(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, root: Path) -> dict[str, int]:
    monkeypatch.syspath_prepend(str(root / "src"))
    pytester.syspathinsert(str(root / "src"))
    return pytester.runpytest_inprocess(str(root / "tests"), "-q", "-p", "no:cacheprovider").parseoutcomes()


def test_update_brings_a_template_change_and_keeps_the_authors_edit(tmp_path, pytester, monkeypatch, capsys):
    """Render (template v0.1.0), run the kit, edit the plugin, change the template, update, run the kit again."""
    template = tmp_path / "template"
    shutil.copytree(TEMPLATE_DIR, template, ignore=shutil.ignore_patterns("__pycache__"))
    root = new_plugin("upd-spots", tmp_path / "work", title="Updated spots", category="gan", template_dir=template)
    assert yaml.safe_load((root / ".copier-answers.yml").read_text())["_commit"] == "v0.1.0"
    first = _kit(pytester, monkeypatch, root)
    assert first.get("passed", 0) >= 10 and not first.get("failed") and not first.get("errors"), first

    method = root / "src" / "anoplug_upd_spots" / "method.py"
    method.write_text(method.read_text().replace("Field(0.2, gt=0.0", "Field(0.3, gt=0.0"))  # the author's edit
    assert main(["new-plugin", "--update", str(root)]) == 2  # not committed yet: copier refuses a dirty tree
    assert "dirty" in capsys.readouterr().err
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "my method")

    # the next template: a README section, a new file, and one more test the kit run must pick up
    readme = template / "template" / "README.md.jinja"
    readme.write_text(readme.read_text() + "\n## Citing\n\nCite the paper of {{ name }}.\n")
    (template / "template" / "CHANGELOG.md.jinja").write_text("# anoplug-{{ name }} changelog\n")
    (template / "template" / "tests" / "test_{{ module }}_entry.py.jinja").write_text(
        'from anoplug_{{ module }}.plugin import anoplug_generators\n\n\n'
        'def test_registers_one_generator():\n    assert [s.name for s in anoplug_generators()] == ["{{ name }}"]\n')
    assert update_plugin(root, template_dir=template) == "v0.1.0.post1"

    assert "## Citing\n\nCite the paper of upd-spots." in (root / "README.md").read_text()
    assert (root / "CHANGELOG.md").read_text() == "# anoplug-upd-spots changelog\n"
    assert "Field(0.3, gt=0.0" in method.read_text()  # kept
    assert yaml.safe_load((root / ".copier-answers.yml").read_text())["_commit"] == "v0.1.0.post1"
    assert not list(root.rglob("*.rej")) and "<<<<<<<" not in (root / "README.md").read_text()
    second = _kit(pytester, monkeypatch, root)
    assert second.get("passed", 0) == first["passed"] + 1 and not second.get("failed"), (first, second)

    # an unchanged template keeps its tag: updating again is a no-op
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "update")
    assert update_plugin(root, template_dir=template) == "v0.1.0.post1"
    assert not _git(root, "status", "--porcelain").strip()


@pytest.mark.slow
def test_out_of_tree_plugin_installs_from_its_path_and_passes_the_learned_kit(tmp_path, capsys):
    """A learned plugin rendered in a temp dir, pip-installed from its path, found through its entry point.

    ``pip install --target DIR`` builds and installs the plugin for real (a wheel's files and a
    ``dist-info`` with ``entry_points.txt``) into a throw-away directory put on ``PYTHONPATH`` of
    subprocesses, so the dev environment is left untouched; the plugin's own ``src/`` is on no path.
    """
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert main(["new-plugin", "oot-painter", "--dir", str(outside), "--learned", "--title", "Out of tree",
                 "--author", "A. Author", "--paper-url", "https://example.org/oot"]) == 0
    root = outside / "anoplug-oot-painter"
    assert "LearnedGenerator" in (root / "src/anoplug_oot_painter/method.py").read_text()
    assert (root / ".git").is_dir() and (root / ".copier-answers.yml").is_file()
    assert not metadata_problems(tomllib.loads((root / "pyproject.toml").read_text()))

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(site), str(root)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # torch-free: the registry reads the entry point, and find_spec locates the module without importing it
    probe = ("import json, importlib.util as u; from anoplug.registry import Registry; r = Registry(); "
             "s = r.spec('generators', 'oot-painter'); "
             "print(json.dumps([r.owner('generators', 'oot-painter'), u.find_spec(s.factory.partition(':')[0]).origin]))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    owner, module_file = json.loads(r.stdout)
    assert owner == "anoplug-oot-painter" and Path(module_file).is_relative_to(site), (owner, module_file)

    r = subprocess.run([sys.executable, "-m", "pytest", str(root / "tests"), "-q", "-rA", "-p", "no:cacheprovider"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    passed = re.search(r"(\d+) passed", r.stdout)
    # the learned kit adds fit / resume / save-load checks on top of the generator kit
    assert passed and int(passed.group(1)) >= 18 and "failed" not in r.stdout, r.stdout[-3000:]
    assert re.search(r"PASSED \S+test_resume_gives_the_weights_of_an_uninterrupted_run", r.stdout), r.stdout[-3000:]
    assert re.search(r"PASSED \S+test_every_used_condition_is_honoured", r.stdout), r.stdout[-3000:]


def test_rendered_plugin_registers(tmp_path, monkeypatch, tmp_plugin, anoplug_pm):
    import importlib

    root = new_plugin("spots-two", tmp_path)
    monkeypatch.syspath_prepend(str(root / "src"))
    tmp_plugin(importlib.import_module("anoplug_spots_two.plugin"), "spots-two")
    assert anoplug_pm.get_generator("spots-two").name == "spots-two"
    assert not metadata_problems(tomllib.loads((root / "pyproject.toml").read_text()))


def test_bad_names_and_existing_dirs(tmp_path, capsys):
    with pytest.raises(ValueError, match="lowercase"):
        new_plugin("Bad Name", tmp_path)
    with pytest.raises(ValueError, match="unknown category"):
        new_plugin("ok", tmp_path, category="nope")
    with pytest.raises(ValueError, match="keyword"):
        new_plugin("class", tmp_path)
    new_plugin("twice", tmp_path)
    assert main(["new-plugin", "twice", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["new-plugin", "--update", str(tmp_path)]) == 2  # not a rendered plugin
    assert ".copier-answers.yml" in capsys.readouterr().err
    assert main(["new-plugin", "--dir", str(tmp_path)]) == 2
    assert "needs NAME" in capsys.readouterr().err


def test_template_validators_refuse_what_new_plugin_refuses(tmp_path):
    """``copier copy`` straight from the template (no anoplug in between) refuses the same answers."""
    repo, tag = template_repo(repo=tmp_path / "repo")
    assert template_repo(repo=repo) == (repo, tag)  # unchanged content: same tag, no new commit
    cases = [({"name": "Bad Name"}, "lowercase"), ({"name": "ok\n"}, "lowercase"), ({"name": "class"}, "keyword"),
             ({"name": "ok", "title": "two\nlines"}, "one line"), ({"name": "ok", "category": "nope"}, "category"),
             ({"name": "ok", "repository": "not a url"}, "http"), ({"name": "ok", "licence": "Nope"}, "licence")]
    for data, needle in cases:
        with pytest.raises(ValueError, match=needle):
            copier.run_copy(str(repo), tmp_path / "out", data=data, defaults=True, vcs_ref=tag, quiet=True)
    assert not (tmp_path / "out").exists()


def test_template_versions_sort_after_the_release_and_foreign_repos_are_left_alone(tmp_path):
    from packaging.version import Version

    assert _next_tag("0.1.0", set()) == "v0.1.0"
    assert _next_tag("0.1.0", {"v0.1.0", "v0.1.0.post1"}) == "v0.1.0.post2"
    assert _next_tag("0.2.0rc1.dev3", {"v0.2.0rc1.dev3"}) == "v0.2.0rc1.post1.dev3"
    assert Version("0.2.0rc1.post1.dev3") > Version("0.2.0rc1.dev3")
    foreign = tmp_path / "someone-elses"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(TemplateError, match="not an anoplug template repository"):
        template_repo(repo=foreign)
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_template_questions_follow_the_host():
    config = yaml.safe_load((TEMPLATE_DIR / "copier.yml").read_text())
    assert config["category"]["choices"] == {label: key for key, label in CATEGORIES.items()}
    import keyword

    listed = set(re.findall(r"'([a-z]+)'", config["name"]["validator"].split(" in ", 1)[1]))
    assert listed == {k for k in keyword.kwlist if k.islower()}
    assert config["learned"]["type"] == "bool" and config["_subdirectory"] == "template"


def test_missing_copier_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "copier", None)  # import copier -> ImportError
    assert main(["new-plugin", "no-copier", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "copier" in err and "anoplug[scaffold]" in err, err
    assert not (tmp_path / "anoplug-no-copier").exists()


def test_update_refuses_a_downgrade(tmp_path, monkeypatch):
    """A plugin rendered by a newer anoplug is not "updated" to the template of an older one."""
    import anoplug._version

    template = tmp_path / "template"
    shutil.copytree(TEMPLATE_DIR, template, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(anoplug._version, "__version__", "9.0.0")
    root = new_plugin("down", tmp_path / "work", template_dir=template)
    assert yaml.safe_load((root / ".copier-answers.yml").read_text())["_commit"] == "v9.0.0"
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "init")
    monkeypatch.setattr(anoplug._version, "__version__", "0.1.0")  # the user installs an older anoplug
    (template / "template" / "NOTES.md").write_text("older\n")
    with pytest.raises(TemplateError, match="[Dd]owngrad"):
        update_plugin(root, template_dir=template)
