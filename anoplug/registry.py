"""The plugin registry: one pluggy manager, isolated loading, name lookup.

Each entry point of group ``anoplug`` is loaded in its own try/except and each
hookimpl is called individually (the CLI-verb hook too, when the parser is built), so one
broken plugin is recorded (and shown by ``anoplug plugins``) but never breaks the host.
``ANOPLUG_STRICT_PLUGINS=1`` re-raises.

Isolation covers every ``BaseException`` that plugin code raises, not only ``Exception``: a
module that calls ``sys.exit(3)`` at import, or raises ``KeyboardInterrupt`` or
``GeneratorExit`` in a hook, is recorded as ``"SystemExit: 3 (raised at import)"`` and the
command carries on. A plugin that implements a hook the host does not have (a removed
observer hook such as ``anoplug_before_generate``, or a misspelt name) is recorded too, naming
the hook: that implementation would never be called. (A hookimpl marked ``optionalhook=True``
is left alone, so a plugin can implement a hook a newer host adds.)

A real Ctrl-C while plugins load still interrupts. A ``KeyboardInterrupt`` raised by the
plugin's own code looks the same as one raised by Python's SIGINT handler, so while plugin
code runs the registry chains a small SIGINT handler that counts the signals that really
arrived: a ``KeyboardInterrupt`` with a SIGINT behind it propagates, one without is the
plugin's and marks it broken. Where no SIGINT can turn into a ``KeyboardInterrupt`` (another
thread than the main one, or SIGINT ignored or left to the OS), every ``KeyboardInterrupt``
comes from plugin code and is recorded. Loading only imports light modules and calls
registration hooks, so a real Ctrl-C usually lands between plugins, in host code, where it
propagates unchanged.

When a registered class is imported on first use (``load_spec``, ``generator_class``, ``get_evaluator``),
a ``SystemExit`` or ``GeneratorExit`` from that import becomes a :class:`PluginError` naming
the generator and its distribution; ``KeyboardInterrupt`` propagates there, because the
import can take seconds (torch) and a Ctrl-C during it is most likely the user's.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import signal
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pluggy

from anoplug import hookspecs
from anoplug._version import API_VERSION
from anoplug.specs import CATEGORIES, DatasetSpec, EvaluatorSpec, GeneratorSpec

ENTRY_POINT_GROUP = "anoplug"
BUILTIN_PLUGINS = ("anoplug.builtin",)

_KINDS = {
    "generators": ("anoplug_generators", GeneratorSpec),
    "evaluators": ("anoplug_evaluators", EvaluatorSpec),
    "datasets": ("anoplug_datasets", DatasetSpec),
}


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered (raised in strict mode)."""


class UnknownNameError(LookupError):
    """No generator/evaluator/dataset of that name is registered."""

    def __str__(self) -> str:  # KeyError-style quoting is unhelpful on a CLI
        return str(self.args[0])


@dataclass
class PluginStatus:
    """One row of ``anoplug plugins``."""

    name: str
    distribution: str = ""
    version: str = ""
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str = ""
    traceback: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distribution": self.distribution or "(registered in code)", "version": self.version,
                "provides": self.provides, "status": "ok" if self.ok else "error", "error": self.error}


