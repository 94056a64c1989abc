"""Issue 13, items 3-5: plugins that exit or interrupt, hooks that do not exist, offline loading.

- A plugin raising any ``BaseException`` (``sys.exit(3)`` or ``KeyboardInterrupt`` at import,
  ``SystemExit`` in a registration hook, ``GeneratorExit`` in ``anoplug_commands``) is recorded
  with its error and the host carries on; a real Ctrl-C still interrupts; strict mode raises.
- A plugin implementing a removed or unknown hook is reported, naming the plugin and the hook.
- ``load_pipeline`` with a hub id attempts no connection unless ``ANOPLUG_ALLOW_DOWNLOAD=1``,
  and fails at once with one line naming the model and the opt-in.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from anoplug import hookimpl
from anoplug.registry import PluginError, Registry
from tests.fakeplugins import TOY_GENERATOR, make_dist

CLI = "import sys; from anoplug.cli import main; sys.exit(main())"

EXITS_AT_IMPORT = "import sys\nsys.exit(3)\n"
INTERRUPTS_AT_IMPORT = "raise KeyboardInterrupt\n"
HOOK_EXITS = '''
from anoplug import hookimpl

@hookimpl
def anoplug_generators():
    raise SystemExit(4)
'''
COMMANDS_RAISE = '''
from anoplug import hookimpl

@hookimpl
def anoplug_commands(subparsers):
    subparsers.add_parser("fakeverb").set_defaults(handler=lambda args: 0)
    raise GeneratorExit("bye from anoplug_commands")
'''
OLD_OBSERVER = '''
from anoplug import GeneratorSpec, hookimpl

@hookimpl
def anoplug_generators():
    return [GeneratorSpec("fakeobs", "anoplug_fake_observer_impl:Gen", title="toy", category="cutpaste")]

@hookimpl
def anoplug_before_generate(spec, params, n_images):
    raise RuntimeError("observer boom")
'''


def _with_path(monkeypatch, path):
    monkeypatch.syspath_prepend(str(path))
    for m in [m for m in sys.modules if m.startswith("anoplug_fake")]:
        del sys.modules[m]
    monkeypatch.delenv("ANOPLUG_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("ANOPLUG_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("ANOPLUG_DISABLE_PLUGINS", raising=False)


def _hostile(root: Path) -> Path:
    make_dist(root, "anoplug-fake-exit", "anoplug_fake_exit", EXITS_AT_IMPORT)
    make_dist(root, "anoplug-fake-kbint", "anoplug_fake_kbint", INTERRUPTS_AT_IMPORT)
    make_dist(root, "anoplug-fake-hookexit", "anoplug_fake_hookexit", HOOK_EXITS)
    make_dist(root, "anoplug-fake-cmd", "anoplug_fake_cmd", COMMANDS_RAISE)
    make_dist(root, "anoplug-fake-ok", "anoplug_fake_ok", TOY_GENERATOR.format(name="fakeok", module="anoplug_fake_ok"))
    return root


def _cli(args: list[str], root: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("ANOPLUG_STRICT_PLUGINS", "ANOPLUG_LOAD_PLUGINS", "ANOPLUG_DISABLE_PLUGINS")}
    path = os.pathsep.join([str(root), *(p for p in sys.path if p)])
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**base, "PYTHONPATH": path, **env})


# -- item 3: BaseException from plugin code -------------------------------------------------------
EXPECTED = {"anoplug_fake_exit": "SystemExit: 3 (raised at import)",
            "anoplug_fake_kbint": "KeyboardInterrupt raised at import",
            "anoplug_fake_hookexit": "SystemExit: 4 (raised in anoplug_generators)",
            "anoplug_fake_cmd": "GeneratorExit: bye from anoplug_commands (raised in anoplug_commands)"}


def test_cli_survives_plugins_that_exit_or_interrupt(tmp_path):
    root = _hostile(tmp_path)
    r = _cli(["plugins", "--json"], root)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    for name, error in EXPECTED.items():
        assert rows[name]["status"] == "error" and rows[name]["error"] == error, rows[name]
    assert rows["anoplug_fake_ok"]["status"] == "ok" and rows["draem"]["status"] == "ok"

    table = _cli(["plugins"], root)  # the human table too: every broken plugin named with its error
    assert table.returncode == 0 and "interrupted" not in table.stderr
    for name, error in EXPECTED.items():
        assert any(name in line and error in line for line in table.stdout.splitlines()), table.stdout

    listed = _cli(["list"], root)
    assert listed.returncode == 0, (listed.stdout, listed.stderr)
    assert "fakeok" in listed.stdout and "draem" in listed.stdout and "interrupted" not in listed.stderr

    verb = _cli(["fakeverb"], root)  # the verb the broken commands hook did add reports the error
    assert verb.returncode in (1, 2) and "failed to register" in verb.stderr and "GeneratorExit" in verb.stderr


def test_strict_mode_still_raises_on_base_exceptions(tmp_path, monkeypatch):
    make_dist(tmp_path, "anoplug-fake-exit", "anoplug_fake_exit", EXITS_AT_IMPORT)
    _with_path(monkeypatch, tmp_path)
    monkeypatch.setenv("ANOPLUG_LOAD_PLUGINS", "anoplug_fake_exit")
    monkeypatch.setenv("ANOPLUG_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"anoplug_fake_exit.*SystemExit: 3"):
        Registry()


def test_in_process_registry_records_interrupt_and_restores_sigint(tmp_path, monkeypatch):
    make_dist(tmp_path, "anoplug-fake-kbint", "anoplug_fake_kbint", INTERRUPTS_AT_IMPORT)
    make_dist(tmp_path, "anoplug-fake-hookexit", "anoplug_fake_hookexit", HOOK_EXITS)
    _with_path(monkeypatch, tmp_path)
    before = signal.getsignal(signal.SIGINT)
    reg = Registry()
    assert signal.getsignal(signal.SIGINT) is before
    assert reg.status["anoplug_fake_kbint"].error == "KeyboardInterrupt raised at import"
    assert "KeyboardInterrupt" in reg.status["anoplug_fake_kbint"].traceback
    assert reg.status["anoplug_fake_hookexit"].error == "SystemExit: 4 (raised in anoplug_generators)"
    assert "draem" in reg.specs("generators")


def test_a_real_ctrl_c_while_loading_still_interrupts(tmp_path, monkeypatch):
    """A SIGINT that really arrives during a plugin's import propagates (the user meant it)."""
    make_dist(tmp_path, "anoplug-fake-sigint", "anoplug_fake_sigint",
              "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n")
    _with_path(monkeypatch, tmp_path)
    monkeypatch.setenv("ANOPLUG_LOAD_PLUGINS", "anoplug_fake_sigint")
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    before = signal.getsignal(signal.SIGINT)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        Registry()
    assert time.perf_counter() - t0 < 4 and signal.getsignal(signal.SIGINT) is before


