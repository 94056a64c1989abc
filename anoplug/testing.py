"""The conformance kit: a pytest plugin every generator plugin (ours or third-party) runs.

Registered through the ``pytest11`` entry point, so installing anoplug gives these
fixtures to any test suite:

- ``anoplug_pm``: an isolated :class:`~anoplug.registry.Registry` (built-ins only, no
  entry-point discovery) installed as the process registry for the test;
- ``tmp_plugin``: registers an object as a plugin in that registry for one test;
- ``toy_batch``: a small deterministic batch (4 × 3 × 64 × 64, with an object mask);
- ``no_network``: a socket guard that fails the test on any connection attempt.

Mixins ``GeneratorConformance``, ``LearnedGeneratorConformance`` (adds fit, resume and
save/load), ``FeatureGeneratorConformance`` and ``EvaluatorConformance`` turn a few class
attributes into a full contract check::

    class TestDraem(GeneratorConformance):
        generator_name = "draem"
        params = {"probability": 1.0}
        bad_params = {"probability": 1.5}
        entry_module = "anoplug_draem.plugin"
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

__all__ = ["make_toy_batch", "make_toy_anomalies", "condition_variants", "GeneratorConformance",
           "LearnedGeneratorConformance", "FeatureGeneratorConformance", "EvaluatorConformance", "NetworkBlocked",
           "block_network"]


class NetworkBlocked(RuntimeError):
    """Raised by the socket guard when code under test tries to reach the network."""


class block_network:
    """Context manager: any ``socket.connect`` / DNS lookup raises :class:`NetworkBlocked`."""

    def __enter__(self) -> block_network:
        self._saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo)

        def refuse(*a: Any, **k: Any) -> Any:
            raise NetworkBlocked(f"network access attempted: {a[1:] if len(a) > 1 else a}")

        socket.socket.connect = refuse  # type: ignore[method-assign]
        socket.socket.connect_ex = refuse  # type: ignore[method-assign]
        socket.create_connection = refuse  # type: ignore[assignment]
        socket.getaddrinfo = refuse  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: Any) -> None:
        (socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo) = self._saved


def make_toy_batch(n: int = 4, size: int = 64, seed: int = 0):
    """A deterministic batch of smooth textured images with a disc-shaped object mask.

    Self-contained (no dataset needed) so the kit works for third-party plugins too.
    """
    import torch

    from anoplug.types import Batch

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    img = (0.6 * img + 0.4 * torch.rand(n, 3, size, size, generator=g)).clamp(0.02, 0.98)
    img = (img * 255).round() / 255  # exactly representable as uint8
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).float().sqrt()
    obj = (r < size * 0.35).float().expand(n, 1, size, size).contiguous()
    return Batch(image=img.float(), object_mask=obj, meta=[{"source": f"toy-{seed}-{i}"} for i in range(n)],
                 text=["a normal surface"] * n)


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture
def anoplug_pm() -> Iterator[Any]:
    """An isolated registry (no entry-point discovery) installed as the process registry."""
    from anoplug.registry import Registry, set_registry

    reg = Registry(discover=False)
    old = set_registry(reg)
    try:
        yield reg
    finally:
        set_registry(old)


@pytest.fixture
def tmp_plugin(anoplug_pm: Any) -> Iterator[Any]:
    """``tmp_plugin(obj)`` registers ``obj`` in the isolated registry for this test."""
    names: list[str] = []

    def _register(obj: Any, name: str | None = None) -> str:
        n = anoplug_pm.register(obj, name)
        names.append(n)
        return n

    yield _register
    for n in names:
        anoplug_pm.unregister(n)


@pytest.fixture
def toy_batch() -> Any:
    return make_toy_batch()


@pytest.fixture
def no_network() -> Iterator[None]:
    with block_network():
        yield


# -- mixins ------------------------------------------------------------------------------
class _Base:
    entry_module: ClassVar[str] = ""  # module named by the plugin's entry point

    def test_entry_module_does_not_import_torch(self) -> None:
        if not self.entry_module:
            pytest.skip("no entry_module declared")
        code = (f"import sys, importlib; importlib.import_module({self.entry_module!r}); "
                "bad=[m for m in ('torch','diffusers','transformers') if m in sys.modules]; "
                "print(','.join(bad)); sys.exit(1 if bad else 0)")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, f"importing {self.entry_module} imported heavy modules: {r.stdout or r.stderr}"


def _same(a: Any, b: Any) -> bool:
    """Deep equality of records that hold tensors (bit for bit), lists, tuples and dicts."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes())
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _bytes(batch: Any) -> tuple[bytes, bytes]:
    return batch.image.numpy().tobytes(), batch.mask.numpy().tobytes()


