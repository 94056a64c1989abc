"""The conformance kit: a pytest plugin every generator plugin (ours or third-party) runs.

Registered through the ``pytest11`` entry point, so installing anoplug gives these
fixtures to any test suite:

- ``anoplug_pm``: an isolated :class:`~anoplug.registry.Registry` (built-ins only, no
  entry-point discovery) installed as the process registry for the test;
- ``tmp_plugin``: registers an object as a plugin in that registry for one test;
- ``toy_batch``: a small deterministic batch (4 × 3 × 64 × 64, with an object mask);
- ``no_network``: a socket guard that fails the test on any connection attempt.

Mixins ``GeneratorConformance``, ``FeatureGeneratorConformance`` and
``EvaluatorConformance`` turn a few class attributes into a full contract check::

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

__all__ = ["make_toy_batch", "GeneratorConformance", "FeatureGeneratorConformance", "EvaluatorConformance",
           "NetworkBlocked", "block_network"]


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


class GeneratorConformance(_Base):
    """Contract checks for an image-level generator. Set the class attributes below."""

    generator_name: ClassVar[str] = ""  # registered name (resolved through the registry)
    generator_class: ClassVar[type | None] = None  # or the class directly
    params: ClassVar[dict] = {}  # a fast configuration
    bad_params: ClassVar[dict] = {}  # {field: out-of-range value}; each must raise naming the field
    conditions: ClassVar[dict] = {}  # extra keyword conditions for generate()
    image_size: ClassVar[int] = 64
    batch_size: ClassVar[int] = 4
    expect_anomalies: ClassVar[bool] = True  # at least one sample anomalous with these params

    # hooks a learned plugin overrides (e.g. build tiny modules and fit them briefly)
    def make_generator(self) -> Any:
        if self.generator_class is not None:
            return self.generator_class(**self.params)
        from anoplug.registry import get_registry

        return get_registry().get_generator(self.generator_name, **self.params)

    def make_batch(self) -> Any:
        return make_toy_batch(self.batch_size, self.image_size)

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
        return gen.generate(batch, seed=0, **cls.conditions)

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

            assert get_registry().spec("generators", self.generator_name).category == cls.category

    def test_output_contract(self, batch: Any, output: Any) -> None:
        import torch

        assert output is not batch
        assert output.image.shape == batch.image.shape and output.image.dtype == torch.float32
        assert output.mask.shape == (len(batch), 1, *batch.size) and output.mask.dtype == torch.float32
        assert float(output.image.min()) >= 0 and float(output.image.max()) <= 1
        assert bool(((output.mask == 0) | (output.mask == 1)).all()), "mask must be binary"
        assert len(output.label) == len(batch) == len(output.meta)
        for i in range(len(output)):
            anomalous = bool(output.mask[i].any())
            assert (output.label[i] != "good") == anomalous, f"sample {i}: label {output.label[i]!r} vs mask"
            assert output.meta[i]["method"] == type(output).__name__ or output.meta[i]["method"]
            assert "seed" in output.meta[i] and "params" in output.meta[i]
            json.dumps(output.meta[i])  # provenance must be JSON-serialisable
        if self.expect_anomalies:
            assert any(output.label[i] != "good" for i in range(len(output))), "no anomaly generated"

    def test_input_not_modified(self, gen: Any) -> None:
        b = self.make_batch()
        before = b.image.clone()
        gen.generate(b, seed=3, **self.conditions)
        assert (b.image == before).all(), "generate() modified its input"

    def test_outside_mask_unchanged(self, gen: Any, batch: Any, output: Any) -> None:
        if not getattr(type(gen), "preserves_outside_mask", False):
            pytest.skip("method does not claim to keep pixels outside the mask")
        outside = (output.mask == 0).expand_as(output.image)
        assert (output.image[outside] == batch.image[outside]).all(), "pixels outside the mask changed"

    def test_mask_marks_change(self, batch: Any, output: Any) -> None:
        for i in range(len(output)):
            if output.label[i] != "good":
                m = output.mask[i].bool().expand_as(output.image[i])
                diff = (output.image[i] - batch.image[i]).abs()
                assert float(diff[m].max()) > 0, f"sample {i}: nothing changed inside the mask"

    def test_same_seed_same_bytes(self, gen: Any, batch: Any, output: Any) -> None:
        again = gen.generate(batch, seed=0, **self.conditions)
        assert again.image.numpy().tobytes() == output.image.numpy().tobytes(), "same seed, different image"
        assert again.mask.numpy().tobytes() == output.mask.numpy().tobytes(), "same seed, different mask"

    def test_per_sample_seeding_is_batch_independent(self, gen: Any, batch: Any, output: Any) -> None:
        seeds = [m["seed"] for m in output.meta]
        single = gen.generate(batch[1], seeds=[seeds[1]], **self.conditions)
        assert single.mask.numpy().tobytes() == output.mask[1:2].numpy().tobytes()
        assert (single.image - output.image[1:2]).abs().max() <= 1e-5, "sample depends on its batch"

    def test_different_seeds_differ(self, gen: Any, batch: Any, output: Any) -> None:
        other = gen.generate(batch, seed=12345, **self.conditions)
        assert not (other.image == output.image).all() or not (other.mask == output.mask).all()

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
        assert again.params == gen.params
        out2 = again.generate(batch, seed=0, **self.conditions)
        assert (out2.image - output.image).abs().max() <= 1e-5 and (out2.mask == output.mask).all()

    def test_no_network(self, batch: Any) -> None:
        with block_network():
            g = self.make_generator()
            out = g.generate(batch, seed=1, **self.conditions)
        assert len(out) == len(batch)


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
