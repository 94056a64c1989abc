"""Registry: isolation, broken plugins, version check, duplicates, register from code."""

from __future__ import annotations

import re
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


class _Verbs:
    """A plugin adding CLI verbs through ``anoplug_commands``; ``broken`` makes its registration fail."""

    def __init__(self, broken=""):
        self.broken = broken

    @hookimpl
    def anoplug_commands(self, subparsers):
        sp = subparsers.add_parser("hello", help="say hello")
        sp.add_argument("--who", default="world")
        if self.broken == "raise":
            raise RuntimeError("boom in add_commands")
        if self.broken == "no-handler":
            return
        if self.broken == "steal":
            subparsers.add_parser("list")  # a host verb
        sp.set_defaults(handler=lambda args: print(f"hello {args.who}") or 0)


def test_plugin_adds_a_cli_verb(tmp_plugin, anoplug_pm, capsys):
    from anoplug.cli import main

    tmp_plugin(_Verbs(), "verbs")
    assert main(["hello", "--who", "plugins"]) == 0
    assert capsys.readouterr().out == "hello plugins\n"
    assert anoplug_pm.status["verbs"].provides["commands"] == ["hello"] and anoplug_pm.status["verbs"].ok


@pytest.mark.parametrize("broken, needle", [("raise", "boom in add_commands"), ("no-handler", "has no handler"),
                                            ("steal", "conflicting subparser: list|'list' already exists")])
def test_failing_command_registration_is_recorded_and_the_cli_works(broken, needle, tmp_plugin, anoplug_pm, capsys,
                                                                    monkeypatch):
    from anoplug.cli import main

    monkeypatch.delenv("ANOPLUG_STRICT_PLUGINS", raising=False)
    tmp_plugin(_Verbs(broken), "verbs")
    tmp_plugin(_One("draem"), "gen")
    assert main(["list"]) == 0 and "draem" in capsys.readouterr().out  # host verbs keep working
    st = anoplug_pm.status["verbs"]
    assert not st.ok and re.search(needle, st.error)
    assert "commands" not in st.provides
    assert main(["plugins"]) == 0 and re.search(needle, capsys.readouterr().out)
    code = main(["hello"])  # the verb it did add reports the registration error
    assert code in (1, 2) and "failed to register" in capsys.readouterr().err  # 2 once PluginError is a user error
    monkeypatch.setenv("ANOPLUG_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=needle):
        main(["list"])


def test_importing_anoplug_does_not_import_torch():
    import subprocess

    code = "import sys, anoplug, anoplug.registry; anoplug.registry.get_registry(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
