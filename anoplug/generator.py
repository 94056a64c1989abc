"""The ``Generator`` contract: what every anomaly-generation method implements.

Sampling is split from applying (as in kornia's augmentations): :meth:`Generator.sample`
draws every random choice per sample from that sample's own ``torch.Generator``;
:meth:`Generator.apply` is pure and batched. This gives determinism per sample whatever
the batch size, fast kernels, and provenance for free (sampled parameters go to ``meta``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from anoplug._version import __version__ as host_version
from anoplug.params import ParamError, Params
from anoplug.seeding import resolve_seeds, rngs_for
from anoplug.types import Batch, BatchError

__all__ = ["Paper", "Requires", "Generator", "FeatureGenerator", "NotFittedError", "jsonable"]


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
    """What a method needs before it can generate."""

    fit: bool = False  # must be trained (``fit``) or loaded first
    anomalies: bool = False  # needs reference (real) anomalies to fit
    text: bool = False  # needs a text prompt per sample
    depth: bool = False  # needs a depth map per sample
    object_mask: bool = False  # needs a foreground mask
    weights: str = ""  # pretrained weights it can use (name), "" if none
    #: draws content from a second normal image (NSA's patch source): callers that need
    #: per-sample reproducibility (the writer) pass it as ``extras["source_image"]``
    #: (and ``extras["source_object_mask"]``), so a sample never depends on its batch-mates.
    paired_source: bool = False


class NotFittedError(RuntimeError):
    """A learned generator was asked to generate before ``fit`` or ``load``."""


def jsonable(x: Any, max_elems: int = 64) -> Any:
    """Make sampled parameters JSON-friendly; big tensors become a shape note."""
    if isinstance(x, torch.Tensor):
        if x.numel() <= max_elems:
            return x.detach().cpu().tolist()
        return f"<tensor {list(x.shape)}>"
    if isinstance(x, dict):
        return {str(k): jsonable(v, max_elems) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v, max_elems) for v in x]
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, (int, str, bool)) or x is None:
        return x
    return str(x)


class Generator:
    """Base class of image-level anomaly generators.

    Subclasses set the class attributes and implement :meth:`sample` and :meth:`apply`
    (or override :meth:`_generate` for learned methods with their own sampling loop).
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
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> list[dict]:
        """Draw every random choice for each sample (one dict per sample, from its own rng)."""
        raise NotImplementedError

    def apply(self, batch: Batch, samples: list[dict], **conditions: Any) -> Batch:
        """Apply the drawn choices to the whole batch, deterministically and batched."""
        raise NotImplementedError

    def _generate(self, batch: Batch, rngs: Sequence[torch.Generator], **conditions: Any) -> tuple[Batch, list[dict]]:
        samples = self.sample(batch, rngs)
        return self.apply(batch, samples, **conditions), samples

    # -- public -----------------------------------------------------------------------
    def generate(self, batch: Batch, *, generator: torch.Generator | None = None, seed: int | None = None,
                 seeds: Sequence[int] | None = None, **conditions: Any) -> Batch:
        """Return a new batch with synthetic anomalies (and their masks and labels).

        Randomness comes from exactly one of ``generator``, ``seed`` (sample *i* seeded
        from ``(seed, i)``) or ``seeds`` (one per sample); the input is never modified.
        """
        if not isinstance(batch, Batch):
            raise BatchError(f"{self.name}.generate expects an anoplug.Batch, got {type(batch).__name__}")
        batch.validate()
        if not self._fitted:
            raise NotFittedError(f"generator {self.name!r} must be fitted (fit) or loaded (load) before generate")
        per_sample = resolve_seeds(len(batch), generator=generator, seed=seed, seeds=seeds)
        from anoplug import registry  # local: registry imports this module

        hook = registry.active_hooks()
        pdict = self.params.model_dump(mode="json")
        t0 = time.perf_counter()
        if hook is not None:
            hook.anoplug_before_generate(spec=self, params=pdict, n_images=len(batch))
        try:
            out, samples = self._generate(batch.to(self.device), rngs_for(per_sample), **conditions)
            out.validate(values=False)  # structure only; the conformance kit checks values
        except Exception as e:
            if hook is not None:
                hook.anoplug_on_generate_error(spec=self, params=pdict, error=e)
            raise
        for i, m in enumerate(out.meta):
            m.update(method=self.name, method_version=self.version, params=pdict, seed=per_sample[i])
            if i < len(samples):
                m["sample"] = jsonable(samples[i])
        if hook is not None:
            hook.anoplug_after_generate(spec=self, params=pdict, batch=out, seconds=time.perf_counter() - t0)
        return out

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
                "params": self.params.model_dump(mode="json"), "fitted": self._fitted}

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
        (d / "config.json").write_text(json.dumps(self.config(), indent=2, sort_keys=True))
        return d

    def restore_config(self, config: dict[str, Any]) -> None:
        """Rebuild what ``config`` (written by :meth:`config`) describes before weights load.

        Learned methods whose module shapes depend on what they were fitted on (anomaly
        types, classes, image size) override this; the base has nothing to rebuild.
        """

    @classmethod
    def load(cls, directory: str | Path) -> Generator:
        """Rebuild a generator saved with :meth:`save`."""
        from safetensors.torch import load_file

        d = Path(directory)
        cfg_path = d / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"no config.json in {d}")
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"corrupt {cfg_path}: {e}") from e
        if cfg.get("name") != cls.name:
            raise ValueError(f"{cfg_path} holds generator {cfg.get('name')!r}, not {cls.name!r}")
        obj = cls(**cfg.get("params", {}))
        obj.restore_config(cfg)
        wpath = d / "weights.safetensors"
        try:
            tensors = load_file(str(wpath)) if wpath.is_file() else {}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"cannot read weights {wpath}: {e}") from e
        for key, module in obj.modules().items():
            sd = {n[len(key) + 1:]: t for n, t in tensors.items() if n.startswith(key + ".")}
            try:
                module.load_state_dict(sd)
            except RuntimeError as e:
                raise ValueError(f"weights in {wpath} do not fit module {key!r}: {e}") from e
        obj.load_extra_state({k[6:]: v for k, v in tensors.items() if k.startswith("extra.")})
        obj._fitted = bool(cfg.get("fitted", True))
        return obj

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
