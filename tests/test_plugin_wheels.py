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


_IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "*_partial")


def _copy_host(tmp: Path) -> Path:
    """A copy of the host's sources: building in place would write build/ and *.egg-info into the shared checkout."""
    host = tmp / "src" / "anoplug-host"
    host.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, host / name)
    shutil.copytree(ROOT / "anoplug", host / "anoplug", ignore=_IGNORE)
    return host


def _copy_plugin(tmp: Path, dist: str) -> Path:
    """A copy of one plugin's sources (same reason as :func:`_copy_host`)."""
    plugin = tmp / "src" / dist
    shutil.copytree(ROOT / "plugins" / dist, plugin, ignore=_IGNORE)
    return plugin


def _sources(tmp: Path) -> tuple[Path, Path]:
    """Copies of the host and the plugin sources."""
    return _copy_host(tmp), _copy_plugin(tmp, PLUGIN)


def _fresh_venv(tmp: Path, name: str = "venv") -> Path:
    """A venv (``tmp/name``) from the base interpreter that reuses the dev environment's packages, not its anoplug."""
    venv = tmp / name
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


# -- every plugin, each alone -------------------------------------------------------------------
#: run in each plugin's venv: argv = distribution, JSON of {kind: names} its plugin.py declares,
#: JSON of the distributions expected. Prints one JSON report; the test asserts on it.
_PROBE = r'''
import argparse, json, sys, importlib.metadata as md
from pathlib import Path

dist, declared, expected = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
venv = Path(sys.prefix)
report = {"dists": sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].startswith("anoplug")),
          "outside": [], "status": {}, "ran": [], "skipped": {}, "failed": {}, "evaluators": []}
import anoplug
from anoplug.registry import get_registry

reg = get_registry()
reg.add_commands(argparse.ArgumentParser().add_subparsers())  # plugin verbs are registered (and checked) here
report["status"] = {st.name: {**st.to_dict(), "traceback": st.traceback[-1500:]} for st in reg.status.values()}
mine = [st for st in reg.status.values() if st.distribution == dist]
names = {k: [n for st in mine for n in st.provides.get(k, [])] for k in declared}
report["provides"] = names
mods = {anoplug.__name__: anoplug.__file__}
batch = None
for name in names.get("generators", []):
    try:
        cls = reg.generator_class(name)
        mods[cls.__module__] = sys.modules[cls.__module__].__file__
        if cls.level == "feature":
            report["skipped"][name] = "feature-level (generate_features, no images)"
            continue
        if cls.requires.fit and not cls.pretrained:
            report["skipped"][name] = "learned, ships no weights (needs fit)"
            continue
        gen = cls.from_pretrained() if cls.requires.fit else cls(**cls.smoke_params)
        if cls.requires.fit and cls.smoke_params:  # generation-time settings over the checkpoint's
            gen.params = gen.Params(**{**gen.params.model_dump(), **cls.smoke_params})
        if batch is None:
            from anoplug.data import open_dataset
            batch = open_dataset("toy:metal", split="train", size=64).batch([0, 1])
        needs = tuple(cls.requires.conditions)
        if set(needs) - {"prompt"}:
            report["skipped"][name] = f"needs conditions {', '.join(needs)}"
            continue
        out = gen.generate(batch.with_conditions(prompt=["a metal plate with a scratch"] * len(batch))
                           if needs else batch, seed=0)
        shapes = (tuple(out.image.shape), tuple(out.mask.shape), len(out.label))
        if shapes != ((2, 3, 64, 64), (2, 1, 64, 64), 2):
            raise AssertionError(f"unexpected output shapes {shapes}")
        report["ran"].append(name)
    except BaseException as e:  # a finding, reported with the others
        import traceback
        report["failed"][name] = f"{type(e).__name__}: {e}\n" + traceback.format_exc()[-1500:]
for name in names.get("evaluators", []):
    try:
        cls = reg.load_spec("evaluators", name)  # imports its module from the wheel; nothing is computed
        mods[cls.__module__] = sys.modules[cls.__module__].__file__
        report["evaluators"].append(name)
    except BaseException as e:
        report["failed"][name] = f"{type(e).__name__}: {e}"
report["outside"] = [f"{m}: {f}" for m, f in mods.items() if not Path(f).resolve().is_relative_to(venv.resolve())]
print(json.dumps(report))
'''


def _plugin_dists() -> list[str]:
    return sorted(p.name for p in (ROOT / "plugins").glob("anoplug-*") if (p / "pyproject.toml").is_file())


def _project(dist: str) -> dict:
    import tomllib

    return tomllib.loads((ROOT / "plugins" / dist / "pyproject.toml").read_text())["project"]


