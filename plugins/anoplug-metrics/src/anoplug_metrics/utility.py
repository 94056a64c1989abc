"""Downstream utility: do these synthetic anomalies teach a detector to find *real* defects?

Protocol (AnomalyDiffusion's ``train-localization``, the ASBench U-Net pipeline): train DRAEM's
discriminative U-Net from scratch on real normal images and the generated anomalies (each
training sample is synthetic with probability ``anomaly_prob``, 0.5 = the 50/50 mix), then
score the held-out real test set: image AUROC / AP / F1-max (image score = max of the
21x21-mean-filtered map), pixel AUROC / AP / F1-max and AU-PRO@0.3 (``anoplug.metrics``).

A U-Net trained on normal images alone is already a novelty detector (on the embedded toy
data its image AUROC lands anywhere from about 0.3 to 0.9 without a single anomaly, depending on
the seed), so "chance" is not 0.5. With
``baseline=True`` the same detector (same seed, steps, sizes) is also trained with *no*
synthetic anomalies, and every metric gets a ``*_gain`` twin: what the anomalies added.

**One training run is one draw, not a measurement.** What a from-scratch detector learns
beyond its training targets -- above all the normals-only detector, whose targets are all
zero, so its scores on real defects are whatever the network happens to extrapolate -- varies
with the seed (toy data, 150 steps: the normals-only image AUROC ranges 0.48-0.86 over eight
seeds, sd 0.14) *and with the float rounding of the run*: at one seed, 1 and 2 CPU threads sum
the convolution gradients in a different order, the weights differ in the last bits after the
first step, and training amplifies that into a different detector (the identity generator's
image-AUROC gain moves by 0.09 on average, up to 0.24, between thread counts at the same seed;
across seeds its sd is 0.11). So the evaluator trains ``repeats`` times, repeat *r* with the
derived seed ``sample_seed(seed, r)`` (:mod:`anoplug.seeding`), and trains each repeat's
baseline with the *same* seed (same initial weights, same sample draws), so every gain is a
paired difference. Each metric is the mean over the repeats, with ``<metric>_ci_low`` /
``<metric>_ci_high``: the two-sided Student-t ``confidence`` interval of that mean (for a
``*_gain``, of the mean paired difference), clipped to the metric's range. Student-t rather
than a normal interval or a bootstrap because there are few repeats: with 3 the sample standard
deviation is itself a rough estimate, which the t quantile (4.30 at 95 % for n = 3, not 1.96)
pays for, and a bootstrap over 3 values cannot be honest. Read the intervals, not the means:
a generator that returns its input unchanged has a gain interval containing 0, a useful one an
interval above 0. For a fixed device and thread count the result is bit-reproducible (the
count is recorded in ``details``); across thread counts only the intervals carry over.

Checkpoint selection never looks at the test set unless ``selection="best_on_test"`` is set
on purpose -- that flag replicates the official scripts, which keep the epoch with the best
*test* score and so inflate every number they report.

**Pipelines.** ``pipeline`` picks the detector among ASBench's four (:mod:`anoplug_metrics.pipelines`):
``ad-unet`` (the default, the U-Net above, numbers unchanged), ``draem``, ``destseg``, ``memseg``.
Settings left at None take the pipeline's official values (``pipeline_scale="official"``) or its
CPU scale (``"cpu"``). The metrics are computed the same way for every pipeline (the image score
is the max of the 21x21-mean-filtered map), so pipelines compare on one scale; each pipeline's own
image score (DeSTSeg / MemSeg: mean of the top pixels) is reported in ``details``. DRAEM and
DeSTSeg learn from the clean image behind each synthetic one: ``sources`` (aligned with
``generated``) gives it; otherwise it is found among the normals by ``meta["source"]`` or, failing
that, as the normal closest outside the mask (``details["sources"]`` says which).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from scipy import stats

from anoplug.evaluator import Evaluator, Metric, Report
from anoplug.metrics import DETECTION_METRICS, auroc, average_precision, binarize_resized_mask, detection_metrics
from anoplug.params import Params
from anoplug.seeding import sample_seed
from anoplug.types import GOOD, Batch
from anoplug_metrics.pipelines import PIPELINES, SyntheticSet, match_sources, resolve_config, train_pipeline

__all__ = ["DownstreamUtility", "UtilityParams", "t_interval", "repeat_seeds"]

# No-anomaly detector results, one per (normals, test set, settings, repeat seed, threads); shared across generators.
_BASELINES: OrderedDict[str, dict] = OrderedDict()
_MAX_BASELINES = 256  # entries are a few floats; a bench keeps categories x seeds x repeats of them alive


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the two-sided Student-t ``confidence`` interval of the mean of ``values``.

    ``mean +/- t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation
    (ddof 1). Non-finite values (an undefined metric) are left out; fewer than two finite values
    give NaN bounds (one draw has no spread to estimate).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def _clip(bound: float, low: float, high: float = 1.0) -> float:
    """An interval bound clipped to the metric's range (the true mean lies in it, so coverage is kept); NaN stays."""
    return min(max(bound, low), high) if math.isfinite(bound) else bound


