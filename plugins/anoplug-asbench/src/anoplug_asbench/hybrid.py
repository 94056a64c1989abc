"""ASBench's hybrid synthesis: an equal mixture of several generators over the same normal images.

ASBench concatenates the per-method training sets (``ConcatDataset``), so each method
contributes the same share. Per sample, we draw which member makes it (uniformly, from the
sample's own generator) and a seed for that member; the member then generates the sample
exactly as it would alone. Same seed, same bytes, whatever the batch split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field, field_validator

from anoplug.conditions import Conditions
from anoplug.generator import Generator, Paper, Requires, Samples
from anoplug.params import Params
from anoplug.types import Batch

__all__ = ["Hybrid", "HybridParams"]


class HybridParams(Params):
    members: str = Field("draem,cutpaste", description="comma-separated generator names, each used for an equal share")

    @field_validator("members")
    @classmethod
    def _at_least_two(cls, v: str) -> str:
        names = [n.strip() for n in v.split(",") if n.strip()]
        if len(names) < 2:
            raise ValueError("a hybrid needs at least two member generators, e.g. 'draem,cutpaste'")
        if len(set(names)) != len(names):
            raise ValueError(f"hybrid members repeat a name: {v!r}")
        return ",".join(names)


class Hybrid(Generator):
    name = "hybrid"
    title = "ASBench hybrid: equal mixture of generators"
    category = "evaluation"
    tags = ("asbench",)
    paper = Paper("ASBench: Image Anomalies Synthesis Benchmark for Anomaly Detection", "IEEE Trans. Artificial Intelligence",
                  2026, "https://arxiv.org/abs/2510.07927", "https://github.com/M-3LAB/ASBench")
    Params = HybridParams

    def __init__(self, params: Params | dict | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        from anoplug.params import ParamError
        from anoplug.registry import get_registry

        reg = get_registry()
        self.member_names = self.params.members.split(",")
        if self.name in self.member_names:
            raise ParamError("members: a hybrid cannot contain itself")
        self.members = [reg.get_generator(n) for n in self.member_names]
        self.requires = Requires(accepts=tuple(dict.fromkeys(c for m in self.members for c in m.requires.uses)))
        needs_fit = [m.name for m in self.members if m.requires.fit]
        if needs_fit:
            raise ParamError(f"members: hybrid mixes training-free generators only; {', '.join(needs_fit)} must be fitted")

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
