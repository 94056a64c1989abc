"""Any anoplug generator where anomalib's ``PerlinAnomalyGenerator`` goes.

anomalib's DRAEM (``Draem.augmenter``), DSR (``Dsr.perlin_generator``) and GLASS
(``Glass.model.augmentor``) draw their synthetic anomalies inside the training step by calling
a ``PerlinAnomalyGenerator`` on the batch. :class:`AnoplugAnomalyGenerator` is a drop-in for it
that runs any anoplug generator or ASBench hybrid instead; :func:`install` swaps it in::

    model = Draem(dtd_dir=empty_dir)                # an existing folder: anomalib downloads no DTD
    install(model, "cutpaste", seed=0)              # or "draem+cutpaste", or a generator instance
    lightning.Trainer(max_steps=700).fit(model, datamodule=MVTecAD(...))

**The call convention is anomalib's** (read from ``anomalib/data/utils/generators/perlin.py``
and the models that call it): ``augmented, mask = gen(image)`` with ``image`` a float tensor
``[B,3,H,W]`` (or ``[3,H,W]``) in [0, 1] on any device; ``augmented`` has the input's shape,
dtype and device, ``mask`` is float32 ``[B,1,H,W]`` (``[1,H,W]``) in {0, 1} on that device.
With probability ``probability`` (anomalib's default 0.5; GLASS uses 1) a sample is made
synthetic, else it comes back unchanged with an empty mask. anomalib's generator also retries
up to ten times for a non-empty mask; an anoplug method's output is what the method makes (a
method that can return "good" samples, such as ``cutpaste-3way``, returns empty masks then).

**Determinism (no global RNG).** The adapter counts the samples it has made: the *n*-th sample
(counted over calls, in batch order) is synthetic when ``is_synthetic(probability, seed, n)``
(:mod:`anoplug.torchdata`'s decision stream) and is then generated with the per-sample seed
``sample_seed(seed, n)`` — the seed ``anoplug generate --seed SEED`` gives its sample *n*. So a
training run is reproducible from ``seed`` and its data order alone, a sample's anomaly does not
depend on the batch it lands in, and the counter travels in the module's ``state_dict``
(``_extra_state``), so a resumed Lightning checkpoint continues the sequence.

:class:`AnoplugAnomalyTransform` is the data-side variant, a torchvision-v2 transform for an
anomalib datamodule's ``train_augmentations`` (anomalib's dataset calls it as
``image, mask = t(image, mask)``): anomalib passes no sample index, so a sample is keyed by its
content (a hash of its 8-bit pixels) and ``(seed, epoch)``, which stays the same across
DataLoader worker counts. anomalib computes ``gt_label`` from the file's label, not from the
mask, so a model that trains on labels must derive them from ``gt_mask``.

Tested with anomalib 2.7.0 (Lightning 2.6.6, torch 2.14, torchvision 0.29); written against the
anomalib 2.x API, where ``PerlinAnomalyGenerator`` lives in ``anomalib.data.utils.generators``.
Importing this module imports torchvision only; anomalib itself is imported by :func:`install`.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from anoplug.driver.work import torch_threads
from anoplug.seeding import sample_seed
from anoplug.torchdata import _make_generator, is_synthetic, run_seed
from anoplug.types import GOOD, Batch

__all__ = ["AnoplugAnomalyGenerator", "AnoplugAnomalyTransform", "install", "synthesize", "content_key", "TESTED_WITH"]

#: anomalib versions the test suite runs this adapter against
TESTED_WITH = ("2.7.0",)
#: how far outside [0, 1] an input may stray (resampling round-off) before it is refused rather than clamped
_RANGE_SLACK = 1e-3
_MASK63 = (1 << 63) - 1


def _prepare(generator: Any, params: dict[str, Any] | None) -> Any:
    """A generator instance (name, ``a+b`` hybrid or instance) that can run on bare images; else one ValueError."""
    gen = _make_generator(generator, params)
    req = gen.requires
    if not gen.is_fitted:
        raise ValueError(f"generator: {gen.name} must be fitted (fit) or loaded (load) before it makes anomalies")
    if req.conditions:
        raise ValueError(f"generator: {gen.name} needs conditions.{req.conditions[0]}, but anomalib hands over "
                         "images only")
    if req.object_mask or req.depth:
        raise ValueError(f"generator: {gen.name} needs {'an object mask' if req.object_mask else 'a depth map'} per "
                         "image, which anomalib's training step does not provide")
    return gen


def _check_probability(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p!r}")
    return float(p)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


def _plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a plain tensor (a tv_tensor's operations would otherwise keep or drop its type by op)."""
    return t.as_subclass(torch.Tensor) if isinstance(t, tv_tensors.TVTensor) else t


