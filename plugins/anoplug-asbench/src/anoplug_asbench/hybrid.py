"""ASBench's hybrid synthesis: an equal mixture of several generators over the same normal images.

ASBench concatenates the per-method training sets (``ConcatDataset``), so each method
contributes the same share. Per sample, we draw which member makes it (uniformly, from the
sample's own generator) and a seed for that member; the member then generates the sample
exactly as it would alone. Same seed, same bytes, whatever the batch split.

Members may be learned. ASBench's hybrids mix AnomalyDiffusion ("AD", a few-shot learned
method) with procedural ones, so a member is any of

- ``NAME`` — a registered generator; a learned one starts unfitted and :meth:`Hybrid.fit`
  trains it (AnomalyDiffusion on real defects: ``fit(normals, anomalies)``);
- ``NAME@DIR`` — a learned generator saved with ``save(DIR)``;
- ``NAME@CHECKPOINT`` — a checkpoint the learned plugin ships (``Generator.from_pretrained``);
- a :class:`~anoplug.generator.Generator` instance, fitted or not (Python only:
  ``Hybrid(members=[fitted_ad, "draem"])``).

A fitted member generates as it would alone (its per-sample seed is drawn from the sample's
own generator), so the determinism rule holds for learned members too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator

from anoplug.conditions import Conditions
from anoplug.generator import Generator, Paper, Requires, Samples
from anoplug.params import ParamError, Params
from anoplug.types import Batch

__all__ = ["Hybrid", "HybridParams", "split_member"]


def split_member(token: str) -> tuple[str, str]:
    """``"anomalydiffusion@out/ad"`` -> (``"anomalydiffusion"``, ``"out/ad"``); ``"draem"`` -> (``"draem"``, ``""``)."""
    name, _, ref = token.partition("@")
    return name.strip(), ref.strip()


class HybridParams(Params):
    members: str = Field("draem,cutpaste", description="comma-separated members, each an equal share: NAME, "
                         "NAME@DIR (a saved learned generator) or NAME@CHECKPOINT (one its plugin ships)")

    @field_validator("members")
    @classmethod
    def _at_least_two(cls, v: str) -> str:
        tokens = [t.strip() for t in v.split(",") if t.strip()]
        if len(tokens) < 2:
            raise ValueError("a hybrid needs at least two member generators, e.g. 'draem,cutpaste'")
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"hybrid members repeat a name: {v!r}")
        for t in tokens:
            name, ref = split_member(t)
            if not name or ("@" in t and not ref):
                raise ValueError(f"member {t!r} must look like NAME or NAME@DIR")
        return ",".join(tokens)


class Hybrid(Generator):
    name = "hybrid"
    title = "ASBench hybrid: equal mixture of generators"
    category = "evaluation"
    tags = ("asbench",)
    paper = Paper("ASBench: Image Anomalies Synthesis Benchmark for Anomaly Detection", "IEEE Trans. Artificial Intelligence",
                  2026, "https://arxiv.org/abs/2510.07927", "https://github.com/M-3LAB/ASBench")
    Params = HybridParams

    def __init__(self, params: Params | dict | None = None, **kwargs: Any) -> None:
        given: dict[str, Generator] = {}
        members = kwargs.get("members")
        if members is not None and not isinstance(members, str):  # instances ride outside the (text) parameters
            tokens = []
            for m in members:
                if isinstance(m, Generator):
                    if m.name in given:
                        raise ParamError(f"members: two {m.name!r} instances; pass them as NAME@DIR to tell them apart")
                    given[m.name] = m
                    tokens.append(m.name)
                elif isinstance(m, str):
                    tokens.append(m)
                else:
                    raise ParamError(f"members: expected generator names or Generator instances, got {type(m).__name__}")
            kwargs["members"] = ",".join(tokens)
        super().__init__(params, **kwargs)
        self.member_names = self.params.members.split(",")
        if any(split_member(t)[0] == self.name for t in self.member_names):
            raise ParamError("members: a hybrid cannot contain itself")
        self.members = [given[t] if t in given else _resolve(t) for t in self.member_names]
        self._refresh()

    def _refresh(self) -> None:
        """Requirements follow the members: fit is needed while a learned member is unfitted."""
        unfitted = [m for m in self.members if not m.is_fitted]
        self.requires = Requires(fit=bool(unfitted), anomalies=any(m.requires.anomalies for m in unfitted),
                                 accepts=tuple(dict.fromkeys(c for m in self.members for c in m.requires.uses)))

    @property
    def is_fitted(self) -> bool:
        """Fitted when every member is (a mixture of procedural members always is)."""
        return all(m.is_fitted for m in self.members)

    def fit(self, normals: Batch | None, anomalies: Batch | None = None, *, steps: int | None = None,
            progress: Any = None, **kw: Any) -> Hybrid:
        """Train every learned member that is not fitted yet, each with its own ``fit`` (fitted ones are kept).

        ``anomalies`` (real defects) go to the members that need them, e.g. AnomalyDiffusion;
        without them such a member is a clear error, not a silent skip.
        """
        todo = [(t, m) for t, m in zip(self.member_names, self.members) if not m.is_fitted]
        short = [t for t, m in todo if m.requires.anomalies and (anomalies is None or len(anomalies) == 0)]
        if short:
            raise ValueError(f"hybrid member {short[0]} learns from real defects: call fit(normals, anomalies), "
                             f"or give it fitted ({short[0]}@DIR, a saved one)")
        for _, m in todo:
            m.fit(normals, anomalies if m.requires.anomalies else None, steps=steps, progress=progress, **kw)
        self._refresh()
        return self

    # -- persistence: a fitted learned member is saved in its own folder, DIR/members/K-NAME ----------------
    def _member_dirs(self) -> dict[str, str]:
        """Where :meth:`save` puts each fitted learned member (``NAME@DIR`` members stay where they are)."""
        return {t: f"members/{k}-{m.name}" for k, (t, m) in enumerate(zip(self.member_names, self.members))
                if m.requires.fit and m.is_fitted and "@" not in t}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "member_dirs": self._member_dirs()}

    def save(self, directory: str | Path) -> Path:
        """``config.json`` of the mixture, and each fitted learned member saved by its own ``save``."""
        d = Path(directory)
        for token, rel in self._member_dirs().items():
            self.members[self.member_names.index(token)].save(d / rel)
        return super().save(d)

    def load_weights(self, directory: str | Path) -> None:
        """Load the learned members :meth:`save` wrote (the mixture itself has no weights)."""
        import json

        super().load_weights(directory)
        cfg = json.loads((Path(directory) / "config.json").read_text())
        for token, rel in (cfg.get("member_dirs") or {}).items():
            if token not in self.member_names:
                raise ValueError(f"{directory}: saved member {token!r} is not among the members {self.member_names}")
            k = self.member_names.index(token)
            self.members[k] = type(self.members[k]).load(Path(directory) / rel)
        self._refresh()

    def to(self, device: str | torch.device) -> Hybrid:
        super().to(device)
        for m in self.members:
            m.to(device)
        return self

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        out = Samples()
        for g in rngs:
            k = int(torch.randint(len(self.members), (1,), generator=g))
            out.append({"member": self.member_names[k], "member_seed": int(torch.randint(2**62, (1,), generator=g))})
        return out

    def apply(self, batch: Batch, samples: Samples) -> Batch:
        parts, order = [], []
        for name, member in zip(self.member_names, self.members):
            idx = [i for i, s in enumerate(samples) if s["member"] == name]
            if not idx:
                continue
            replay = [samples[i].get("member_sample") for i in idx]
            out = member.generate(batch[idx].keep_conditions(member.requires.uses),
                                  seeds=[samples[i]["member_seed"] for i in idx],
                                  samples=None if any(r is None for r in replay) else replay)
            for k, i in enumerate(idx):  # the member's own draws complete this sample's record
                samples[i]["member_sample"] = out.meta[k]["sample"]
            out.conditions = Conditions()  # each member saw its own conditions (NSA a paired source, DRAEM none);
            parts.append(out)  # the mixture answers the batch's, set by generate()
            order += idx
        merged = Batch.cat(parts, common_extras=True)  # e.g. NSA's soft mask exists for its samples only
        inverse = [0] * len(order)
        for pos, i in enumerate(order):
            inverse[i] = pos
        return merged[inverse]


def _resolve(token: str) -> Generator:
    """A member from its token: a new generator, or a learned one loaded from ``@DIR`` / ``@CHECKPOINT``."""
    from anoplug.registry import get_registry

    name, ref = split_member(token)
    cls = get_registry().generator_class(name)  # an unknown name is a LookupError naming it
    if not ref:
        return cls()
    if not cls.requires.fit:
        raise ParamError(f"members: {name} is procedural (nothing to load); write {name!r}, not {token!r}")
    try:
        return cls.from_pretrained(ref)
    except (OSError, ValueError) as e:
        where = "directory" if Path(ref).exists() else "checkpoint or directory"
        raise ParamError(f"members: cannot load {name} from {where} {ref!r}: {e}") from e
