"""Registry: isolation, broken plugins, version check, duplicates, register from code."""

from __future__ import annotations

import sys

import pytest

import anoplug
from anoplug import GeneratorSpec, hookimpl
from anoplug.registry import PluginError, Registry, UnknownNameError
from tests.fakeplugins import TOY_GENERATOR, make_dist


class _One:
    def __init__(self, name="dummy", api="1.0", category="cutpaste"):
        self.spec = GeneratorSpec(name, "anoplug_draem.draem:Draem", title="t", category=category, api_version=api)

    @hookimpl
    def anoplug_generators(self):
        return [self.spec]


def test_isolated_registry_has_no_discovered_plugins(anoplug_pm):
    assert set(anoplug_pm.status) == {"anoplug.builtin"}
    assert anoplug_pm.specs("generators") == {}
    assert "toy" in anoplug_pm.specs("datasets")


def test_register_and_lookup(tmp_plugin, anoplug_pm):
    tmp_plugin(_One("draem"), "mine")
    assert anoplug.list_generators() == ["draem"]
    gen = anoplug.get_generator("draem", probability=1.0)
    assert gen.params.probability == 1.0
    with pytest.raises(UnknownNameError, match="unknown generator 'nope'.*draem"):
        anoplug.get_generator("nope")


def test_api_major_version_refused(anoplug_pm):
    with pytest.raises(PluginError, match="incompatible"):
        anoplug_pm.register(_One(api="2.0"), "future")
    assert "future" not in anoplug_pm.status


def test_api_newer_minor_warns(anoplug_pm):
    with pytest.warns(UserWarning, match="newer"):
        anoplug_pm.register(_One(api="1.9"), "newer")
    assert "dummy" in anoplug_pm.specs("generators")


def test_unknown_category_refused(anoplug_pm):
    with pytest.raises(PluginError, match="unknown category"):
        anoplug_pm.register(_One(category="magic"), "bad")


def test_duplicate_in_code_names_both(anoplug_pm):
    anoplug_pm.register(_One("same"), "first")
    with pytest.raises(PluginError, match="already provided by .*first.*now also by second"):
        anoplug_pm.register(_One("same"), "second")


def _with_path(monkeypatch, path):
    monkeypatch.syspath_prepend(str(path))
    for m in [m for m in sys.modules if m.startswith("anoplug_fake")]:
        del sys.modules[m]


def test_broken_plugin_is_isolated(tmp_path, monkeypatch):
    make_dist(tmp_path, "anoplug-fake-broken", "anoplug_fake_broken", "raise RuntimeError('boom at import')\n")
    _with_path(monkeypatch, tmp_path)
    monkeypatch.delenv("ANOPLUG_STRICT_PLUGINS", raising=False)
    reg = Registry()
    st = reg.status["anoplug_fake_broken"]
    assert not st.ok and "boom at import" in st.error and st.distribution == "anoplug-fake-broken"
    assert "draem" in reg.specs("generators")  # everything else still works
    monkeypatch.setenv("ANOPLUG_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="boom at import"):
        Registry()


def test_duplicate_entry_points_name_both_distributions(tmp_path, monkeypatch):
    for dist in ("anoplug-fake-a", "anoplug-fake-b"):
        mod = dist.replace("-", "_")
        make_dist(tmp_path, dist, mod, TOY_GENERATOR.format(name="twin", module=mod))
    _with_path(monkeypatch, tmp_path)
    reg = Registry()
    with pytest.raises(PluginError, match="anoplug-fake-a and anoplug-fake-b"):
        reg.spec("generators", "twin")
    assert "anoplug-fake-a and anoplug-fake-b" in reg.status["anoplug_fake_a"].error
    assert "draem" in reg.specs("generators")


def test_load_and_disable_switches(tmp_path, monkeypatch):
    make_dist(tmp_path, "anoplug-fake-ok", "anoplug_fake_ok", TOY_GENERATOR.format(name="fakeok", module="anoplug_fake_ok"))
    _with_path(monkeypatch, tmp_path)
    monkeypatch.setenv("ANOPLUG_LOAD_PLUGINS", "anoplug_fake_ok")
    assert set(Registry().specs("generators")) == {"fakeok"}
    monkeypatch.setenv("ANOPLUG_LOAD_PLUGINS", "")
    assert Registry().specs("generators") == {}
    monkeypatch.delenv("ANOPLUG_LOAD_PLUGINS")
    monkeypatch.setenv("ANOPLUG_DISABLE_PLUGINS", "anoplug-draem")
    reg = Registry()
    assert "draem" not in reg.specs("generators") and "fakeok" in reg.specs("generators")


def test_observer_hooks_fire(tmp_plugin):
    events = []

    class Observer:
        @hookimpl
        def anoplug_before_generate(self, spec, params, n_images):
            events.append(("before", spec.name, n_images))

        @hookimpl
        def anoplug_after_generate(self, spec, params, batch, seconds):
            events.append(("after", len(batch)))

    tmp_plugin(Observer(), "observer")
    tmp_plugin(_One("draem"), "gen")
    from anoplug.testing import make_toy_batch

    anoplug.get_generator("draem", texture_source="perlin").generate(make_toy_batch(2, 16), seed=0)
    assert events == [("before", "draem", 2), ("after", 2)]


def test_configure_is_historic(anoplug_pm):
    seen = []

    class Late:
        @hookimpl
        def anoplug_configure(self, config):
            seen.append(config["device"])

    anoplug_pm.configure({"device": "cpu"})
    anoplug_pm.register(Late(), "late")
    assert seen == ["cpu"]


def test_importing_anoplug_does_not_import_torch():
    import subprocess

    code = "import sys, anoplug, anoplug.registry; anoplug.registry.get_registry(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
