"""Named generator sets of ``anoplug bench --preset``: ASBench's official hybrid combinations.

ASBench mixes four synthesisers — Fractal, DRAEM, MemSeg and AD (AnomalyDiffusion) — in
every combination of two or more: 6 pairs, 4 triples and the quadruple, 11 hybrids. Each is
a ``ConcatDataset`` of the member datasets over the same normal images. The list below is
the code's own: the ``Dataset_name`` branches of ``DRAEM/train_DRAEM.py`` (M-3LAB/ASBench,
commit 9c0bafc, lines 295-333), the same 11 as the hybrid result folders that
``destseg/cal_appixel.py`` (lines 14-24) collects next to the 4 single methods (lines
10-13). Members are written in the order of the run's name; the ``ConcatDataset`` order
differs for ``DRAEM+MemSeg`` (MemSeg first), which does not change an equal mixture.

``AD`` is learned: in ASBench its share is images AnomalyDiffusion generated beforehand
(``MVTecDRAEMTrainDataset_AD`` reads ``aug_dir`` / ``mask_dir``). Here the bench fits one
AnomalyDiffusion per category on the bench's *reference shots* — the first third of each
real defect type, which never enter the detector's test set (AnomalyDiffusion's own split)
— with the bench's CPU profile for it, and shares it across every hybrid and seed; or it
loads a saved one (``--load anomalydiffusion=DIR``, ``{category}`` in DIR expanded per
category). Where there is nothing to fit on and nothing to load, the bench refuses before
it trains anything.
"""

from __future__ import annotations

__all__ = ["ASBENCH_NAMES", "ASBENCH_HYBRIDS", "ASBENCH_SINGLES", "PRESETS", "expand_preset"]

#: ASBench's method names -> anoplug generator names.
ASBENCH_NAMES: dict[str, str] = {"Fractal": "fractal", "DRAEM": "draem", "MemSeg": "memseg", "AD": "anomalydiffusion"}

#: The 11 official hybrids as ASBench names them, with the line of DRAEM/train_DRAEM.py that builds each.
ASBENCH_HYBRIDS: tuple[tuple[str, int], ...] = (
    ("Fractal+DRAEM", 295),            # ConcatDataset([dataset_fractal, dataset_DRAEM])
    ("DRAEM+MemSeg", 297),             # ConcatDataset([dataset_MemSeg, dataset_DRAEM])
    ("DRAEM+AD", 299),                 # ConcatDataset([dataset_DRAEM, dataset_AD])
    ("Fractal+AD", 303),               # ConcatDataset([dataset_fractal, dataset_AD])
    ("MemSeg+AD", 307),                # ConcatDataset([dataset_MemSeg, dataset_AD])
    ("Fractal+MemSeg", 311),           # ConcatDataset([dataset_fractal, dataset_MemSeg])
    ("Fractal+DRAEM+MemSeg+AD", 314),  # ConcatDataset([fractal, DRAEM, MemSeg, AD])
    ("Fractal+DRAEM+MemSeg", 318),     # ConcatDataset([fractal, DRAEM, MemSeg])
    ("Fractal+DRAEM+AD", 322),         # ConcatDataset([fractal, DRAEM, AD])
    ("Fractal+MemSeg+AD", 326),        # ConcatDataset([fractal, MemSeg, AD])
    ("DRAEM+MemSeg+AD", 330),          # ConcatDataset([DRAEM, MemSeg, AD])
)
#: The single methods ASBench compares the hybrids with (destseg/cal_appixel.py lines 10-13).
ASBENCH_SINGLES: tuple[str, ...] = ("AD", "DRAEM", "Fractal", "MemSeg")


def _ours(asbench_name: str) -> str:
    return "+".join(ASBENCH_NAMES[p] for p in asbench_name.split("+"))


#: preset -> bench generator names (``a+b`` is the equal hybrid of ``a`` and ``b``).
PRESETS: dict[str, tuple[str, ...]] = {
    "asbench-hybrids": tuple(_ours(n) for n, _ in ASBENCH_HYBRIDS),
    # the 15 runs of destseg/cal_appixel.py: the four members alone, then the 11 hybrids
    "asbench-hybrid-study": tuple(ASBENCH_NAMES[n] for n in ASBENCH_SINGLES) + tuple(_ours(n) for n, _ in ASBENCH_HYBRIDS),
}


def expand_preset(name: str) -> list[str]:
    """The generator names of preset ``name``; an unknown preset is a ``KeyError`` listing the known ones."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return list(PRESETS[name])
