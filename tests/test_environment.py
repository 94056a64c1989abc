"""Set-up files stay in sync with the plugins folder."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_every_plugin():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"] if isinstance(d, str))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    editable = {line.split(None, 1)[1].strip() for line in pip if line.startswith("-e ")}
    assert "." in {e.split("[")[0] for e in editable}, "host not installed editable"
    for plugin in sorted((ROOT / "plugins").glob("anoplug-*")):
        assert f"./plugins/{plugin.name}" in editable, f"environment.yml misses plugins/{plugin.name}"


def test_every_plugin_declares_an_anoplug_entry_point():
    import tomllib

    for plugin in sorted((ROOT / "plugins").glob("anoplug-*")):
        meta = tomllib.loads((plugin / "pyproject.toml").read_text())
        eps = meta["project"].get("entry-points", {}).get("anoplug")
        assert eps, f"{plugin.name} has no [project.entry-points.anoplug]"
        assert (plugin / "README.md").is_file(), f"{plugin.name} has no README"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
