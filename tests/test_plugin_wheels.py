"""A plugin installs alone: its wheel plus the host's wheel, in an environment that has neither.

The dev environment (``.venv``) has the host and every plugin *editable*, which is not what a
user gets from ``pip install anoplug-draem``. This test builds the host wheel and
anoplug-draem's sdist and wheel (``python -m build --no-isolation``: sdist first, then the wheel
built *from the sdist*, so a file missing from the sdist fails here), installs the two wheels into
a fresh venv, and runs ``anoplug plugins`` and ``anoplug generate`` there.

How the fresh venv gets torch without reinstalling it (measured, on this machine):

- ``venv --system-site-packages`` from ``.venv``'s python is useless: a venv's "system" site is
  the *base* interpreter's, where torch is not.
- A ``.pth`` line adding ``.venv``'s site-packages makes the editable installs' ``*.dist-info``
  visible: the registry would list all thirteen editable plugins (as import errors) next to the
  wheel's one, and two ``anoplug`` distributions.
- Chosen: a venv from the base interpreter whose site-packages holds a *symlink* to each entry of
  ``.venv``'s site-packages except the host's and the plugins' (their ``*.dist-info``,
  ``__editable__*`` path files and finders). Their other ``.pth`` files still run, nothing is
  copied or downloaded (about 1 s for ~500 links), and pip then installs the two wheels for real
  with ``--no-deps --no-index``. The test checks that the environment sees exactly ``anoplug`` and
  ``anoplug-draem``, imported from the venv, not from the source tree.

About 30-40 s on 2 shared cores, most of it building the 35 MB host wheel (the embedded assets).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "anoplug-draem"
#: entries of the dev site-packages that belong to the editable host and plugins
EDITABLE = re.compile(r"^(__editable__|_*editable_*_*anoplug|anoplug)", re.IGNORECASE)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX venv layout")]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _sources(tmp: Path) -> tuple[Path, Path]:
    """Copies of the host and the plugin sources: building in place would write build/ and
    *.egg-info into the shared checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "*_partial")
    host = tmp / "src" / "anoplug-host"
    host.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, host / name)
    shutil.copytree(ROOT / "anoplug", host / "anoplug", ignore=ignore)
    plugin = tmp / "src" / PLUGIN
    shutil.copytree(ROOT / "plugins" / PLUGIN, plugin, ignore=ignore)
    return host, plugin


def _fresh_venv(tmp: Path) -> Path:
    """A venv from the base interpreter that reuses the dev environment's packages, not its anoplug."""
    venv = tmp / "venv"
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    _run([str(base if base.exists() else sys.executable), "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    dev_site = Path(sysconfig.get_paths()["purelib"])
    for entry in dev_site.iterdir():
        if not EDITABLE.match(entry.name) and entry.name != "__pycache__":
            (site / entry.name).symlink_to(entry)
    return venv


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1",
            "ANOPLUG_TEMPLATE_REPO": str(tmp / "template-repo")}


def test_plugin_wheel_installs_alone_with_the_host_wheel_and_generates(tmp_path: Path) -> None:
    host, plugin = _sources(tmp_path)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(dist), str(host)], cwd=tmp_path)
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(plugin)], cwd=tmp_path)
    host_whl, = dist.glob("anoplug-*.whl")
    plugin_whl, = dist.glob("anoplug_draem-*.whl")
    sdist, = dist.glob("anoplug_draem-*.tar.gz")

    # the sdist carries the sources and the tests; the host wheel carries every template file
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert any(n.endswith("src/anoplug_draem/plugin.py") for n in names) and any("/tests/" in n for n in names), names
    shipped = set(zipfile.ZipFile(host_whl).namelist())
    template = [p.relative_to(ROOT).as_posix() for p in (ROOT / "anoplug" / "templates").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts]
    assert template and not [t for t in template if t not in shipped], "template files missing from the host wheel"

    venv = _fresh_venv(tmp_path)
    py = str(venv / "bin" / "python")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index",
          str(host_whl), str(plugin_whl)], cwd=tmp_path)
    env = _env(tmp_path)

    probe = ("import json, importlib.metadata as md, anoplug, anoplug_draem; m = md.metadata('anoplug-draem'); "
             "print(json.dumps({'files': [anoplug.__file__, anoplug_draem.__file__], "
             "'dists': sorted(d.metadata['Name'] for d in md.distributions() if d.metadata['Name'].startswith('anoplug')), "
             "'license': m['License-Expression'], 'urls': m.get_all('Project-URL'), 'classifiers': m.get_all('Classifier'), "
             "'keywords': m['Keywords'], 'requires': m.get_all('Requires-Dist')}))")
    seen = json.loads(_run([py, "-c", probe], cwd=tmp_path, env=env))
    assert seen["dists"] == ["anoplug", "anoplug-draem"], seen["dists"]  # neither editable install leaks in
    assert all(Path(f).is_relative_to(venv) for f in seen["files"]), seen["files"]
    assert seen["license"] == "Apache-2.0" and "anoplug-plugin" in seen["keywords"]
    assert any(u.startswith("Paper, https://") for u in seen["urls"]) and seen["classifiers"]
    assert any(r.replace(" ", "").startswith("anoplug<2,>=0.1") for r in seen["requires"]), seen["requires"]

    listing = json.loads(_run([str(venv / "bin" / "anoplug"), "plugins", "--json"], cwd=tmp_path, env=env))
    assert {(row["distribution"], row["status"]) for row in listing} == {("anoplug", "ok"), (PLUGIN, "ok")}, listing
    assert next(row for row in listing if row["distribution"] == PLUGIN)["provides"] == {"generators": ["draem"]}

    out = tmp_path / "out"
    _run([str(venv / "bin" / "anoplug"), "generate", "draem", "--data", "toy:metal", "-n", "2", "--size", "64",
          "--out", str(out), "-q", "--workers", "1"], cwd=tmp_path, env=env)
    assert len((out / "metal" / "manifest.jsonl").read_text().splitlines()) == 2
    assert len([p for p in (out / "metal").rglob("*.png") if "train" not in p.parts]) >= 2

    # the wheel-installed host renders a plugin from its packaged template (no source tree involved)
    _run([str(venv / "bin" / "anoplug"), "new-plugin", "from-wheel", "--dir", str(tmp_path)], cwd=tmp_path, env=env)
    assert (tmp_path / "anoplug-from-wheel" / "src" / "anoplug_from_wheel" / "method.py").is_file()