def repeat_seeds(seed: int, repeats: int) -> list[int]:
    """The training seed of each repeat: ``sample_seed(seed, r)`` for r = 0 .. repeats-1."""
    return [sample_seed(seed, r) for r in range(repeats)]


def parse_pipeline_params(text: str) -> dict[str, object]:
    """``"k=v,k=v"`` -> ``{k: v}``, each value read as bool, int, float or else kept as text."""
    out: dict[str, object] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"pipeline_params item {item!r} is not key=value")
        raw = raw.strip()
        value: object = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for conv in (int, float):
                try:
                    value = conv(raw)
                    break
                except ValueError:
                    pass
        out[key.strip()] = value
    return out


class UtilityParams(Params):
    pipeline: Literal["ad-unet", "draem", "destseg", "memseg"] = Field(
        "ad-unet", description="detection pipeline (ASBench's four); ad-unet = AnomalyDiffusion's U-Net")
    pipeline_scale: Literal["official", "cpu"] = Field(
        "official", description="values of the settings left at None: the pipeline's official ones or its CPU scale")
    pipeline_params: str = Field("", description="further pipeline settings, key=value,key=value "
                                                 "(e.g. backbone=resnet18,seg_width=64)")
    steps: int | None = Field(None, ge=1, le=1_000_000,
                              description="training steps (None: the pipeline's; ad-unet 200 epochs x 500 / 8 = 12,500)")
    batch_size: int | None = Field(None, ge=1, le=256, description="training batch size (None: the pipeline's; ad-unet 8)")
    lr: float | None = Field(None, gt=0.0, le=1.0,
                             description="learning rate of ad-unet / draem (Adam, x0.2 at 80 % and 90 %) and memseg "
                                         "(AdamW peak); None: the pipeline's (1e-4, 1e-4, 3e-3)")
    base_width: int | None = Field(None, ge=2, le=128,
                                   description="U-Net base width of ad-unet / draem (None: 64; CPU runs use 8)")
    size: int = Field(256, ge=32, le=1024, description="side training and test images are resized to (multiple of 32)")
    anomaly_prob: float = Field(0.5, ge=0.0, le=1.0, description="probability a training sample is a synthetic anomaly")
    focal_gamma: float | None = Field(None, ge=0.0, le=10.0,
                                      description="focal loss gamma (None: the pipeline's; 2 ad-unet / draem, "
                                                  "4 destseg / memseg)")
    selection: Literal["last", "best_on_test"] = Field(
        "last", description="checkpoint: last step, or (replication only, inflates results) the best on the test set")
    eval_every: int = Field(0, ge=0, le=1_000_000, description="test evaluations for best_on_test (0 = every steps/10)")
    pixel_f1: Literal["grid", "exact"] = Field("grid", description="pixel F1-max on AnomalyDiffusion's 0.05 grid or exact")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="master seed; repeat r trains with sample_seed(seed, r)")
    repeats: int = Field(3, ge=1, le=100,
                         description="independent trainings (derived seeds) averaged; >= 2 for confidence intervals")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="level of the Student-t intervals over the repeats")
    baseline: bool = Field(True, description="also train on normals only and report each metric's gain over that detector")
    device: str = Field("cpu", description="torch device for training")

    @field_validator("size")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError("size must be a multiple of 32 (the U-Net pools five times)")
        return v

    @model_validator(mode="after")
    def _pipeline_settings(self) -> UtilityParams:
        self.pipeline_config()  # an unknown setting for this pipeline fails here, not after training
        return self

    def pipeline_settings(self) -> dict[str, object]:
        """The pipeline settings this evaluator passes on (None = the pipeline's value)."""
        return {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, "base_width": self.base_width,
                "focal_gamma": self.focal_gamma, **parse_pipeline_params(self.pipeline_params)}

    def pipeline_config(self, anomaly_prob: float | None = None) -> object:
        """The pipeline's resolved configuration at this evaluator's size (and ``anomaly_prob``)."""
        return resolve_config(self.pipeline, self.pipeline_scale, size=self.size,
                              anomaly_prob=self.anomaly_prob if anomaly_prob is None else anomaly_prob,
                              **self.pipeline_settings())