def condition_variants(name: str, batch: Any, box_label: Any = "anomaly") -> tuple[dict, dict]:
    """Two different values of condition ``name`` for ``batch`` (``with_conditions`` keywords).

    A generator that honours the condition must give different outputs for the two.
    """
    import torch

    n, (h, w) = len(batch), batch.size
    if name == "target_mask":
        a, b = torch.zeros(n, 1, h, w), torch.zeros(n, 1, h, w)
        a[..., h // 8: h // 2, w // 8: w // 2] = 1
        b[..., h // 2: 7 * h // 8, w // 2: 7 * w // 8] = 1
        return {"target_mask": a}, {"target_mask": b}
    if name == "boxes":
        return ({"boxes": [[(box_label, 0.1, 0.1, 0.45, 0.45)]] * n},
                {"boxes": [[(box_label, 0.55, 0.5, 0.9, 0.95)]] * n})
    if name == "prompt":
        return {"prompt": ["a photo of a scratch"] * n}, {"prompt": ["a photo of a hole"] * n}
    if name == "defect_type":  # make_toy_anomalies' label and a second name: override for the types you fit
        return {"defect_type": ["scratch"] * n}, {"defect_type": ["hole"] * n}
    one, two = [(i + 1) % n for i in range(n)], [(i + 2) % n for i in range(n)]
    other = make_toy_batch(n, h, seed=99)
    if name == "source_image":
        return {"source_image": batch.image[one].clone()}, {"source_image": other.image}
    if name == "source_object_mask":
        obj = batch.object_mask if batch.object_mask is not None else torch.ones(n, 1, h, w)
        src = {"source_image": batch.image[one].clone()}
        return {**src, "source_object_mask": obj[one].clone()}, {**src, "source_object_mask": torch.ones(n, 1, h, w)}
    if name in ("references", "reference_masks"):
        m = torch.zeros(n, 2, 1, h, w)
        m[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
        ra = torch.stack([batch.image[one], batch.image[two]], 1) * (1 - m) + 0.1 * m
        rb = torch.stack([other.image, other.image.flip(-1)], 1) * (1 - m) + 0.9 * m
        return {"references": ra, "reference_masks": m}, {"references": rb, "reference_masks": m}
    if name == "reference_captions":  # same exemplars, different text: only the captions change
        m = torch.zeros(n, 2, 1, h, w)
        m[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
        refs = torch.stack([batch.image[one], batch.image[two]], 1) * (1 - m) + 0.5 * m
        base = {"references": refs, "reference_masks": m}
        return ({**base, "reference_captions": [["a scratch", "a scratch"]] * n},
                {**base, "reference_captions": [["a hole", "a crack"]] * n})
    raise ValueError(f"no kit variants for condition {name!r}; override condition_variants")


class GeneratorConformance(_Base):
    """Contract checks for an image-level generator. Set the class attributes below."""

    generator_name: ClassVar[str] = ""  # registered name (resolved through the registry)
    generator_class: ClassVar[type | None] = None  # or the class directly
    params: ClassVar[dict] = {}  # a fast configuration
    bad_params: ClassVar[dict] = {}  # {field: out-of-range value}; each must raise naming the field
    conditions: ClassVar[dict] = {}  # ``Batch.with_conditions`` keywords for the test batch
    image_size: ClassVar[int] = 64
    batch_size: ClassVar[int] = 4
    expect_anomalies: ClassVar[bool] = True  # at least one sample anomalous with these params
    #: True when the sample records hold the choices but noise is drawn from the seeds at apply time
    #: (diffusion, GANs): replay then needs the same seeds too
    replay_needs_seeds: ClassVar[bool] = False
    #: the label the kit's box conditions use (a fitted class name for learned methods)
    box_label: ClassVar[Any] = "anomaly"

    # hooks a learned plugin overrides (e.g. build tiny modules and fit them briefly)
    def make_generator(self) -> Any:
        if self.generator_class is not None:
            return self.generator_class(**self.params)
        from anoplug.registry import get_registry

        return get_registry().get_generator(self.generator_name, **self.params)

    def make_batch(self) -> Any:
        """The test batch, carrying ``conditions``."""
        b = make_toy_batch(self.batch_size, self.image_size)
        return b.with_conditions(**self.conditions) if self.conditions else b

    def condition_variants(self, name: str, batch: Any) -> tuple[dict, dict]:
        """Two values of condition ``name`` that must give different outputs (override for your method)."""
        return condition_variants(name, batch, self.box_label)

    def generator_type(self) -> type:
        """The class under test, without building (or fitting) an instance when avoidable."""
        if self.generator_class is not None:
            return self.generator_class
        if self.generator_name:
            from anoplug.registry import get_registry

            return get_registry().generator_class(self.generator_name)
        return type(self.make_generator())

    @pytest.fixture(scope="class")
    @classmethod
    def gen(cls) -> Any:
        return cls().make_generator()

    @pytest.fixture(scope="class")
    @classmethod
    def batch(cls) -> Any:
        return cls().make_batch()

    @pytest.fixture(scope="class")
    @classmethod
    def output(cls, gen: Any, batch: Any) -> Any:
        return gen.generate(batch, seed=0)

    def test_metadata(self, gen: Any) -> None:
        from anoplug.specs import CATEGORIES

        cls = type(gen)
        assert cls.name and cls.title, "name and title must be set"
        assert cls.category in CATEGORIES, f"category {cls.category!r} not in the taxonomy"
        assert cls.paper.title and cls.paper.year > 1990 and cls.paper.url, "paper title, year and url must be set"
        for fname, f in cls.Params.model_fields.items():
            assert f.description, f"parameter {fname!r} has no description"
        if self.generator_name:
            from anoplug.registry import get_registry

            spec = get_registry().spec("generators", self.generator_name)
            declared = {"title": cls.title, "category": cls.category, "tags": tuple(cls.tags),
                        "needs_fit": bool(cls.requires.fit)}
            registered = {"title": spec.title, "category": spec.category, "tags": tuple(spec.tags),
                          "needs_fit": bool(spec.needs_fit)}
            assert registered == declared, f"the entry point's spec {registered} differs from the class {declared}"

    def test_output_contract(self, gen: Any, batch: Any, output: Any) -> None:
        import torch

        from anoplug.seeding import sample_seed
        from anoplug.serial import pack

        assert output is not batch
        assert output.image.shape == batch.image.shape and output.image.dtype == torch.float32
        assert output.mask.shape == (len(batch), 1, *batch.size) and output.mask.dtype == torch.float32
        assert float(output.image.min()) >= 0 and float(output.image.max()) <= 1
        assert bool(((output.mask == 0) | (output.mask == 1)).all()), "mask must be binary"
        assert len(output.label) == len(batch) == len(output.meta)
        params = gen.params.model_dump(mode="json")
        masked = gen.mask_provided()  # False: image-level labels only (Generator.provides_mask)
        for i in range(len(output)):
            anomalous = bool(output.mask[i].any())
            m = output.meta[i]
            if masked:
                assert (output.label[i] != "good") == anomalous, f"sample {i}: label {output.label[i]!r} vs mask"
                assert m.get("provides_mask", True) is True, f"sample {i}: meta says no mask but the method has one"
            else:
                assert not anomalous, f"sample {i}: the method provides no mask but returned a non-empty one"
                assert m.get("provides_mask") is False, f"sample {i}: a mask-less sample must say provides_mask: False"
            assert m["method"] == gen.name and m["method_version"] == gen.version, f"sample {i}: wrong method in meta"
            assert m["params"] == params, f"sample {i}: meta params differ from the generator's"
            assert m["seed"] == sample_seed(0, i), f"sample {i}: meta seed is not sample_seed(0, {i})"
            assert isinstance(m.get("sample"), dict), f"sample {i}: no draw record in meta['sample']"
            json.dumps(pack(m))  # provenance must serialise losslessly
        if self.expect_anomalies:
            assert any(output.label[i] != "good" for i in range(len(output))), "no anomaly generated"

    def test_draw_records_round_trip_losslessly(self, output: Any) -> None:
        from anoplug.generator import Samples

        store: dict = {}
        text = json.dumps(output.samples.pack(store, inline_max=16), allow_nan=False)
        back = Samples.unpack(json.loads(text), store)
        for i, (a, b) in enumerate(zip(output.samples, back)):
            assert _same(a, b), f"sample {i}: the draw record changed through JSON + side file"

    def test_replay_gives_the_same_bytes(self, gen: Any, batch: Any, output: Any) -> None:
        from anoplug.generator import Samples

        store: dict = {}
        records = Samples.unpack(json.loads(json.dumps(output.samples.pack(store))), store)
        seeds = [m["seed"] for m in output.meta] if self.replay_needs_seeds else [7] * len(batch)
        again = gen.generate(batch, seeds=seeds, samples=records)
        assert _bytes(again) == _bytes(output), "replaying the draw records gave other bytes"
        ids = [2, 1] if len(batch) > 2 else [0]  # a record must not depend on its position in the batch
        part = gen.generate(batch[ids], seeds=[seeds[i] for i in ids], samples=records.select(ids))
        assert part.mask.numpy().tobytes() == output.mask[ids].numpy().tobytes(), "replay in another batch: other mask"
        assert (part.image - output.image[ids]).abs().max() <= 1e-5, "replay in another batch: other image"

    def test_input_not_modified(self, gen: Any) -> None:
        b = self.make_batch()
        before = b.image.clone()
        gen.generate(b, seed=3)
        assert (b.image == before).all(), "generate() modified its input"

    def test_outside_mask_unchanged(self, gen: Any, batch: Any, output: Any) -> None:
        if not getattr(type(gen), "preserves_outside_mask", False):
            pytest.skip("method does not claim to keep pixels outside the mask")
        outside = (output.mask == 0).expand_as(output.image)
        assert (output.image[outside] == batch.image[outside]).all(), "pixels outside the mask changed"

    def test_mask_marks_change(self, gen: Any, batch: Any, output: Any) -> None:
        if not gen.mask_provided():
            pytest.skip("the method provides no mask (provides_mask = False)")
        for i in range(len(output)):
            if output.label[i] != "good":
                m = output.mask[i].bool().expand_as(output.image[i])
                diff = (output.image[i] - batch.image[i]).abs()
                assert float(diff[m].max()) > 0, f"sample {i}: nothing changed inside the mask"

    def test_same_seed_same_bytes(self, gen: Any, batch: Any, output: Any) -> None:
        again = gen.generate(batch, seed=0)
        assert again.image.numpy().tobytes() == output.image.numpy().tobytes(), "same seed, different image"
        assert again.mask.numpy().tobytes() == output.mask.numpy().tobytes(), "same seed, different mask"

    def test_per_sample_seeding_is_batch_independent(self, gen: Any, batch: Any, output: Any) -> None:
        seeds = [m["seed"] for m in output.meta]
        single = gen.generate(batch[1], seeds=[seeds[1]])
        assert single.mask.numpy().tobytes() == output.mask[1:2].numpy().tobytes()
        assert (single.image - output.image[1:2]).abs().max() <= 1e-5, "sample depends on its batch"

    def test_different_seeds_differ(self, gen: Any, batch: Any, output: Any) -> None:
        other = gen.generate(batch, seed=12345)
        assert not (other.image == output.image).all() or not (other.mask == output.mask).all()

    def test_every_used_condition_is_honoured(self, gen: Any) -> None:
        uses = [c for c in gen.requires.uses if c != "reference_masks"]
        if not uses:
            pytest.skip("the method reads no per-sample conditions")
        base = make_toy_batch(self.batch_size, self.image_size)
        for name in uses:
            va, vb = self.condition_variants(name, base)
            kept = {k: v for k, v in self.conditions.items() if k not in va}
            a = gen.generate(base.with_conditions(**kept, **va), seed=0)
            b = gen.generate(base.with_conditions(**kept, **vb), seed=0)
            assert _bytes(a) != _bytes(b), f"conditions.{name} changed and the output did not: it is not honoured"

    def test_missing_or_unused_condition_is_a_clear_error(self, gen: Any) -> None:
        from anoplug.conditions import CONDITION_NAMES, ConditionError

        base = make_toy_batch(self.batch_size, self.image_size)
        for name in gen.requires.conditions:
            rest = {k: v for k, v in self.conditions.items() if k != name}
            with pytest.raises(ConditionError, match=f"conditions.{name}"):
                gen.generate(base.with_conditions(**rest) if rest else base, seed=0)
        unused = [c for c in CONDITION_NAMES if c not in gen.requires.uses and c not in ("reference_masks",
                                                                                        "source_object_mask")]
        if unused:
            va, _ = condition_variants(unused[0], base)
            with pytest.raises(ConditionError, match=f"conditions.{unused[0]}"):
                gen.generate(base.with_conditions(**self.conditions, **va), seed=0)

    def test_bad_params_name_the_field(self) -> None:
        from anoplug.params import ParamError

        if not self.bad_params:
            pytest.skip("no bad_params declared")
        cls = self.generator_type()
        for field, value in self.bad_params.items():
            with pytest.raises(ParamError) as ei:
                cls(**{**self.params, field: value})
            assert field in str(ei.value), f"error does not name {field!r}: {ei.value}"
        with pytest.raises(ParamError):
            cls(**{**self.params, "no_such_parameter_xyz": 1})

    def test_save_load_roundtrip(self, gen: Any, batch: Any, output: Any, tmp_path: Any) -> None:
        gen.save(tmp_path / "g")
        again = type(gen).load(tmp_path / "g")
        assert again.params == gen.params and again.is_fitted
        out2 = again.generate(batch, seed=0)
        assert _bytes(out2) == _bytes(output), "save -> load -> generate gave other bytes"

    def test_no_network(self, batch: Any) -> None:
        with block_network():
            g = self.make_generator()
            out = g.generate(batch, seed=1)
        assert len(out) == len(batch)


class LearnedGeneratorConformance(GeneratorConformance):
    """Adds the learned-method contract: fit (tiny) → generate → save → load → same bytes, and resume.

    Set ``params`` to a tiny configuration; ``fit_steps`` is what the kit trains for.
    Override :meth:`fit_data` to give your method the data it needs.
    """

    fit_steps: ClassVar[int] = 2
    resume_steps: ClassVar[int] = 4  # the resume check runs this many steps, checkpointing halfway
    replay_needs_seeds: ClassVar[bool] = True

    def fit_data(self) -> tuple[Any, Any]:
        """(normals, anomalies): toy normals, and — for methods that need them — toy defects with masks."""
        normals = make_toy_batch(self.batch_size, self.image_size, seed=10)
        return normals, make_toy_anomalies(self.batch_size, self.image_size)

    def unfitted(self) -> Any:
        return self.generator_type()(**self.params)

    def make_generator(self) -> Any:
        normals, anomalies = self.fit_data()
        return self.unfitted().fit(normals, anomalies if self.generator_type().requires.anomalies else None,
                                   steps=self.fit_steps)

    def _fit_args(self) -> tuple[Any, Any]:
        normals, anomalies = self.fit_data()
        return normals, anomalies if self.generator_type().requires.anomalies else None

    def test_generate_before_fit_is_a_clear_error(self) -> None:
        from anoplug.generator import NotFittedError

        g = self.unfitted()
        assert not g.is_fitted
        with pytest.raises(NotFittedError):
            g.generate(self.make_batch(), seed=0)

    def test_fit_marks_fitted_and_logs_each_step(self, gen: Any) -> None:
        assert gen.is_fitted
        assert len(gen.history) >= self.fit_steps and all(isinstance(h, dict) for h in gen.history)

    def test_shipped_checkpoints_load_and_generate(self) -> None:
        """Every checkpoint in ``pretrained`` loads fitted, safetensors only, and generates valid samples."""
        cls = self.generator_type()
        if not cls.pretrained:
            pytest.skip(f"{cls.name} ships no checkpoint")
        for name in cls.pretrained:
            path = cls.pretrained_path(name)
            assert (path / "weights.safetensors").is_file() and (path / "config.json").is_file(), path
            assert not [p.name for p in path.iterdir() if p.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt")], \
                f"{path} holds a pickle-based weights file"
            g = cls.from_pretrained(name)
            assert g.is_fitted, f"shipped checkpoint {name!r} loads unfitted"
            batch = self.make_batch()
            out = g.generate(batch, seeds=list(range(len(batch))))
            assert out.image.shape[0] == len(batch) and torch_isfinite(out.image), name

    def test_resume_gives_the_weights_of_an_uninterrupted_run(self, tmp_path: Any) -> None:
        half = self.resume_steps // 2
        whole = self.unfitted().fit(*self._fit_args(), steps=self.resume_steps, checkpoint_every=half,
                                    checkpoint_dir=tmp_path / "ckpt")
        mid = tmp_path / "ckpt" / f"step-{half:06d}"  # multi-phase fits plan more steps: later checkpoints too
        assert mid.is_dir(), f"no checkpoint at step {half}"
        resumed = self.unfitted().fit(*self._fit_args(), steps=self.resume_steps, resume_from=mid)
        for key, module in whole.modules().items():
            theirs = resumed.modules()[key].state_dict()
            for n, t in module.state_dict().items():
                assert _same(t, theirs[n]), f"{key}.{n} differs after resuming at step {half}"
        assert _same(whole.extra_state(), resumed.extra_state()), "extra state differs after resuming"
        assert [h for h in whole.history] == [h for h in resumed.history], "the training history differs"


def torch_isfinite(t: Any) -> bool:
    import torch

    return bool(torch.isfinite(t).all())


def make_toy_anomalies(n: int = 4, size: int = 64, seed: int = 5, label: str = "scratch"):
    """Toy "real" defects: dark rectangles with their masks and a defect label (for few-shot fits)."""
    import torch

    b = make_toy_batch(n, size, seed=seed)
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, size, size)
    for i in range(n):
        y, x = (int(v) for v in torch.randint(2, size // 2, (2,), generator=g))
        mask[i, :, y:y + size // 4, x:x + size // 3] = 1
    image = b.image * (1 - mask) + 0.15 * mask
    from anoplug.types import Batch

    return Batch(image=image, mask=mask, label=[label] * n, meta=[{"source": f"toy-defect-{i}"} for i in range(n)])


class FeatureGeneratorConformance(_Base):
    """Contract checks for ``generate_features`` (feature-level methods)."""

    generator_name: ClassVar[str] = ""
    generator_class: ClassVar[type | None] = None
    params: ClassVar[dict] = {}
    bad_params: ClassVar[dict] = {}
    feature_shape: ClassVar[tuple[int, int, int, int]] = (4, 16, 8, 8)
    #: False for methods that draw nothing at random (e.g. PBAS's boundary push): then
    #: different seeds must give the *same* output instead of different output.
    stochastic: ClassVar[bool] = True

    def make_generator(self) -> Any:
        if self.generator_class is not None:
            return self.generator_class(**self.params)
        from anoplug.registry import get_registry

        return get_registry().get_generator(self.generator_name, **self.params)

    def make_features(self) -> Any:
        import torch

        return torch.randn(*self.feature_shape, generator=torch.Generator().manual_seed(0))

    def test_shapes_and_mask(self) -> None:
        import torch

        g, f = self.make_generator(), self.make_features()
        before = f.clone()
        out, mask = g.generate_features(f, seed=0)
        assert torch.equal(f, before), "generate_features modified its input"
        assert out.dtype == f.dtype and out.shape[1:] == f.shape[1:]
        if mask is not None:
            assert mask.shape[0] == out.shape[0] and mask.shape[1] == 1 and mask.shape[2:] == f.shape[2:]
            assert bool(((mask == 0) | (mask == 1)).all())
            assert bool(mask.any()), "no anomaly in the feature mask"

    def test_deterministic(self) -> None:
        g, f = self.make_generator(), self.make_features()
        a, ma = g.generate_features(f, seed=0)
        b, mb = g.generate_features(f, seed=0)
        c, _ = g.generate_features(f, seed=1)
        assert a.numpy().tobytes() == b.numpy().tobytes()
        assert (ma is None and mb is None) or ma.numpy().tobytes() == mb.numpy().tobytes()
        if self.stochastic:
            assert not (a == c).all(), "different seeds gave identical features"
        else:
            assert a.numpy().tobytes() == c.numpy().tobytes(), "a method that samples nothing depends on the seed"

    def test_bad_params_name_the_field(self) -> None:
        from anoplug.params import ParamError

        cls = self.generator_class or type(self.make_generator())
        if not self.bad_params:
            pytest.skip("no bad_params declared")
        for field, value in self.bad_params.items():
            with pytest.raises(ParamError) as ei:
                cls(**{**self.params, field: value})
            assert field in str(ei.value)

    def test_no_network(self) -> None:
        with block_network():
            out, _ = self.make_generator().generate_features(self.make_features(), seed=2)
        assert math.isfinite(float(out.sum()))

    def test_save_load_roundtrip(self, tmp_path: Any) -> None:
        g, f = self.make_generator(), self.make_features()
        g.save(tmp_path / "g")
        again = type(g).load(tmp_path / "g")
        assert again.params == g.params and again.is_fitted == g.is_fitted
        a, ma = g.generate_features(f, seed=0)
        b, mb = again.generate_features(f, seed=0)
        assert a.numpy().tobytes() == b.numpy().tobytes(), "save -> load -> generate_features gave other features"
        assert (ma is None and mb is None) or ma.numpy().tobytes() == mb.numpy().tobytes()


class EvaluatorConformance(_Base):
    """Contract checks for an evaluator."""

    evaluator_name: ClassVar[str] = ""
    evaluator_class: ClassVar[type | None] = None
    params: ClassVar[dict] = {}
    bad_params: ClassVar[dict] = {}
    needs_normals: ClassVar[bool] = False
    needs_real: ClassVar[bool] = False

    def make_evaluator(self) -> Any:
        if self.evaluator_class is not None:
            return self.evaluator_class(**self.params)
        from anoplug.registry import get_registry

        return get_registry().get_evaluator(self.evaluator_name, **self.params)

    def make_inputs(self) -> dict:
        """``generated``, ``normals`` and ``real`` batches; override for meaningful data."""
        gen = make_toy_batch(4, 64, seed=1)
        gen.mask[:, :, 20:40, 20:40] = 1
        gen.label = ["synthetic"] * 4
        return {"generated": gen, "normals": make_toy_batch(4, 64, seed=2), "real": make_toy_batch(4, 64, seed=3)}

    def test_report(self) -> None:
        from anoplug.evaluator import Report

        ev = self.make_evaluator()
        inp = self.make_inputs()
        with block_network():
            rep = ev.evaluate(inp["generated"], normals=inp.get("normals"), real=inp.get("real"))
        assert isinstance(rep, Report) and rep.metrics, "evaluator returned no metrics"
        for k, m in rep.metrics.items():
            assert isinstance(m.value, float), f"metric {k} is not a float"
            assert isinstance(m.higher_is_better, bool)
        json.dumps(rep.to_dict())

    def test_deterministic(self) -> None:
        inp = self.make_inputs()
        a = self.make_evaluator().evaluate(inp["generated"], normals=inp.get("normals"), real=inp.get("real"))
        b = self.make_evaluator().evaluate(inp["generated"], normals=inp.get("normals"), real=inp.get("real"))
        va = {k: m.value for k, m in a.metrics.items()}
        vb = {k: m.value for k, m in b.metrics.items()}
        assert va.keys() == vb.keys()
        for k in va:  # NaN marks an unavailable metric and must be NaN both times
            assert va[k] == vb[k] or (math.isnan(va[k]) and math.isnan(vb[k])), f"metric {k}: {va[k]} vs {vb[k]}"

    def test_bad_params_name_the_field(self) -> None:
        from anoplug.params import ParamError

        if not self.bad_params:
            pytest.skip("no bad_params declared")
        cls = self.evaluator_class or type(self.make_evaluator())
        for field, value in self.bad_params.items():
            with pytest.raises(ParamError) as ei:
                cls(**{**self.params, field: value})
            assert field in str(ei.value)
