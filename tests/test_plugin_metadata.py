"""Every plugin's distribution metadata is complete: what PyPI, a plugin directory and pip need.

One parametrised case per ``plugins/*/pyproject.toml`` (and the rendered template, in
``test_scaffold``), each failing with the exact lines to add: an SPDX ``license``
(PEP 639), ``[project.urls]`` with Homepage, Source and Paper, registered trove classifiers
(there is no ``Framework :: anoplug`` classifier: PyPI rejects unregistered ones), the
``anoplug-plugin`` keyword the directory and PyPI search use, and the host range
``anoplug>=0.1,<2`` in ``dependencies`` (the plugin contract holds within anoplug 1.x; an
unbounded ``anoplug>=0.1`` would let pip pair the plugin with an incompatible 2.0).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression
from packaging.requirements import Requirement
from packaging.version import Version

from anoplug._version import __version__

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))
HOST_RANGE = ">=0.1,<2"
URLS = ("Homepage", "Source", "Paper")
#: one classifier from each of these families (all must be registered trove classifiers)
CLASSIFIER_FAMILIES = {
    "Development Status :: ": '"Development Status :: 3 - Alpha"',
    "Intended Audience :: ": '"Intended Audience :: Science/Research"',
    "Programming Language :: Python :: 3": '"Programming Language :: Python :: 3"',
    "Topic :: Scientific/Engineering": '"Topic :: Scientific/Engineering :: Image Processing"',
}


def _is_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://")) and " " not in value


def metadata_problems(pyproject: dict) -> list[str]:
    """What ``pyproject`` lacks, each as the fix to make (empty when complete)."""
    import trove_classifiers

    project = pyproject.get("project", {})
    out: list[str] = []
    licence = project.get("license")
    if not isinstance(licence, str):
        out.append('[project] license: add license = "Apache-2.0" (an SPDX expression string, PEP 639; '
                   'not a table, and no "License ::" classifier)')
    else:
        try:
            canonicalize_license_expression(licence)
        except InvalidLicenseExpression as e:
            out.append(f"[project] license: {licence!r} is not an SPDX expression ({e})")
    urls = project.get("urls", {})
    missing = [k for k in URLS if k not in urls]
    if missing:
        out.append(f"[project.urls]: add {', '.join(missing)} (Homepage and Source: where the plugin lives; "
                   "Paper: the paper it implements)")
    out += [f"[project.urls] {k} = {urls[k]!r} is not an http(s) URL" for k in URLS if k in urls and not _is_url(urls[k])]
    classifiers = project.get("classifiers", [])
    for c in classifiers:
        if c in trove_classifiers.deprecated_classifiers:
            out.append(f"classifiers: {c!r} is deprecated")
        elif c not in trove_classifiers.classifiers:
            out.append(f"classifiers: {c!r} is not a registered trove classifier (PyPI rejects it)")
        elif c.startswith("License ::"):
            out.append(f"classifiers: remove {c!r}: the SPDX license field replaces License classifiers")
    for family, example in CLASSIFIER_FAMILIES.items():
        if not any(c.startswith(family) for c in classifiers):
            out.append(f'classifiers: add a "{family.strip()} ..." classifier, e.g. {example}')
    if "anoplug-plugin" not in project.get("keywords", []):
        out.append('keywords: add "anoplug-plugin" (how the plugin directory and PyPI search find plugins)')
    hosts = [Requirement(d) for d in project.get("dependencies", []) if Requirement(d).name == "anoplug"]
    if not hosts:
        out.append(f'dependencies: add "anoplug{HOST_RANGE}" (the host versions the plugin is written for)')
    for req in hosts:
        spec = req.specifier
        if Version(__version__) not in spec or spec.contains("2", prereleases=True) \
                or not any(s.operator in (">=", ">", "~=", "==") for s in spec):
            extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            out.append(f'dependencies: {str(req)!r} must bound the host on both sides and admit anoplug '
                       f'{__version__}: use "anoplug{extras}{HOST_RANGE}"')
    if not pyproject.get("project", {}).get("entry-points", {}).get("anoplug"):
        out.append("[project.entry-points.anoplug]: add the entry point that registers the plugin")
    return out


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_plugin_metadata_is_complete(plugin: Path) -> None:
    problems = metadata_problems(tomllib.loads((plugin / "pyproject.toml").read_text()))
    if problems:
        pytest.fail(f"plugins/{plugin.name}/pyproject.toml is missing metadata:\n  " + "\n  ".join(problems), pytrace=False)


def test_the_check_names_each_missing_field() -> None:
    """The bare pyproject a new plugin starts from fails on every field, each with its fix."""
    bare = {"project": {"name": "anoplug-x", "dependencies": ["anoplug>=0.1"], "license": "Apache 2",
                        "classifiers": ["Framework :: anoplug", "License :: OSI Approved :: MIT License"]}}
    text = "\n".join(metadata_problems(bare))
    for needle in ("not an SPDX expression", "add Homepage, Source, Paper", "'Framework :: anoplug' is not a registered",
                   "remove 'License :: OSI Approved :: MIT License'", "add a \"Development Status :: ...\" classifier",
                   'add "anoplug-plugin"', '"anoplug>=0.1,<2"', "entry-points.anoplug"):
        assert needle in text, f"{needle!r} not in:\n{text}"
    assert any(p.endswith('"anoplug[backbones]>=0.1,<2"')
               for p in metadata_problems({"project": {"dependencies": ["anoplug[backbones]>=0.1"]}}))


def test_paper_url_matches_the_registered_generators() -> None:
    """The Paper URL on PyPI is the paper the plugin's generators cite (one source of truth: the class)."""
    from anoplug.registry import Registry

    reg = Registry()
    for name in reg.specs("generators"):
        dist = reg.owner("generators", name)
        if not dist.startswith("anoplug-") or not (ROOT / "plugins" / dist / "pyproject.toml").is_file():
            continue
        urls = tomllib.loads((ROOT / "plugins" / dist / "pyproject.toml").read_text())["project"].get("urls", {})
        if "Paper" not in urls:
            continue  # reported by test_plugin_metadata_is_complete
        cited = reg.generator_class(name).paper.url
        assert not cited or cited == urls["Paper"], f"{dist}: Paper = {urls['Paper']!r} but {name} cites {cited!r}"
