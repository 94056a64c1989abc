"""The ``Generator`` contract: what every anomaly-generation method implements.

Sampling is split from applying (as in kornia's augmentations): :meth:`Generator.sample`
draws every random choice per sample from that sample's own ``torch.Generator``;
:meth:`Generator.apply` is pure and batched. This gives determinism per sample whatever
the batch size, fast kernels, and provenance for free (sampled parameters go to ``meta``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from anoplug._version import __version__ as host_version
from anoplug.params import ParamError, Params
from anoplug.seeding import resolve_seeds, rngs_for
from anoplug.serial import Samples
from anoplug.types import Batch, BatchError

__all__ = ["Paper", "Requires", "Generator", "FeatureGenerator", "NotFittedError", "Samples"]


@dataclass(frozen=True)
class Paper:
    """Where a method comes from."""

    title: str
    venue: str = ""
    year: int = 0
    url: str = ""
    code_url: str = ""


@dataclass(frozen=True)
class Requires:
    """What a method needs before it can generate, and which per-sample conditions it reads.

    ``conditions`` must be set on ``batch.conditions`` for every call; ``accepts`` may be
    (both name fields of :class:`anoplug.conditions.Conditions`). A condition that is set
    but in neither is an error, so nothing a user asked for is silently ignored. Depth is a
    property of the image (``batch.depth``), not a condition: ``depth`` says a method needs
    it, ``accepts_depth`` that it reads it when present (``anoplug generate --depth DIR`` is
    refused for a method with neither).
    """

    fit: bool = False  # must be trained (``fit``) or loaded first
    anomalies: bool = False  # needs reference (real) anomalies to fit
    depth: bool = False  # needs a depth map per sample (``batch.depth``)
    accepts_depth: bool = False  # reads ``batch.depth`` when it is there (else estimates or does without)
    object_mask: bool = False  # needs a foreground mask (``batch.object_mask``)
    weights: str = ""  # pretrained weights it can use (name), "" if none
    conditions: tuple[str, ...] = ()  # required per-sample conditions
    accepts: tuple[str, ...] = ()  # optional per-sample conditions it honours

    def __post_init__(self) -> None:
        from anoplug.conditions import CONDITION_NAMES

        for name in (*self.conditions, *self.accepts):
            if name not in CONDITION_NAMES:
                raise ValueError(f"Requires: unknown condition {name!r}; known: {', '.join(CONDITION_NAMES)}")

    @property
    def uses(self) -> tuple[str, ...]:
        """Every condition the method reads (required first)."""
        return tuple(dict.fromkeys((*self.conditions, *self.accepts)))

    @property
    def reads_depth(self) -> bool:
        """Reads ``batch.depth`` (needs it or accepts it): a user's ``--depth`` maps reach it."""
        return self.depth or self.accepts_depth

    @property
    def text(self) -> bool:
        """Needs a text prompt per sample."""
        return "prompt" in self.conditions

    @property
    def paired_source(self) -> bool:
        """Borrows content from a second normal image: drivers attach ``conditions.source_image``."""
        return "source_image" in self.uses


class NotFittedError(RuntimeError):
    """A learned generator was asked to generate before ``fit`` or ``load``."""


def _one_line(e: BaseException) -> str:
    """An exception as one line: its message (or its type when the message is empty)."""
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "floating" if dtype.is_floating_point else "integer"