class DownstreamUtility(Evaluator):
    """Train a detector on normals + ``generated`` anomalies; test on ``real`` (held-out real defects and goods)."""

    name = "downstream-utility"
    title = "Downstream utility (DRAEM U-Net or another ASBench pipeline on real defects)"
    Params = UtilityParams
    needs_masks = True  # the masks are the labels: a mask-less method's empty mask would read as "no defect"

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        s = self.params.size
        return x if x.shape[-1] == s and x.shape[-2] == s else F.interpolate(x, size=(s, s), mode="bilinear",
                                                                             align_corners=False)

    def _test_set(self, real: Batch) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        s = self.params.size
        images = self._resize(real.image)
        if real.mask.shape[-1] == s and real.mask.shape[-2] == s:
            gts = (real.mask >= 0.5).float().numpy()
        else:
            gts = binarize_resized_mask(real.mask, s)
        labels = np.array([lab != GOOD for lab in real.label], dtype=np.float64)
        return images, gts, labels

    def _synthetic(self, generated: Batch, normals: Batch, sources: Batch | None) -> tuple[SyntheticSet, str]:
        """The generated set at ``size`` with the clean image behind each sample when the pipeline needs it."""
        images, masks = self._resize(generated.image), self._resize_mask(generated.mask)
        if not PIPELINES[self.params.pipeline].needs_clean:
            return SyntheticSet(images, masks), "not needed"
        if sources is not None:
            if len(sources) != len(generated):
                raise ValueError(f"downstream-utility: {len(sources)} sources for {len(generated)} generated images")
            return SyntheticSet(images, masks, self._resize(sources.image)), "given"
        clean, how = match_sources(images, masks, self._resize(normals.image), generated.meta, normals.meta)
        return SyntheticSet(images, masks, clean), how

    def evaluate(self, generated: Batch, *, normals: Batch | None = None, real: Batch | None = None,
                 sources: Batch | None = None) -> Report:
        """``sources`` (optional): the normal each generated image was made from, aligned with ``generated``."""
        p = self.params
        if normals is None or len(normals) == 0:
            raise ValueError("downstream-utility needs `normals`: the real normal training images")
        if real is None or len(real) == 0:
            raise ValueError("downstream-utility needs `real`: the held-out real test set (goods and defects)")
        test_images, gts, labels = self._test_set(real)
        if labels.sum() == 0 or labels.sum() == len(labels):
            raise ValueError("downstream-utility: the real test set needs both good and defective images")
        synthetic, paired = self._synthetic(generated, normals, sources)
        cfg = p.pipeline_config()
        seeds = repeat_seeds(p.seed, p.repeats)
        per_repeat: list[dict] = []
        for r, s in enumerate(seeds):
            chosen, chosen_step, info = self._run(normals, synthetic, test_images, gts, labels, p.anomaly_prob, s)
            entry = {"repeat": r, "seed": s, "metrics": chosen, "selected_step": chosen_step, **info}
            if p.baseline:
                base, cached = self._baseline(normals, real, test_images, gts, labels, s)
                entry.update(baseline_metrics=dict(base["metrics"]), baseline_cached=cached,
                             baseline_train_seconds=base["train_seconds"],
                             gain={k: chosen[k] - base["metrics"][k] for k in DETECTION_METRICS})
            per_repeat.append(entry)

        n, level = p.repeats, f"{p.confidence * 100:g} %"
        note = " [selected on the TEST set: inflated, replication only]" if p.selection == "best_on_test" else ""
        over = f"mean over {n} independently seeded training{'s' if n > 1 else ''}"
        metrics: dict[str, Metric] = {}
        bounds: dict[str, Metric] = {}

        def add(name: str, values: list[float], what: str, paired: bool) -> None:
            mean, low, high = t_interval(values, p.confidence)
            lo_lim = -1.0 if paired else 0.0  # every detection metric lies in [0, 1], so a gain in [-1, 1]
            low, high = _clip(low, lo_lim), _clip(high, lo_lim)
            finite = [v for v in values if math.isfinite(v)]
            std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
            metrics[name] = Metric(mean, True, f"{what}; {over}", std=std)
            ci = (f"{level} Student-t confidence interval of the mean {'paired difference ' if paired else ''}"
                  f"over {n} repeats, clipped to [{lo_lim:g}, 1]" + ("" if n > 1 else " (undefined: needs repeats >= 2)"))
            bounds[f"{name}_ci_low"] = Metric(low, True, f"lower bound of {name}'s {ci}")
            bounds[f"{name}_ci_high"] = Metric(high, True, f"upper bound of {name}'s {ci}")

        for k in DETECTION_METRICS:
            grid = " (0.05 threshold grid)" if k == "pixel_f1max" and p.pixel_f1 == "grid" else ""
            add(k, [e["metrics"][k] for e in per_repeat], DETECTION_METRICS[k] + grid + note, paired=False)
        if p.baseline:
            for k in DETECTION_METRICS:
                add(f"{k}_gain", [e["gain"][k] for e in per_repeat],
                    f"{k} minus the same detector (same seed) trained on normals only (no synthetic anomalies)" + note,
                    paired=True)
        metrics.update(bounds)

        steps = per_repeat[0]["steps"]
        detector = (f"DRAEM DiscriminativeSubNetwork, base width {cfg.base_width}, {p.size}px, from scratch"
                    if p.pipeline == "ad-unet" else f"{PIPELINES[p.pipeline].title}, {p.size}px ({p.pipeline_scale} scale)")
        details = {"repeats": per_repeat, "seeds": seeds, "confidence": p.confidence, "interval": "student-t",
                   "torch_threads": torch.get_num_threads(), "steps": steps, "selection": p.selection,
                   "train_seconds": float(sum(e["train_seconds"] for e in per_repeat)),
                   "n_normals": len(normals), "n_generated": len(generated),
                   "n_test": len(real), "n_test_defective": int(labels.sum()),
                   "detector": detector, "pipeline": p.pipeline, "pipeline_scale": p.pipeline_scale,
                   "pipeline_config": per_repeat[0]["pipeline_config"], "sources": paired}
        if p.baseline:
            base_metrics: dict[str, float] = {}
            for k in DETECTION_METRICS:
                mean, low, high = t_interval([e["baseline_metrics"][k] for e in per_repeat], p.confidence)
                low, high = _clip(low, 0.0), _clip(high, 0.0)
                base_metrics.update({k: mean, f"{k}_ci_low": low, f"{k}_ci_high": high})
            details["baseline"] = {"metrics": base_metrics, "seeds": seeds,
                                   "cached": [e["baseline_cached"] for e in per_repeat],
                                   "train_seconds": float(sum(e["baseline_train_seconds"] for e in per_repeat))}
        return Report(self.name, metrics, details=details)

    def _run(self, normals: Batch, synthetic: SyntheticSet, test_images: torch.Tensor, gts: np.ndarray,
             labels: np.ndarray, anomaly_prob: float, seed: int) -> tuple[dict, int, dict]:
        """Train one detector with ``seed`` and score it: (metrics, selected step, details)."""
        p = self.params
        t0 = time.perf_counter()
        history: list[dict] = []
        best: dict = {}

        def on_eval(step: int, detector) -> None:
            m = detection_metrics(detector.predict(test_images)[0].numpy(), gts, labels, pixel_f1=p.pixel_f1)
            history.append({"step": step, **m})
            key = m["image_auroc"] + m["pixel_ap"]  # the DRAEM script's criterion
            if not best or key > best["key"]:
                best.update(key=key, step=step, metrics=m)

        cfg = p.pipeline_config(anomaly_prob)
        steps = cfg.total_steps(len(normals)) if hasattr(cfg, "total_steps") else cfg.steps
        selecting = p.selection == "best_on_test"
        detector = train_pipeline(p.pipeline, self._resize(normals.image), synthetic, seed=seed, device=p.device,
                                  scale=p.pipeline_scale, size=p.size, anomaly_prob=anomaly_prob,
                                  callback=on_eval if selecting else None,
                                  eval_every=(p.eval_every or max(steps // 10, 1)) if selecting else 0,
                                  **p.pipeline_settings())
        train_s = time.perf_counter() - t0
        maps, scores = detector.predict(test_images)
        final = detection_metrics(maps.numpy(), gts, labels, pixel_f1=p.pixel_f1)
        chosen, chosen_step = final, steps
        if selecting:
            if not history or history[-1]["step"] != steps:
                on_eval(steps, detector)
            chosen, chosen_step = best["metrics"], best["step"]
        losses = [float(row["loss"]) for row in detector.history]
        own = {}
        for k, fn in (("image_auroc", auroc), ("image_ap", average_precision)):
            try:
                own[k] = float(fn(scores.numpy(), labels))
            except ValueError:
                own[k] = math.nan
        info = {"train_seconds": train_s, "history": history, "steps": steps,
                "loss_first": losses[0] if losses else None,
                "loss_last": float(np.mean(losses[-20:])) if losses else None,
                "pipeline_image_score": own, "pipeline_config": detector.config}
        return chosen, chosen_step, info

    def _baseline(self, normals: Batch, real: Batch, test_images: torch.Tensor, gts: np.ndarray, labels: np.ndarray,
                  seed: int) -> tuple[dict, bool]:
        """The no-anomaly detector trained with ``seed``: (its result, whether it came from this process's cache).

        The key is everything that decides the result: the normals, the test set (images, masks
        and labels, with shapes), every setting but the ones that do not reach this training
        (``anomaly_prob`` is 0 here; ``baseline``, ``repeats``, ``confidence``; the master
        ``seed`` enters as the repeat's derived seed), the device and torch's thread count.
        """
        h = hashlib.sha1()
        for t in (normals.image, real.image, real.mask):
            t = t.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.numpy().tobytes())
        settings = self.params.model_dump(exclude={"anomaly_prob", "baseline", "repeats", "confidence", "seed"})
        settings.update(labels=list(real.label), repeat_seed=int(seed), torch_threads=torch.get_num_threads())
        h.update(json.dumps(settings, sort_keys=True).encode())
        key = h.hexdigest()
        cached = key in _BASELINES
        if not cached:
            empty = SyntheticSet.empty(self._resize(normals.image))
            chosen, step, info = self._run(normals, empty, test_images, gts, labels, 0.0, seed)
            _BASELINES[key] = {"metrics": chosen, "selected_step": step, "train_seconds": info["train_seconds"]}
            while len(_BASELINES) > _MAX_BASELINES:
                _BASELINES.popitem(last=False)
        _BASELINES.move_to_end(key)
        return _BASELINES[key], cached

    def _resize_mask(self, mask: torch.Tensor) -> torch.Tensor:
        s = self.params.size
        if mask.shape[-1] == s and mask.shape[-2] == s:
            return (mask >= 0.5).float()
        return (F.interpolate(mask.float(), size=(s, s), mode="bilinear", align_corners=False) >= 0.5).float()