def content_key(image: torch.Tensor) -> int:
    """A 63-bit key of an image's 8-bit pixels and shape: the data-side transform's stand-in for a sample index."""
    x = _plain(image).detach().to("cpu")
    q = x if x.dtype == torch.uint8 else (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    h = hashlib.blake2b(repr(tuple(q.shape)).encode(), digest_size=8)
    h.update(q.contiguous().numpy().tobytes())
    return int.from_bytes(h.digest(), "big") & _MASK63


def synthesize(generator: Any, images: torch.Tensor, keys: Sequence[int], *, seed: int, probability: float,
               threads: int | None = 1) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Make sample ``keys[j]`` of images ``[B,3,H,W]``: synthetic with ``probability``, seeded by ``(seed, key)``.

    Returns ``(images, masks [B,1,H,W] float32, records)`` on the input's device and in its dtype
    (float in [0, 1], or uint8). A paired-source method (NSA) borrows the next image of the batch,
    as the driver borrows the next source image. ``threads`` torch threads while generating
    (1, as ``anoplug generate``, makes the bytes independent of the machine; None keeps torch's).
    """
    x0 = _plain(images).detach()
    if x0.ndim != 4 or x0.shape[1] != 3:
        raise ValueError(f"image must be [B,3,H,W] or [3,H,W], got {tuple(images.shape)}")
    if len(keys) != x0.shape[0]:
        raise ValueError(f"{len(keys)} sample keys for {x0.shape[0]} images")
    b, _, h, w = x0.shape
    records = [{"index": int(k), "synthetic": False, "label": GOOD, "sample_seed": None} for k in keys]
    chosen = [j for j in range(b) if is_synthetic(probability, seed, int(keys[j]))]
    out = x0.clone()
    mask = torch.zeros(b, 1, h, w, dtype=torch.float32, device=x0.device)
    if not chosen:
        return out, mask, records
    x = x0[chosen].to(device=generator.device)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    lo, hi = (float(v) for v in torch.aminmax(x))
    if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        raise ValueError(f"image values must be in [0, 1], got [{lo:.4g}, {hi:.4g}] (denormalise ImageNet-normalised "
                         "images first, as anomalib's GLASS does around its augmentor)")
    batch = Batch(image=x.clamp(0, 1))
    if generator.requires.paired_source:
        pair = x0[[(j + 1) % b for j in chosen]].to(device=generator.device)
        pair = pair.float() / 255.0 if pair.dtype == torch.uint8 else pair.float()
        batch = batch.with_conditions(source_image=pair.clamp(0, 1))
    seeds = [sample_seed(seed, int(keys[j])) for j in chosen]
    with torch_threads(threads) if threads else contextlib.nullcontext():
        made = generator.generate(batch, seeds=seeds)
    img = made.image.to(x0.device)
    out[chosen] = (img * 255).round().to(torch.uint8) if x0.dtype == torch.uint8 else img.to(x0.dtype)
    mask[chosen] = made.mask.to(x0.device)
    for k, j in enumerate(chosen):
        records[j] = {"index": int(keys[j]), "synthetic": True, "label": made.label[k], "sample_seed": seeds[k],
                      "meta": made.meta[k]}
    return out, mask, records


class AnoplugAnomalyGenerator(v2.Transform):
    """Drop-in for anomalib's ``PerlinAnomalyGenerator``: ``augmented, mask = gen(image)`` with an anoplug method.

    - ``generator``: a registry name (``"draem"``, ``"cutpaste"``, ``"draem+cutpaste"`` for the
      ASBench hybrid) with ``params``, or a generator instance (fitted, for a learned method);
      by name, the method's own ``probability`` coin is set to 1 so that ``probability`` here decides;
    - ``probability``: the chance a sample is made synthetic (anomalib's ``probability``);
    - ``seed``: sample *n* (counted over calls) is seeded ``sample_seed(seed, n)``;
    - ``threads``: torch threads while generating (see :func:`synthesize`).

    The generator runs on its own device (``generator.to(...)``, CPU by default); images move
    there and back. ``last`` holds the records of the latest call (index, synthetic, label,
    sample seed, the method's meta); ``count`` the samples made so far.
    """

    def __init__(self, generator: Any, *, probability: float = 0.5, seed: int = 0, params: dict[str, Any] | None = None,
                 threads: int | None = 1) -> None:
        super().__init__()
        self.generator = _prepare(generator, params)
        self.probability, self.seed = _check_probability(probability), _check_seed(seed)
        self.threads = threads
        self.count = 0
        self.last: list[dict] = []

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """anomalib's call: ``[B,3,H,W]`` -> (``[B,3,H,W]``, ``[B,1,H,W]``); ``[3,H,W]`` -> (``[3,H,W]``, ``[1,H,W]``)."""
        if not isinstance(img, torch.Tensor) or img.ndim not in (3, 4):
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"image must be a [B,3,H,W] or [3,H,W] tensor, got {shape}")
        batched = img.ndim == 4
        x = img if batched else img[None]
        keys = list(range(self.count, self.count + x.shape[0]))
        out, mask, self.last = synthesize(self.generator, x, keys, seed=self.seed, probability=self.probability,
                                          threads=self.threads)
        self.count += x.shape[0]
        return (out, mask) if batched else (out[0], mask[0])

    def reset(self, count: int = 0) -> None:
        """Start the sample count again at ``count`` (the next sample is sample ``count``)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be a non-negative integer, got {count!r}")
        self.count = count

    def get_extra_state(self) -> dict[str, int]:
        """The seed and sample count, saved in the owning model's ``state_dict`` (a Lightning checkpoint)."""
        return {"seed": self.seed, "count": self.count}

    def set_extra_state(self, state: dict[str, int]) -> None:
        if not isinstance(state, dict) or not {"seed", "count"} <= set(state):
            raise ValueError(f"extra state must be a dict with seed and count, got {state!r}")
        self.seed, self.count = _check_seed(int(state["seed"])), int(state["count"])

    def extra_repr(self) -> str:
        return f"generator={self.generator.name}, probability={self.probability}, seed={self.seed}, count={self.count}"


def _is_plain_tensor(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not isinstance(t, tv_tensors.TVTensor)


class AnoplugAnomalyTransform(v2.Transform):
    """A torchvision-v2 transform that makes an image synthetic and adds its anomaly to the sample's masks.

    Called as ``image, mask = t(image, mask)`` (anomalib's datasets do this with their
    ``augmentations``) or on any structure v2 transforms accept: the one image (a
    ``tv_tensors.Image``, else the first plain tensor; ``[...,3,H,W]`` float in [0, 1] or uint8)
    gets the anomaly, every ``tv_tensors.Mask`` of the same size gets it added (set to 1 where
    the anomaly is), everything else passes through. Sample keys are :func:`content_key` of each
    image, seeds ``sample_seed(run_seed(seed, epoch), key)``; call :meth:`set_epoch` before an
    epoch's DataLoader iterates for new anomalies (workers copy the transform then).
    """

    _transformed_types = (torch.Tensor,)

    def __init__(self, generator: Any, *, probability: float = 0.5, seed: int = 0, epoch: int = 0,
                 params: dict[str, Any] | None = None, threads: int | None = 1) -> None:
        super().__init__()
        self.generator = _prepare(generator, params)
        self.probability, self.seed = _check_probability(probability), _check_seed(seed)
        self.threads = threads
        self.epoch = 0
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s anomalies from now on."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        images = [t for t in flat_inputs if isinstance(t, tv_tensors.Image) or _is_plain_tensor(t)]
        if len(images) != 1:
            raise ValueError(f"{type(self).__name__} transforms exactly one image per call, got {len(images)}")
        img = _plain(images[0])
        if img.ndim < 3 or img.shape[-3] != 3:
            raise ValueError(f"image must be [...,3,H,W], got {tuple(img.shape)}")
        x = img.reshape(-1, *img.shape[-3:])
        keys = [content_key(x[k]) for k in range(x.shape[0])]
        out, mask, records = synthesize(self.generator, x, keys, seed=run_seed(self.seed, self.epoch),
                                        probability=self.probability, threads=self.threads)
        return {"image": out.reshape(img.shape), "mask": mask[:, 0], "records": records}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            anomaly = params["mask"]  # [B,H,W]
            if inpt.shape[-2:] != anomaly.shape[-2:] or inpt.numel() != anomaly.numel():
                raise ValueError(f"mask of shape {tuple(inpt.shape)} does not fit the image's {tuple(anomaly.shape)}")
            m = _plain(inpt)
            one = torch.ones((), dtype=m.dtype, device=m.device)
            return tv_tensors.wrap(torch.where(anomaly.reshape(m.shape).to(m.device) > 0, one, m), like=inpt)
        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap(params["image"], like=inpt)
        if _is_plain_tensor(inpt):
            return params["image"]
        return inpt

    # torchvision < 0.21 calls the private names of the same two methods
    _get_params = make_params
    _transform = transform

    def extra_repr(self) -> str:
        return f"generator={self.generator.name}, probability={self.probability}, seed={self.seed}, epoch={self.epoch}"


def install(model: torch.nn.Module, generator: Any, *, probability: float | None = None, seed: int = 0,
            params: dict[str, Any] | None = None, threads: int | None = 1) -> AnoplugAnomalyGenerator:
    """Replace every ``PerlinAnomalyGenerator`` inside ``model`` (DRAEM, DSR, GLASS) by one anoplug adapter.

    ``generator`` is a name, an instance, or an :class:`AnoplugAnomalyGenerator` (used as is);
    ``probability`` None keeps the replaced generator's own (DRAEM 0.5, GLASS 1). Returns the adapter.
    """
    from anomalib.data.utils.generators import PerlinAnomalyGenerator

    slots = [(name, m) for name, m in model.named_modules() if isinstance(m, PerlinAnomalyGenerator)]
    if not slots:
        raise ValueError(f"model: {type(model).__name__} holds no PerlinAnomalyGenerator to replace")
    if isinstance(generator, AnoplugAnomalyGenerator):
        if params is not None or probability is not None:
            raise ValueError("generator: give probability/params only with a generator name or instance, not an adapter")
        adapter = generator
    else:
        p = slots[0][1].probability if probability is None else probability
        adapter = AnoplugAnomalyGenerator(generator, probability=p, seed=seed, params=params, threads=threads)
    for name, _ in slots:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, adapter)
    return adapter