def _listed(keys: Sequence[str], limit: int = 4) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _weight_problems(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                     extra: dict[str, torch.Tensor], module_names: set[str]) -> list[str]:
    """What keeps ``tensors`` (read from a file) from loading into ``expected`` modules and ``extra`` state.

    Extra tensors are checked only when the generator already knows them (``extra`` not empty);
    otherwise its ``load_extra_state`` decides.
    """
    want = {**expected, **extra}
    problems = []
    missing = [k for k in want if k not in tensors]
    unexpected = [k for k in tensors if k not in want and (k.partition(".")[0] in module_names
                                                           or not k.startswith("extra.") or extra)]
    if missing:
        problems.append(f"missing {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    for k in sorted(set(want) & set(tensors)):
        have, need = tensors[k], want[k]
        if tuple(have.shape) != tuple(need.shape):
            problems.append(f"{k} has shape {list(have.shape)} in the file, {list(need.shape)} expected")
        elif _kind(have.dtype) != _kind(need.dtype):
            problems.append(f"{k} is {str(have.dtype).removeprefix('torch.')} in the file, "
                            f"a {_kind(need.dtype)} tensor ({str(need.dtype).removeprefix('torch.')}) expected")
    return problems


class Generator:
    """Base class of image-level anomaly generators.

    Subclasses set the class attributes and implement :meth:`sample` and :meth:`apply`.
    Methods with their own sampling loop (diffusion, GANs) override :meth:`generate_batch`
    instead; learned methods subclass :class:`anoplug.learned.LearnedGenerator`.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    category: ClassVar[str] = ""
    tags: ClassVar[tuple[str, ...]] = ()
    paper: ClassVar[Paper] = Paper("")
    Params: ClassVar[type[Params]] = Params
    requires: ClassVar[Requires] = Requires()
    version: ClassVar[str] = "0.1.0"
    level: ClassVar[str] = "image"
    #: True when pixels outside the returned mask are bit-identical to the input
    #: (the conformance kit then checks it).
    preserves_outside_mask: ClassVar[bool] = False
    #: True when the returned mask says where each defect is. A method that makes an anomalous image
    #: without locating its defect (image-level label only, e.g. an unconditional DDPM of defect
    #: images) sets False: its ``mask`` is all zeros and means "unknown", not "no defect pixels";
    #: each sample's meta says ``provides_mask: False``, the writer writes no ground-truth file and
    #: records ``"mask": null``, and mask-reading evaluators refuse it. A method whose parameters
    #: decide it (an optional derived mask) overrides :meth:`mask_provided`.
    provides_mask: ClassVar[bool] = True
    #: checkpoints shipped inside the plugin package: name -> directory (written by :meth:`save`),
    #: relative to the defining module's folder. The first is the default of :meth:`from_pretrained`
    #: and of ``anoplug generate`` without ``--fit``/``--load``.
    pretrained: ClassVar[dict[str, str]] = {}
    #: a small configuration of the same code for install checks, which generate two 64² images with it
    #: in seconds (``tests/test_plugin_wheels.py``): e.g. a method that optimises 76 steps per image at
    #: 512² declares ``{"preset": "cpu", "steps": 2}``. For a learned generator only settings read at
    #: generation time belong here (they are applied over the shipped checkpoint's parameters).
    smoke_params: ClassVar[dict[str, Any]] = {}
    #: parameters read only at generation time (sampling steps, guidance, edit strength, ...): the ones
    #: :meth:`with_generation_params` and ``anoplug generate -p`` may change on a fitted, loaded or
    #: shipped model. Everything else describes the trained weights and stays as saved.
    generation_params: ClassVar[tuple[str, ...]] = ()
    #: named parameter sets (``preset`` name -> field values) of a method whose ``preset`` parameter
    #: fills the fields a user leaves out. A saved model has every field, so the preset validator
    #: fills nothing there: :meth:`with_generation_params` applies the set's generation-time fields
    #: itself (explicit overrides still win), so ``-p preset=cpu`` on a shipped checkpoint switches.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, params: Params | dict | None = None, **kwargs: Any) -> None:
        if params is not None and kwargs:
            raise ParamError("pass either a Params object or keyword parameters, not both")
        if isinstance(params, Params):
            if not isinstance(params, self.Params):
                raise ParamError(f"{self.name}: expected {self.Params.__name__}, got {type(params).__name__}")
            self.params = params
        else:
            self.params = self.Params.parse(**(params or kwargs))
        self.device = torch.device("cpu")
        self._fitted = not self.requires.fit

    # -- to implement -------------------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples | list[dict]:
        """Draw every random choice for each sample (one record per sample, from its own rng)."""
        raise NotImplementedError

    def apply(self, batch: Batch, samples: Samples) -> Batch:
        """Apply the drawn choices to the whole batch, deterministically and batched.

        Per-sample conditions are read from ``batch.conditions``.
        """
        raise NotImplementedError

    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        """One batch: draw (unless ``samples`` replays earlier draws), then apply.

        The one method a method with its own sampling loop overrides: it draws its
        choices with :meth:`sample` unless ``samples`` is given, draws its noise from
        ``rngs`` (one per sample) and returns the output with the records it used. When
        the noise comes from the same per-sample rng *after* ``sample()``'s draws, still
        call ``sample()`` on replay (and discard it), so every rng is where its noise starts.
        """
        if samples is None:
            samples = Samples(self.sample(batch, rngs))
        return self.apply(batch, samples), samples

    # -- public -----------------------------------------------------------------------
    def check_conditions(self, batch: Batch) -> None:
        """Raise :class:`~anoplug.conditions.ConditionError` for a missing or unused condition."""
        from anoplug.conditions import ConditionError

        given = batch.conditions.present()
        missing = [c for c in self.requires.conditions if c not in given]
        if missing:
            raise ConditionError(f"{self.name} needs conditions.{missing[0]} on the batch "
                                 f"(requires: {', '.join(self.requires.conditions)})")
        unused = [c for c in given if c not in self.requires.uses]
        if unused:
            uses = ", ".join(self.requires.uses) or "none"
            raise ConditionError(f"{self.name} does not use conditions.{unused[0]} (it uses: {uses})")

    def generate(self, batch: Batch, *, generator: torch.Generator | None = None, seed: int | None = None,
                 seeds: Sequence[int] | None = None, samples: Sequence[dict] | None = None) -> Batch:
        """Return a new batch with synthetic anomalies (and their masks and labels).

        Randomness comes from exactly one of ``generator``, ``seed`` (sample *i* seeded
        from ``(seed, i)``) or ``seeds`` (one per sample); ``samples`` (the records of an
        earlier call, ``out.samples``) replays those draws. Conditions ride on
        ``batch.conditions``; the input is never modified.
        """
        if not isinstance(batch, Batch):
            raise BatchError(f"{self.name}.generate expects an anoplug.Batch, got {type(batch).__name__}")
        batch.validate()
        if not self.is_fitted:
            raise NotFittedError(f"generator {self.name!r} must be fitted (fit) or loaded (load) before generate")
        self.check_conditions(batch)
        if samples is not None:
            samples = Samples(samples)
            if len(samples) != len(batch):
                raise ValueError(f"samples has {len(samples)} records for {len(batch)} images")
        per_sample = resolve_seeds(len(batch), generator=generator, seed=seed, seeds=seeds)
        out, drawn = self.generate_batch(batch.to(self.device), rngs_for(per_sample), samples)
        out.validate(values=False)  # structure only; the conformance kit checks values
        if len(drawn) != len(out):
            raise RuntimeError(f"{self.name}: {len(drawn)} sample records for {len(out)} outputs")
        out.conditions = batch.conditions  # the output answers what was asked of the input
        pdict = self.params.model_dump(mode="json")
        masked = self.mask_provided()
        if not masked and bool(out.mask.any()):
            raise RuntimeError(f"{self.name} declares that it provides no mask (provides_mask = False) but returned "
                               "a non-empty one: return zeros, or declare the mask")
        for i, m in enumerate(out.meta):
            m.update(method=self.name, method_version=self.version, params=pdict, seed=per_sample[i], sample=drawn[i])
            if not masked:
                m["provides_mask"] = False  # absent means True: the mask locates the defect
        return out

    def mask_provided(self) -> bool:
        """Whether *this* configured instance's masks locate its defects (default: the class's ``provides_mask``)."""
        return bool(type(self).provides_mask)

    @property
    def is_fitted(self) -> bool:
        """False for a learned method until ``fit`` or ``load``; always True for procedural ones."""
        return self._fitted

    def __call__(self, batch: Batch, **kw: Any) -> Batch:
        return self.generate(batch, **kw)

    def fit(self, normals: Batch, anomalies: Batch | None = None, *, steps: int | None = None,
            progress: Callable[[int, int, dict], None] | None = None) -> Generator:
        """Train a learned method; procedural methods have nothing to fit."""
        if self.requires.fit:
            raise NotImplementedError(f"{type(self).__name__} must implement fit()")
        return self

    def to(self, device: str | torch.device) -> Generator:
        self.device = torch.device(device)
        for m in self.modules().values():
            m.to(self.device)
        return self

    # -- persistence ----------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """Learned modules whose weights ``save``/``load`` persist (none for procedural methods)."""
        return {}

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Learned tensors that are not modules (e.g. textual-inversion embeddings)."""
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            raise ValueError(f"{self.name}: unexpected extra tensors {sorted(tensors)}")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "host_version": host_version,
                "params": self.params.model_dump(mode="json"), "fitted": self.is_fitted}

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``weights.safetensors`` (never pickle)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {f"{k}.{n}": t.detach().cpu().contiguous() for k, m in self.modules().items()
                   for n, t in m.state_dict().items()}
        tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in self.extra_state().items()})
        tmp = d / "weights.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"anoplug_method": self.name})
        tmp.replace(d / "weights.safetensors")
        ctmp = d / "config.json.tmp"
        ctmp.write_text(json.dumps(self.config(), indent=2, sort_keys=True))
        ctmp.replace(d / "config.json")
        return d

    def mark_fitted(self, fitted: bool = True) -> Generator:
        """Declare the weights trained when they came from outside :meth:`fit`: a saved directory read by a
        plugin's own ``load``, or a converted third-party model (e.g. a diffusers folder)."""
        self._fitted = bool(fitted)
        return self

    def restore_config(self, config: dict[str, Any]) -> None:
        """Rebuild what ``config`` (written by :meth:`config`) describes before weights load.

        Learned methods whose module shapes depend on what they were fitted on (anomaly
        types, classes, image size) override this; the base has nothing to rebuild.
        """

    @classmethod
    def pretrained_path(cls, name: str | None = None) -> Path:
        """The directory of shipped checkpoint ``name`` (default: the first of :attr:`pretrained`)."""
        import sys

        if not cls.pretrained:
            raise ValueError(f"{cls.name} ships no pretrained checkpoint")
        key = next(iter(cls.pretrained)) if name is None else name
        if key not in cls.pretrained:
            raise ValueError(f"{cls.name} ships no checkpoint {key!r}; it ships: {', '.join(cls.pretrained)}")
        return Path(sys.modules[cls.__module__].__file__).parent / cls.pretrained[key]

    @classmethod
    def generation_param_names(cls) -> tuple[str, ...]:
        """:attr:`generation_params`; for a training-free method that declares none, every parameter
        (nothing it saves describes learned weights, so nothing has to stay as saved)."""
        if cls.generation_params or cls.requires.fit:
            return tuple(cls.generation_params)
        return tuple(cls.Params.model_fields)

    def with_generation_params(self, **overrides: Any) -> Generator:
        """This generator with generation-time parameters changed (validated; the weights untouched).

        A name outside :attr:`generation_params` is a :class:`ParamError` naming it and the allowed
        ones: changing, say, a network width after training would describe weights that do not exist.
        """
        names = self.generation_param_names()
        if overrides.get("preset") in self.presets:  # its generation-time settings; trained ones stay as saved
            chosen = self.presets[overrides["preset"]]
            overrides = {**{k: v for k, v in chosen.items() if k in names}, **overrides}
        other = [k for k in overrides if k not in names]
        if other:
            allowed = ", ".join(names) or "none"
            raise ParamError(f"{self.name}: {', '.join(map(repr, other))} describe{'s' if len(other) == 1 else ''} the "
                             f"trained model and cannot change after fitting; generation-time parameters: {allowed}")
        self.params = self.Params.parse(**{**self.params.model_dump(), **overrides})
        return self

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path | None = None) -> Generator:
        """A shipped checkpoint by name (default: the first), or any directory written by :meth:`save`."""
        if name_or_dir is None or str(name_or_dir) in cls.pretrained:
            return cls.load(cls.pretrained_path(None if name_or_dir is None else str(name_or_dir)))
        if Path(name_or_dir).is_dir():
            return cls.load(name_or_dir)
        shipped = ", ".join(cls.pretrained) or "none"
        raise ValueError(f"{cls.name}: {str(name_or_dir)!r} is neither a shipped checkpoint (shipped: {shipped}) "
                         "nor a directory written by save()")

    @classmethod
    def load(cls, directory: str | Path) -> Generator:
        """Rebuild a generator saved with :meth:`save`."""
        d = Path(directory)
        cfg_path = d / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"no config.json in {d}")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"corrupt {cfg_path}: {e}") from e
        if not isinstance(cfg, dict):
            raise ValueError(f"corrupt {cfg_path}: expected a JSON object, got {type(cfg).__name__}")
        if cfg.get("name") != cls.name:
            raise ValueError(f"{cfg_path} holds generator {cfg.get('name')!r}, not {cls.name!r}")
        obj = cls(**cfg.get("params", {}))
        obj.restore_config(cfg)
        obj.load_weights(d)
        return obj.mark_fitted(bool(cfg.get("fitted", True)))

    def load_weights(self, directory: str | Path) -> None:
        """Read ``weights.safetensors`` of ``directory`` into this generator's modules and extra state.

        Everything is checked before anything is loaded: a missing, unexpected or mis-shaped
        tensor, or an integer/bool tensor where a floating one belongs (or the reverse), is one
        :class:`ValueError` naming the file and the key.
        """
        from safetensors.torch import load_file

        wpath = Path(directory) / "weights.safetensors"
        try:
            tensors = load_file(str(wpath)) if wpath.is_file() else {}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"cannot read weights {wpath}: {e}") from e
        modules = self.modules()
        expected = {f"{k}.{n}": t for k, m in modules.items() for n, t in m.state_dict().items()}
        try:
            extra = {f"extra.{k}": v for k, v in self.extra_state().items()}
        except Exception:  # not built yet: load_extra_state decides what it accepts
            extra = {}
        if not wpath.is_file() and (expected or extra):
            raise ValueError(f"no weights file {wpath}: {self.name} needs {_listed(list({**expected, **extra}))}")
        problems = _weight_problems(tensors, expected, extra, set(modules))
        if problems:
            raise ValueError(f"weights {wpath} do not fit {self.name}: {'; '.join(problems)}")
        for key, module in modules.items():
            sd = {n[len(key) + 1:]: t for n, t in tensors.items() if n.startswith(key + ".")}
            try:
                module.load_state_dict(sd)
            except RuntimeError as e:
                raise ValueError(f"weights in {wpath} do not fit module {key!r}: {_one_line(e)}") from e
        try:
            self.load_extra_state({k[6:]: v for k, v in tensors.items() if k.startswith("extra.")})
        except KeyError as e:
            raise ValueError(f"weights {wpath} do not fit {self.name}: missing extra.{e.args[0] if e.args else e}") from e
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            raise ValueError(f"weights {wpath} do not fit {self.name}: extra state: {_one_line(e)}") from e

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


class FeatureGenerator(Generator):
    """Feature-level generators perturb a backbone's features, not pixels.

    They implement :meth:`generate_features`; there is no anomalous image to show.
    """

    level: ClassVar[str] = "feature"

    def generate_features(self, features: torch.Tensor, *, generator: torch.Generator | None = None,
                          seed: int | None = None, seeds: Sequence[int] | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (perturbed features ``[B,C,h,w]``, mask ``[B,1,h,w]`` or ``None``)."""
        raise NotImplementedError

    def generate(self, batch: Batch, **kw: Any) -> Batch:
        raise NotImplementedError(f"{self.name} is feature-level: use generate_features(features, ...)")