def _env_list(var: str) -> list[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return [x.strip() for x in raw.split(",") if x.strip()]


#: hooks that existed in earlier versions of the contract (see docs/plugin_hooks.md, "Removed hooks").
REMOVED_HOOKS = ("anoplug_configure", "anoplug_make_explorer", "anoplug_before_generate", "anoplug_after_generate",
                 "anoplug_on_generate_error")


def _describe(e: BaseException, where: str) -> str:
    """``"Type: message"`` for an ordinary error; a ``BaseException`` also says where it was raised."""
    msg = str(e)
    if isinstance(e, Exception):
        return f"{type(e).__name__}: {msg}" if msg else f"{type(e).__name__} raised {where}"
    return f"{type(e).__name__}: {msg} (raised {where})" if msg else f"{type(e).__name__} raised {where}"


class _InterruptWatch:
    """While active, counts the SIGINTs that really arrive (then runs the previous handler as before).

    Lets the registry tell a user's Ctrl-C (propagate) from a ``KeyboardInterrupt`` that plugin
    code raised itself (record the plugin as broken). Installed only in the main thread and only
    over a Python-level handler: elsewhere a SIGINT never becomes a ``KeyboardInterrupt``.
    """

    def __init__(self) -> None:
        self.signals = 0
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _InterruptWatch:
        if threading.current_thread() is not threading.main_thread():
            return self
        try:
            previous = signal.getsignal(signal.SIGINT)
        except (ValueError, AttributeError):  # pragma: no cover - platforms without SIGINT
            return self
        if not callable(previous):  # SIG_IGN / SIG_DFL / set outside Python
            return self

        def counting(signum: int, frame: Any) -> Any:
            self.signals += 1
            return previous(signum, frame)

        try:
            signal.signal(signal.SIGINT, counting)
        except ValueError:  # pragma: no cover - not the main interpreter
            return self
        self._previous, self._installed = previous, True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


def _strict() -> bool:
    return os.environ.get("ANOPLUG_STRICT_PLUGINS", "") not in ("", "0", "false")


def check_api_version(spec_version: str, what: str) -> None:
    """Refuse another major version; warn about a newer minor one."""
    try:
        smaj, smin = (int(x) for x in str(spec_version).split(".")[:2])
        hmaj, hmin = (int(x) for x in API_VERSION.split(".")[:2])
    except ValueError:
        raise PluginError(f"{what}: malformed api_version {spec_version!r} (expected 'MAJOR.MINOR')") from None
    if smaj != hmaj:
        raise PluginError(f"{what}: plugin API {spec_version} is incompatible with host API {API_VERSION}")
    if smin > hmin:
        warnings.warn(f"{what}: plugin API {spec_version} is newer than host API {API_VERSION}", stacklevel=2)


class Registry:
    """Owns the plugin manager and the name → spec tables."""

    def __init__(self, *, discover: bool = True, builtins: bool = True) -> None:
        self.pm = pluggy.PluginManager("anoplug")
        self.pm.add_hookspecs(hookspecs)
        self.status: dict[str, PluginStatus] = {}
        self._tables: dict[str, dict[str, tuple[Any, str]]] = {k: {} for k in _KINDS}
        self._conflicts: dict[str, dict[str, list[str]]] = {k: {} for k in _KINDS}
        self._watch: _InterruptWatch | None = None
        with self._watching():
            if builtins:
                for mod in BUILTIN_PLUGINS:
                    self._load_module(mod, mod, "anoplug", _host_version())
            if discover:
                self._discover()

    @contextmanager
    def _watching(self) -> Iterator[None]:
        """Run plugin code under an :class:`_InterruptWatch` (a real Ctrl-C then still interrupts)."""
        outer = self._watch
        with _InterruptWatch() as watch:
            self._watch = watch
            try:
                yield
            finally:
                self._watch = outer

    # -- loading ------------------------------------------------------------------------
    def _discover(self) -> None:
        only = _env_list("ANOPLUG_LOAD_PLUGINS")
        disabled = set(_env_list("ANOPLUG_DISABLE_PLUGINS") or [])
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else ""
            if only is not None and ep.name not in only and dist not in only:
                continue
            if ep.name in disabled or dist in disabled:
                continue
            version = ep.dist.version if ep.dist else ""
            self._load(ep.name, dist, version, ep.load)

    def _load_module(self, name: str, module: str, dist: str, version: str) -> None:
        import importlib

        self._load(name, dist, version, lambda: importlib.import_module(module))

    def _load(self, name: str, dist: str, version: str, loader) -> None:
        st = PluginStatus(name=name, distribution=dist, version=version)
        self.status[name] = st
        try:
            plugin = loader()
            self.pm.register(plugin, name=name)
        except BaseException as e:  # SystemExit, KeyboardInterrupt... from plugin code: see the module docstring
            self._fail(st, e, "at import")
            return
        self._collect(name, plugin, st)

    def _fail(self, st: PluginStatus, e: BaseException, where: str = "") -> None:
        """Record ``e`` (raised by plugin code) on ``st``; re-raise a real Ctrl-C, or anything in strict mode."""
        if isinstance(e, KeyboardInterrupt) and self._watch is not None and self._watch.signals:
            raise e  # the user pressed Ctrl-C: stop loading
        error = _describe(e, where or "by the plugin")
        if error not in st.error:  # add_commands runs again for each parser built: record an error once
            st.error = f"{st.error}; {error}" if st.error else error
        st.traceback = "".join(traceback.format_exception(e))
        if _strict():
            raise PluginError(f"plugin {st.name!r} ({st.distribution}) failed: {error}") from e

    def _unknown_hooks(self, plugin: Any) -> list[str]:
        """Hooks ``plugin`` implements that the host does not specify (never called), except optional ones."""
        unknown = []
        for caller in self.pm.get_hookcallers(plugin) or []:
            if caller.has_spec():
                continue
            if all(i.optionalhook for i in caller.get_hookimpls() if i.plugin is plugin):
                continue
            unknown.append(caller.name)
        return sorted(unknown)

    def _collect(self, name: str, plugin: Any, st: PluginStatus) -> None:
        """Call each registration hook of one plugin individually and file its specs."""
        for hook_name in self._unknown_hooks(plugin):
            why = ("was removed from the anoplug hooks (docs/plugin_hooks.md, 'Removed hooks')"
                   if hook_name in REMOVED_HOOKS else "is not an anoplug hook")
            known = ", ".join(sorted(h for h in dir(hookspecs) if h.startswith("anoplug_")))
            self._fail(st, PluginError(f"hook {hook_name} {why}, so this implementation is never called "
                                       f"(anoplug hooks: {known})"))
        for kind, (hook_name, spec_type) in _KINDS.items():
            impls = [i for i in getattr(self.pm.hook, hook_name).get_hookimpls() if i.plugin is plugin]
            for impl in impls:
                try:
                    specs = list(impl.function() or [])
                    for spec in specs:
                        if not isinstance(spec, spec_type):
                            raise PluginError(f"{hook_name} returned {type(spec).__name__}, expected {spec_type.__name__}")
                        check_api_version(spec.api_version, f"{kind[:-1]} {spec.name!r}")
                        if kind == "generators" and spec.category not in CATEGORIES:
                            raise PluginError(f"generator {spec.name!r}: unknown category {spec.category!r}; "
                                              f"known: {', '.join(CATEGORIES)}")
                    for spec in specs:
                        self._add(kind, spec, st)
                except BaseException as e:  # plugin code: see the module docstring
                    self._fail(st, e, f"in {hook_name}")

    def _add(self, kind: str, spec: Any, st: PluginStatus) -> None:
        table = self._tables[kind]
        owner = st.distribution or st.name
        if spec.name in table or spec.name in self._conflicts[kind]:
            others = self._conflicts[kind].get(spec.name) or [table.pop(spec.name)[1]]
            self._conflicts[kind][spec.name] = [*others, owner]
            msg = f"duplicate {kind[:-1]} name {spec.name!r} provided by {' and '.join(self._conflicts[kind][spec.name])}"
            for s in self.status.values():
                if (s.distribution or s.name) in self._conflicts[kind][spec.name] and msg not in s.error:
                    s.error = f"{s.error}; {msg}" if s.error else msg
            if _strict():
                raise PluginError(msg)
            return
        table[spec.name] = (spec, owner)
        st.provides.setdefault(kind, []).append(spec.name)

    # -- registering from code ----------------------------------------------------------
    def register(self, obj: Any, name: str | None = None) -> str:
        """Register a plugin object (module or instance with ``@hookimpl`` methods).

        For plugins defined in a notebook cell. Errors raise immediately (no isolation:
        the user is right there). A duplicate name raises naming both owners.
        """
        name = name or getattr(obj, "__name__", None) or f"{type(obj).__name__}-{id(obj):x}"
        st = PluginStatus(name=name)  # no distribution: owner shown by plugin name
        for kind, (hook_name, spec_type) in _KINDS.items():  # validate before touching state
            fn = getattr(obj, hook_name, None)
            for spec in (fn() or []) if fn else []:
                if not isinstance(spec, spec_type):
                    raise PluginError(f"{hook_name} returned {type(spec).__name__}, expected {spec_type.__name__}")
                check_api_version(spec.api_version, f"{kind[:-1]} {spec.name!r}")
                if spec.name in self._tables[kind]:
                    raise PluginError(f"duplicate {kind[:-1]} name {spec.name!r}: already provided by "
                                      f"{self._tables[kind][spec.name][1]}, now also by {name}")
        self.pm.register(obj, name=name)
        self.status[name] = st
        old = os.environ.pop("ANOPLUG_STRICT_PLUGINS", None)
        try:
            with self._watching():  # a kernel interrupt during the hooks still interrupts
                self._collect(name, obj, st)
        finally:
            if old is not None:
                os.environ["ANOPLUG_STRICT_PLUGINS"] = old
        if st.error:
            self.unregister(name)
            raise PluginError(st.error)
        return name

    def unregister(self, name: str) -> None:
        st = self.status.pop(name, None)
        if st is not None:
            for kind, names in st.provides.items():
                for n in names:
                    self._tables.get(kind, {}).pop(n, None)  # "commands" live on the parser, not in a table
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)

    # -- lookup ---------------------------------------------------------------------------
    def specs(self, kind: str) -> dict[str, Any]:
        return {n: s for n, (s, _) in sorted(self._tables[kind].items())}

    def spec(self, kind: str, name: str) -> Any:
        if name in self._conflicts[kind]:
            raise PluginError(f"{kind[:-1]} name {name!r} is provided by several plugins: "
                              f"{' and '.join(self._conflicts[kind][name])}; disable one with ANOPLUG_DISABLE_PLUGINS")
        try:
            return self._tables[kind][name][0]
        except KeyError:
            known = ", ".join(sorted(self._tables[kind])) or "(none installed)"
            raise UnknownNameError(f"unknown {kind[:-1]} {name!r}; available: {known}") from None

    def owner(self, kind: str, name: str) -> str:
        return self._tables[kind][name][1]

    def load_spec(self, kind: str, name: str) -> Any:
        """``spec.load()`` (imports the plugin's module); a ``SystemExit`` there becomes a :class:`PluginError`."""
        spec = self.spec(kind, name)
        try:
            return spec.load()
        except (Exception, KeyboardInterrupt):  # ordinary errors as they are; Ctrl-C is most likely the user's
            raise
        except BaseException as e:
            raise PluginError(f"{kind[:-1]} {name!r} ({self.owner(kind, name)}): loading {spec.factory!r} "
                              f"raised {_describe(e, 'at import')}") from e

    def generator_class(self, name: str) -> type:
        spec = self.spec("generators", name)
        cls = self.load_spec("generators", name)
        if getattr(cls, "name", None) != spec.name:
            raise PluginError(f"generator spec {spec.name!r} loads class {cls.__qualname__} named {getattr(cls, 'name', None)!r}")
        return cls

    def get_generator(self, name: str, **params: Any) -> Any:
        return self.generator_class(name)(**params)

    def get_evaluator(self, name: str, **params: Any) -> Any:
        return self.load_spec("evaluators", name)(**params)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    # -- CLI verbs ------------------------------------------------------------------------
    def add_commands(self, subparsers: Any) -> dict[str, Callable[[Any], int]]:
        """Let every plugin add its verbs to ``subparsers`` (``anoplug_commands``); returns verb -> handler.

        Each implementation runs on its own. One that raises, adds a verb without a
        ``handler`` default, or replaces a verb that exists is recorded on its plugin's status
        (``anoplug plugins``); the verbs it did add then answer with that error, and every
        other verb works as before.
        """
        with self._watching():
            return self._add_commands(subparsers)

    def _add_commands(self, subparsers: Any) -> dict[str, Callable[[Any], int]]:
        handlers: dict[str, Callable[[Any], int]] = {}
        for impl in self.pm.hook.anoplug_commands.get_hookimpls():
            name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            st = self.status.setdefault(name, PluginStatus(name=name))
            before = dict(subparsers.choices)
            added: list[str] = []
            try:
                impl.function(subparsers=subparsers)
                added = [v for v in subparsers.choices if v not in before]
                replaced = [v for v, parser in before.items() if subparsers.choices.get(v) is not parser]
                if replaced:
                    subparsers.choices.update({v: before[v] for v in replaced})
                    raise PluginError(f"command {replaced[0]!r} already exists")
                mine = {v: subparsers.choices[v].get_default("handler") for v in added}
                missing = [v for v, h in mine.items() if not callable(h)]
                if missing:
                    raise PluginError(f"command {missing[0]!r} has no handler: call set_defaults(handler=FUNC) on its parser")
            except BaseException as e:  # plugin code: see the module docstring
                added = added or [v for v in subparsers.choices if v not in before]
                self._fail(st, e, "in anoplug_commands")
                handlers.update({v: _failed_command(v, st) for v in added})
                continue
            handlers.update(mine)
            if added:
                st.provides["commands"] = added
        return handlers


def _host_version() -> str:
    from anoplug._version import __version__

    return __version__


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = Registry()
    return _registry


def set_registry(reg: Registry | None) -> Registry | None:
    """Swap the process-wide registry (tests use an isolated one); returns the previous."""
    global _registry
    old, _registry = _registry, reg
    return old


def _failed_command(verb: str, st: PluginStatus) -> Callable[[Any], int]:
    def handler(args: Any) -> int:
        raise PluginError(f"command {verb!r} of plugin {st.name!r} failed to register: {st.error}")

    return handler
