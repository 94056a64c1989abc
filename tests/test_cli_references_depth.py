"""``anoplug generate --references DIR`` and ``--depth DIR``: the folder conventions, what reaches each sample, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anoplug import GeneratorSpec, hookimpl
from anoplug.cli import main
from anoplug.data.base import DataError
from anoplug.data.condition_files import read_depth
from anoplug.data.inputs import ConditionSource, InMemoryDataset, sample_inputs
from anoplug.generator import Generator, Paper, Requires, Samples
from anoplug.params import Params
from anoplug.testing import make_toy_batch


class RefDepth(Generator):
    """Pastes reference 0 (inside its mask) into the centre, shaded by the depth; label = reference 0's caption."""

    name, title, category = "test-refdepth", "references and depth", "cutpaste"
    paper = Paper("test", year=2025, url="https://example.org")
    Params = Params
    requires = Requires(accepts=("references", "reference_masks", "reference_captions"), accepts_depth=True)

    def sample(self, batch, rngs):
        return Samples({} for _ in rngs)

    def apply(self, batch, samples):
        c, (h, w) = batch.conditions, batch.size
        mask = torch.zeros(len(batch), 1, h, w)
        mask[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
        paint = torch.full_like(batch.image, 0.5)
        if c.references is not None:
            paint = c.references[:, 0] * (c.reference_masks[:, 0] if c.reference_masks is not None else 1)
        if batch.depth is not None:
            paint = paint * batch.depth.clamp(0, 1)
        out = batch.clone()
        out.image, out.mask = batch.image * (1 - mask) + paint * mask, mask
        out.label = [row[0] for row in c.reference_captions] if c.reference_captions else ["painted"] * len(batch)
        return out


class RefsOnly(RefDepth):
    name = "test-refs-only"
    requires = Requires(accepts=("references",))


class Plugin:
    @hookimpl
    def anoplug_generators(self):
        return [GeneratorSpec("test-refdepth", RefDepth, title="refs", category="cutpaste"),
                GeneratorSpec("test-refs-only", RefsOnly, title="refs only", category="cutpaste")]


@pytest.fixture
def plugin(tmp_plugin):
    tmp_plugin(Plugin(), "test-refdepth-plugin")


def _refs(d: Path, k: int = 2, masks: bool = True, size: tuple[int, int] = (40, 48)) -> list[np.ndarray]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(k):
        a = np.zeros((*size, 3), np.uint8)
        a[..., i % 3] = 60 + 80 * i  # reference i is one flat colour
        Image.fromarray(a).save(d / f"r{i}.png")
        out.append(a)
        if masks:
            m = np.zeros(size, np.uint8)
            m[: size[0] // 2] = 255  # top half is the defect
            Image.fromarray(m).save(d / f"r{i}_mask.png")
    return out


def _run(tmp: Path, *argv: str, name: str = "test-refdepth", data: str = "toy:metal", out: str = "o") -> int:
    return main(["generate", name, "--data", data, "--size", "32", "-n", "3", "--out", str(tmp / out), "-q",
                 "--workers", "1", *argv])


def _records(root: Path) -> list[dict]:
    return [json.loads(line) for line in root.joinpath("manifest.jsonl").read_text().splitlines()]


# -- references -------------------------------------------------------------------------------------------------------
def test_reference_folder_gives_every_sample_all_k_with_masks_and_aligned_captions(tmp_path: Path) -> None:
    arrays = _refs(tmp_path / "refs", 3)
    (tmp_path / "refs/captions.json").write_text(json.dumps({"r0": "a scratch", "r1.png": "a dent"}))
    (tmp_path / "refs/r2.txt").write_text("a hole\n")
    src = ConditionSource(references=tmp_path / "refs")
    assert src.names() == ("references",) and src.extras() == ("reference_masks", "reference_captions")
    b = sample_inputs(RefDepth(), InMemoryDataset(make_toy_batch(2, 32)), [5, 6], src)
    c = b.conditions
    assert c.references.shape == (2, 3, 3, 32, 32) and c.reference_masks.shape == (2, 3, 1, 32, 32)
    assert c.reference_captions == [["a scratch", "a dent", "a hole"]] * 2  # caption k describes reference k
    for k, a in enumerate(arrays):  # flat colours survive the bilinear resize; same K for every sample
        want = torch.from_numpy(a[0, 0]).float() / 255
        assert torch.allclose(c.references[1, k, :, 5, 5], want, atol=1e-6)
    assert torch.equal(c.reference_masks[0, 0, 0, :16], torch.ones(16, 32))  # top half, resized nearest
    assert float(c.reference_masks[0, 0, 0, 16:].sum()) == 0
    assert src.for_sample(7) == {"references": ["r0.png", "r1.png", "r2.png"]}
    # a method that reads references only gets neither masks nor captions (the CLI says so in a note)
    only = sample_inputs(RefsOnly(), InMemoryDataset(make_toy_batch(2, 32)), [0, 1], src)
    assert only.conditions.present() == ("references",)


def test_cli_references_reach_the_method_and_replay(plugin, tmp_path: Path, capsys) -> None:
    _refs(tmp_path / "refs", 2)
    (tmp_path / "refs/captions.json").write_text(json.dumps({"r0": "scratch", "r1": "dent"}))
    assert _run(tmp_path, "--references", str(tmp_path / "refs")) == 0
    root = tmp_path / "o/metal"
    recs = _records(root)
    assert [r["label"] for r in recs] == ["scratch"] * 3  # the caption of reference 0 reached apply()
    assert recs[0]["conditions"]["references"]["files"] == 2
    assert recs[0]["sample_conditions"] == {"references": ["r0.png", "r1.png"]}
    img = np.asarray(Image.open(root / recs[0]["image"]))
    assert tuple(img[9, 16]) == (60, 0, 0) and tuple(img[20, 16]) == (0, 0, 0)  # r0's colour inside its mask half
    assert main(["generate", "--replay", str(root / "manifest.jsonl"), "--out", str(tmp_path / "B"), "-q",
                 "--workers", "1"]) == 0
    again = tmp_path / "B/metal"
    assert all((again / r["image"]).read_bytes() == (root / r["image"]).read_bytes() for r in recs)
    capsys.readouterr()
    assert _run(tmp_path, "--references", str(tmp_path / "refs"), name="test-refs-only", out="C") == 0
    out = capsys.readouterr().out
    assert "does not read reference masks" in out and "does not read reference captions" in out


@pytest.mark.parametrize("setup, needle", [
    (lambda d: None, "not a directory"),
    (lambda d: d.mkdir(), "no reference images"),
    (lambda d: (_refs(d, 1, masks=False), Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "zz_mask.png")),
     "mask zz_mask.png has no reference image zz"),
    (lambda d: (_refs(d, 2), (d / "r1_mask.png").unlink()), "r1.png has no mask r1_mask.png"),
    (lambda d: (_refs(d, 2), (d / "r0.txt").write_text("a dent")), "r1.png has no caption"),
    (lambda d: (_refs(d, 1), (d / "captions.json").write_text('{"r9": "x"}')), "caption for 'r9'"),
    (lambda d: (_refs(d, 1), (d / "captions.json").write_text("{")), "captions.json is not valid JSON"),
    (lambda d: (_refs(d, 1), (d / "captions.json").write_text('{"r0": "x"}'), (d / "r0.txt").write_text("y")),
     "both captions.json and r0.txt"),
    (lambda d: (_refs(d, 1), (d / "r0.txt").write_text("  ")), "caption of r0.png is empty"),
])
def test_bad_reference_folders_exit_2_with_one_line(setup, needle, plugin, tmp_path: Path, capsys) -> None:
    setup(tmp_path / "refs")
    assert _run(tmp_path, "--references", str(tmp_path / "refs")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--references" in err[0] and needle in err[0], err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_references_to_a_method_that_does_not_accept_them_are_refused(tmp_path: Path, capsys) -> None:
    _refs(tmp_path / "refs", 1)
    assert _run(tmp_path, "--references", str(tmp_path / "refs"), name="draem") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "draem does not use conditions.references (--references)" in err[0], err
    assert not (tmp_path / "o").exists()
    from anoplug.registry import get_registry

    draem = get_registry().generator_class("draem")()
    with pytest.raises(DataError, match="does not use conditions.references"):
        sample_inputs(draem, InMemoryDataset(make_toy_batch(1, 32)), [0], ConditionSource(references=tmp_path / "refs"))


# -- depth --------------------------------------------------------------------------------------------------------------
def test_depth_formats_and_their_normalisation(tmp_path: Path) -> None:
    import tifffile

    ramp16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(ramp16).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I")
    assert np.allclose(read_depth(tmp_path / "a.png", (8, 8)), ramp16 / 65535)  # full 16-bit precision, not >> 8
    Image.fromarray(np.full((8, 8), 51, np.uint8)).save(tmp_path / "b.png")
    assert np.allclose(read_depth(tmp_path / "b.png", (8, 8)), 0.2)
    metres = np.full((8, 8), 2.5, np.float32)
    metres[0, 0] = np.nan  # a sensor hole
    np.save(tmp_path / "c.npy", metres)
    d = read_depth(tmp_path / "c.npy", (8, 8))
    assert d[0, 0] == 0 and np.all(d.flat[1:] == 2.5)  # floats as stored; non-finite -> 0 (no data)
    xyz = np.zeros((8, 8, 3), np.float32)
    xyz[..., 2] = 0.7
    tifffile.imwrite(tmp_path / "d.tiff", xyz, photometric="rgb")
    assert np.allclose(read_depth(tmp_path / "d.tiff", (8, 8)), 0.7)  # an xyz point cloud gives its z
    tifffile.imwrite(tmp_path / "e.tif", ramp16)
    assert np.allclose(read_depth(tmp_path / "e.tif", (4, 4)), ramp16[::2, ::2] / 65535)  # nearest resize


def test_depth_maps_are_cycled_per_sample_and_replace_the_datasets(tmp_path: Path) -> None:
    (tmp_path / "dep").mkdir()
    for k in range(2):
        np.save(tmp_path / f"dep/{k}.npy", np.full((16, 16), 0.25 + 0.5 * k, np.float32))
    src = ConditionSource(depth=tmp_path / "dep")
    base = make_toy_batch(3, 32)._replace_trusted(depth=torch.full((3, 1, 32, 32), 9.0))
    b = sample_inputs(RefDepth(), InMemoryDataset(base), [0, 1, 2, 5], src)
    assert [float(b.depth[i].unique()) for i in range(4)] == [0.25, 0.75, 0.25, 0.75]  # file i % 2, not the data's 9
    assert src.for_sample(5) == {"depth": "1.npy"} and src.names() == ()
    with pytest.raises(DataError, match="does not read depth maps: drop --depth"):
        sample_inputs(RefsOnly(), InMemoryDataset(base), [0], src)


@pytest.mark.parametrize("setup, needle", [
    (lambda d: None, "not a directory of depth maps"),
    (lambda d: d.mkdir(), "no depth maps"),
    (lambda d: (d.mkdir(), Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "rgb.png")), "got mode RGB"),
    (lambda d: (d.mkdir(), np.save(d / "cube.npy", np.zeros((2, 8, 8), np.float32))), "float32 (2, 8, 8)"),
    (lambda d: (d.mkdir(), np.save(d / "obj.npy", np.array([{"a": 1}], dtype=object))), "obj.npy"),
    (lambda d: (d.mkdir(), (d / "bad.png").write_bytes(b"not a png")), "bad.png: not a readable depth map"),
])
def test_bad_depth_folders_exit_2_with_one_line(setup, needle, plugin, tmp_path: Path, capsys) -> None:
    setup(tmp_path / "dep")
    assert _run(tmp_path, "--depth", str(tmp_path / "dep")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--depth" in err[0] and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_depth_to_a_method_that_reads_none_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "dep").mkdir()
    np.save(tmp_path / "dep/0.npy", np.zeros((8, 8), np.float32))
    assert _run(tmp_path, "--depth", str(tmp_path / "dep"), name="draem") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "draem does not read depth maps: drop --depth" in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.fixture
def anomalyhybrid():
    from anoplug.registry import get_registry

    cls = get_registry().generator_class("anomalyhybrid")
    assert cls.requires.reads_depth, "AnomalyHybrid reads batch.depth: it must declare Requires(accepts_depth=True)"
    return cls


def test_cli_depth_reaches_anomalyhybrid(anomalyhybrid, tmp_path: Path) -> None:
    (tmp_path / "dep").mkdir()
    y, x = np.mgrid[0:48, 0:48]
    for k in range(2):  # two tilted planes, 16-bit
        Image.fromarray(((x + (k + 1) * y) / 150 * 65535).astype(np.uint16)).save(tmp_path / f"dep/d{k}.png")
    argv = ["-p", "depth_source=batch", "--n-train", "0"]
    assert _run(tmp_path, *argv, "--depth", str(tmp_path / "dep"), name="anomalyhybrid", data="toy:surface3d") == 0
    assert _run(tmp_path, *argv, name="anomalyhybrid", data="toy:surface3d", out="own") == 0
    mine, own = _records(tmp_path / "o/surface3d"), _records(tmp_path / "own/surface3d")
    assert [r["sample_conditions"] for r in mine] == [{"depth": f"d{i % 2}.png"} for i in range(3)]
    assert mine[0]["conditions"]["depth"]["files"] == 2
    differs = [(tmp_path / "o/surface3d" / a["image"]).read_bytes() != (tmp_path / "own/surface3d" / b["image"]).read_bytes()
               for a, b in zip(mine, own)]
    assert any(differs), "the user's depth maps did not change anomalyhybrid's output"
    # RGB-only data: depth_source=batch needs depth, and --depth supplies it
    assert _run(tmp_path, *argv, name="anomalyhybrid", out="rgb") == 2
    assert _run(tmp_path, *argv, "--depth", str(tmp_path / "dep"), name="anomalyhybrid", out="rgb2") == 0


def test_cli_references_reach_anomagic(tmp_path: Path) -> None:
    _refs(tmp_path / "refs", 2)
    argv = ["-p", "steps=2", "-p", "max_attempts=1", "--n-train", "0"]
    assert main(["generate", "anomagic", "--data", "toy:nut", "--size", "32", "-n", "1", "--out", str(tmp_path / "o"),
                 "-q", "--workers", "1", "--references", str(tmp_path / "refs"), *argv]) == 0
    rec = _records(tmp_path / "o/nut")[0]
    assert rec["sample"]["reference_category"] == "given", rec["sample"]  # not retrieved from its corpus
    assert rec["sample"]["reference"] in (0, 1)


def test_replay_refuses_the_condition_flags(tmp_path: Path, capsys) -> None:
    (tmp_path / "m.jsonl").write_text("{}\n")
    for flag in ("--references", "--depth"):
        assert main(["generate", "--replay", str(tmp_path / "m.jsonl"), flag, str(tmp_path), "--out",
                     str(tmp_path / "o")]) == 2
        assert f"drop {flag}" in capsys.readouterr().err


def test_info_lists_references_and_depth(plugin, capsys) -> None:
    assert main(["info", "test-refdepth"]) == 0
    out = capsys.readouterr().out
    assert "references (optional; --references DIR)" in out and "reference_captions" not in out
    assert "depth:     batch.depth (optional; the dataset's own, or --depth DIR)" in out