def test_lazy_class_import_that_exits_is_a_plugin_error(tmp_path, monkeypatch):
    make_dist(tmp_path, "anoplug-fake-lazy", "anoplug_fake_lazy", TOY_GENERATOR.format(name="lazy", module="anoplug_fake_lazy"))
    (tmp_path / "anoplug_fake_lazy_impl.py").write_text("raise SystemExit(5)\n")
    _with_path(monkeypatch, tmp_path)
    reg = Registry()
    assert reg.status["anoplug_fake_lazy"].ok
    with pytest.raises(PluginError, match=r"generator 'lazy' \(anoplug-fake-lazy\).*SystemExit: 5"):
        reg.generator_class("lazy")


# -- item 4: hooks the host does not have ---------------------------------------------------------
def test_plugin_with_a_removed_observer_hook_is_reported(tmp_path, monkeypatch):
    make_dist(tmp_path, "anoplug-fake-observer", "anoplug_fake_observer", OLD_OBSERVER)
    (tmp_path / "anoplug_fake_observer_impl.py").write_text("")
    _with_path(monkeypatch, tmp_path)
    reg = Registry()
    st = reg.status["anoplug_fake_observer"]
    assert not st.ok and "anoplug_before_generate" in st.error and "removed" in st.error and "never called" in st.error
    assert "fakeobs" in reg.specs("generators") and "draem" in reg.specs("generators")  # its real registration works
    assert all(s.ok for n, s in reg.status.items() if not n.startswith("anoplug_fake"))

    r = _cli(["plugins"], tmp_path)
    assert r.returncode == 0
    line = next(ln for ln in r.stdout.splitlines() if "anoplug_fake_observer" in ln)
    assert "ERROR" in line and "anoplug_before_generate" in line

    monkeypatch.setenv("ANOPLUG_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="anoplug_fake_observer.*anoplug_before_generate"):
        Registry()


class _Misspelt:
    @hookimpl
    def anoplug_generator(self):  # singular: not a hook
        return []


class _Optional:
    @hookimpl(optionalhook=True)
    def anoplug_from_a_newer_host(self):
        return []


def test_unknown_hook_from_code_raises_naming_the_hook(anoplug_pm):
    with pytest.raises(PluginError, match=r"hook anoplug_generator is not an anoplug hook.*anoplug_generators"):
        anoplug_pm.register(_Misspelt(), "misspelt")
    assert "misspelt" not in anoplug_pm.status and anoplug_pm.pm.get_plugin("misspelt") is None
    anoplug_pm.register(_Optional(), "optional")  # optionalhook=True: a hook a newer host may have
    assert anoplug_pm.status["optional"].ok


# -- item 5: offline by default -------------------------------------------------------------------
class _Recorder:
    """Replaces every way to open a connection; records each attempt and refuses it."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple] = []
        for owner, attr in ((socket, "getaddrinfo"), (socket, "create_connection"), (socket.socket, "connect"),
                            (socket.socket, "connect_ex")):
            monkeypatch.setattr(owner, attr, self._refuse(attr))

    def _refuse(self, what):
        def refuse(*a, **k):
            self.calls.append((what, a[1:2] if what.startswith("connect") and len(a) > 1 else a[:1]))
            raise OSError(f"test refused {what}")
        return refuse


@pytest.fixture
def online_env(monkeypatch):
    """The environment of a user who set none of the HF switches (conftest set HF_HUB_OFFLINE for tests)."""
    pytest.importorskip("diffusers")
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ANOPLUG_ALLOW_DOWNLOAD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return constants


HUB_ID = "anoplug-tests/no-such-pipeline"


def test_hub_id_without_opt_in_fails_fast_with_no_connection(online_env, monkeypatch, tmp_path):
    from anoplug.diffusion.loading import WeightsNotFoundError, load_pipeline

    rec = _Recorder(monkeypatch)
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        load_pipeline(HUB_ID, cache_dir=str(tmp_path / "cache"))
    msg = str(err.value)
    assert rec.calls == []
    assert time.perf_counter() - t0 < 20
    assert "\n" not in msg and HUB_ID in msg and "ANOPLUG_ALLOW_DOWNLOAD=1" in msg
    assert "HF_HUB_OFFLINE" not in msg  # it is not set: never tell the user to unset it
    assert online_env.HF_HUB_OFFLINE is False  # the switch is restored after the call


def test_opt_in_lets_diffusers_reach_the_hub(online_env, monkeypatch, tmp_path):
    from anoplug.diffusion.loading import WeightsNotFoundError, load_pipeline

    monkeypatch.setenv("ANOPLUG_ALLOW_DOWNLOAD", "1")
    rec = _Recorder(monkeypatch)
    with pytest.raises(WeightsNotFoundError, match=f"cannot download diffusion weights '{HUB_ID}'") as err:
        load_pipeline(HUB_ID, cache_dir=str(tmp_path / "cache"))
    assert rec.calls, "with ANOPLUG_ALLOW_DOWNLOAD=1 the hub is asked"
    assert "\n" not in str(err.value) and "HF_HUB_OFFLINE" not in str(err.value)

    monkeypatch.setattr(online_env, "HF_HUB_OFFLINE", True)  # the user also set HF_HUB_OFFLINE: say so
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE is set in this environment"):
        load_pipeline(HUB_ID, cache_dir=str(tmp_path / "cache"))


def _cached_snapshot(cache: Path, repo: str) -> Path:
    """Lay out ``repo`` in a Hugging Face cache the way a download leaves it (refs/main -> snapshot)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    commit = "0" * 40
    (folder / "refs" / "main").write_text(commit)
    return folder / "snapshots" / commit


def test_cached_model_with_a_stub_tokenizer_is_refused(online_env, monkeypatch, tmp_path):
    """Offline, a cached pipeline whose tokenizer files are missing loads a 2-token stub: refuse it."""
    from anoplug.diffusion import tiny
    from anoplug.diffusion.loading import TokenizerError, load_pipeline

    snap = _cached_snapshot(tmp_path / "cache", "anoplug-tests/partial")
    tiny.tiny_sd_pipeline().save_pretrained(snap)
    for f in (snap / "tokenizer").iterdir():
        if f.name != "tokenizer_config.json":
            f.unlink()
    rec = _Recorder(monkeypatch)
    with pytest.raises(TokenizerError, match=r"only \d tokens.*ANOPLUG_ALLOW_DOWNLOAD=1"):
        load_pipeline("anoplug-tests/partial", cache_dir=str(tmp_path / "cache"))
    assert rec.calls == []


GUARD = textwrap.dedent('''
    import socket, sys
    log = open(sys.argv.pop(1), "w")
    def refuse(*a, **k):
        log.write(repr(a[:2]) + "\\n"); log.flush()
        raise OSError("refused by the test")
    socket.getaddrinfo = socket.create_connection = socket.socket.connect = socket.socket.connect_ex = refuse
    from anoplug.cli import main
    sys.exit(main())
''')


def test_load_dir_naming_a_hub_model_makes_no_connection(tmp_path):
    """`anoplug generate NAME --load DIR` whose config.json names a hub model: exit 2, one line, no DNS."""
    pytest.importorskip("anoplug_anomalydiffusion")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "config.json").write_text(json.dumps({
        "name": "anomalydiffusion", "version": "0.1", "fitted": True, "anomaly_types": ["crack"],
        "params": {"base_model": "CompVis/ldm-text2im-large-256"}}))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ANOPLUG_ALLOW_DOWNLOAD")}
    env.update(HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    log = tmp_path / "connections.log"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", GUARD, str(log), "generate", "anomalydiffusion", "--load", str(saved),
                        "--data", "toy:metal", "-n", "1", "--size", "64", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert log.read_text() == "", f"connection attempts: {log.read_text()}"
    assert r.returncode == 2, (r.stdout, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("anoplug:")]
    assert len(errors) == 1 and "CompVis/ldm-text2im-large-256" in errors[0] and "ANOPLUG_ALLOW_DOWNLOAD=1" in errors[0]
    assert "HF_HUB_OFFLINE" not in r.stderr
    assert time.perf_counter() - t0 < 120
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))