def _declared(dist: str) -> dict[str, list[str]]:
    """What the plugin's entry-point modules (its ``plugin.py``) register, read from the source tree."""
    import importlib.util

    out: dict[str, list[str]] = {}
    for i, module in enumerate(_project(dist)["entry-points"]["anoplug"].values()):
        path = ROOT / "plugins" / dist / "src" / (module.replace(".", "/") + ".py")
        spec = importlib.util.spec_from_file_location(f"_declared_{dist.replace('-', '_')}_{i}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for kind in ("generators", "evaluators", "datasets"):
            hook = getattr(mod, f"anoplug_{kind}", None)
            if hook is not None:
                out.setdefault(kind, []).extend(s.name for s in hook())
    return out


def _anoplug_requirements(dist: str) -> list[str]:
    """The other ``anoplug-*`` distributions a plugin declares it needs (pip would install them with it)."""
    names = [re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0] for r in _project(dist).get("dependencies", [])]
    return sorted(n for n in names if n.startswith("anoplug-"))


def _wheel(dist_dir: Path, dist: str) -> Path:
    whl, = dist_dir.glob(f"{dist.replace('-', '_')}-*.whl")
    return whl


def test_every_plugin_wheel_installs_alone_with_the_host_wheel_and_generates(tmp_path: Path) -> None:
    """Each ``plugins/anoplug-*`` wheel, in its own fresh venv with only the host wheel (plus the
    ``anoplug-*`` distributions it declares), registers what its ``plugin.py`` declares and generates.

    One ``pip wheel --no-build-isolation`` call builds every wheel (the host's once); then, two
    plugins at a time, a venv as :func:`_fresh_venv` makes it, ``pip install --no-deps --no-index``
    and one python process (``_PROBE``) that checks the distributions it sees, the registry status,
    and generates 2 samples at 64² on ``toy:metal`` with every generator that runs without fitting:
    procedural ones, and learned ones from the weights they ship. Feature-level generators and
    learned ones without shipped weights are skipped (and listed); evaluators are only imported.
    A plugin that needs another plugin's files to do so fails here.
    """
    from concurrent.futures import ThreadPoolExecutor

    dists = _plugin_dists()
    host = _copy_host(tmp_path)
    sources = [_copy_plugin(tmp_path, d) for d in dists]
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(wheels), str(host), *map(str, sources)], cwd=tmp_path, timeout=600)
    host_whl, = wheels.glob("anoplug-*.whl")

    # a plugin that ships checkpoints ships every file of them in its wheel
    for d in dists:
        pkg = _project(d)["name"].replace("-", "_")
        src = ROOT / "plugins" / d / "src" / pkg / "weights"
        shipped = set(zipfile.ZipFile(_wheel(wheels, d)).namelist())
        want = [f"{pkg}/{p.relative_to(src.parent).as_posix()}" for p in src.glob("*/*") if p.is_file()]
        assert not [w for w in want if w not in shipped], f"{d}: shipped weights missing from its wheel"

    env = _env(tmp_path)

    def alone(dist: str) -> dict:
        venv = _fresh_venv(tmp_path, f"venvs/{dist}")
        py = str(venv / "bin" / "python")
        extra = [_wheel(wheels, r) for r in _anoplug_requirements(dist)]
        _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index",
              str(host_whl), str(_wheel(wheels, dist)), *map(str, extra)], cwd=tmp_path)
        declared = _declared(dist)
        expected = sorted(["anoplug", dist, *_anoplug_requirements(dist)])
        r = subprocess.run([py, "-c", _PROBE, dist, json.dumps(declared), json.dumps(expected)], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            return {"dist": dist, "crash": f"probe exited {r.returncode}:\n{r.stderr[-3000:]}"}
        return {"dist": dist, "declared": declared, "expected": expected, **json.loads(r.stdout.splitlines()[-1])}

    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(alone, dists))

    problems: list[str] = []
    ran: list[str] = []
    for rep in reports:
        d = rep["dist"]
        if "crash" in rep:
            problems.append(f"{d}: {rep['crash']}")
            continue
        if rep["dists"] != rep["expected"]:
            problems.append(f"{d}: sees distributions {rep['dists']}, expected {rep['expected']}")
        bad = {n: st["error"] + "\n" + st["traceback"] for n, st in rep["status"].items() if st["status"] != "ok"}
        if bad:
            problems.append(f"{d}: plugin status errors {bad}")
        if not any(st["distribution"] == d for st in rep["status"].values()):
            problems.append(f"{d}: no entry point of it was loaded")
        if {k: sorted(v) for k, v in rep["provides"].items()} != {k: sorted(v) for k, v in rep["declared"].items()}:
            problems.append(f"{d}: provides {rep['provides']}, its plugin.py declares {rep['declared']}")
        if rep["outside"]:
            problems.append(f"{d}: modules imported from outside its venv: {rep['outside']}")
        problems += [f"{d}: {n}: {why}" for n, why in rep["failed"].items()]
        ran += rep["ran"]
        for n, why in rep["skipped"].items():
            print(f"skipped {n} ({d}): {why}")
        print(f"{d}: generated with {rep['ran'] or 'nothing'}; evaluators imported: {rep['evaluators'] or 'none'}")
    assert not problems, "\n\n".join(problems)
    assert ran, "no generator ran in any plugin's venv"
    procedural_missed = [n for rep in reports for n in rep["declared"].get("generators", [])
                         if n not in rep["ran"] and n not in rep["skipped"]]
    assert not procedural_missed, f"generators that neither ran nor were skipped for a stated reason: {procedural_missed}"
