"""Typed per-sample conditions: validated naming the field, carried with the batch, identical from every caller."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anoplug import GeneratorSpec, hookimpl
from anoplug.cli import main
from anoplug.conditions import ConditionError, Conditions
from anoplug.generator import Generator, Paper, Requires, Samples
from anoplug.params import Params
from anoplug.testing import make_toy_batch
from anoplug.types import Batch, BatchError, load_image


class Painter(Generator):
    """Darkens where it is asked to: the target mask, else the boxes; the prompt becomes the label."""

    name = "test-painter"
    title = "test painter"
    category = "cutpaste"
    paper = Paper("test", year=2025, url="https://example.org")
    Params = Params
    requires = Requires(accepts=("target_mask", "boxes", "prompt"))

    def sample(self, batch, rngs):
        return Samples({} for _ in rngs)

    def apply(self, batch, samples):
        c, (h, w) = batch.conditions, batch.size
        mask = torch.zeros(len(batch), 1, h, w)
        if c.target_mask is not None:
            mask = c.target_mask.clone()
        elif c.boxes is not None:
            for i, row in enumerate(c.boxes):
                for _, x1, y1, x2, y2 in row:
                    mask[i, :, int(y1 * h):int(y2 * h), int(x1 * w):int(x2 * w)] = 1
        out = batch.clone()
        out.image, out.mask = batch.image * (1 - 0.5 * mask), mask
        names = c.prompt or ["painted"] * len(batch)
        out.label = [names[i].replace(" ", "_") if bool(mask[i].any()) else "good" for i in range(len(batch))]
        return out


class PainterPlugin:
    @hookimpl
    def anoplug_generators(self):
        return [GeneratorSpec("test-painter", Painter, title="test painter", category="cutpaste")]


@pytest.fixture
def painter(tmp_plugin):
    tmp_plugin(PainterPlugin(), "test-painter-plugin")
    return Painter


# -- the record ------------------------------------------------------------------------------------
def test_validation_names_the_field() -> None:
    b = make_toy_batch(2, 16)
    cases = [({"target_mask": torch.ones(2, 1, 8, 8)}, "conditions.target_mask must be"),
             ({"target_mask": torch.full((2, 1, 16, 16), 0.5)}, "conditions.target_mask must be binary"),
             ({"prompt": ["one"]}, "conditions.prompt"),
             ({"boxes": [[("x", 0.5, 0.1, 0.2, 0.9)], []]}, "conditions.boxes[0]"),
             ({"boxes": [[]]}, "conditions.boxes"),
             ({"source_object_mask": torch.ones(2, 1, 16, 16)}, "without conditions.source_image"),
             ({"references": torch.rand(2, 3, 16, 16)}, "conditions.references")]
    for kw, needle in cases:
        with pytest.raises(ConditionError) as ei:
            b.with_conditions(**kw)
        assert needle in str(ei.value), (kw.keys(), str(ei.value))
    with pytest.raises(BatchError, match="unknown condition 'maks'"):
        b.with_conditions(maks=torch.ones(2, 1, 16, 16))


def test_conditions_are_sliced_concatenated_and_moved_with_the_batch() -> None:
    b = make_toy_batch(3, 16)
    m = torch.zeros(3, 1, 16, 16)
    m[1, :, :4] = 1
    c = b.with_conditions(target_mask=m, prompt=["a", "b", "c"], boxes=[[("s", 0, 0, 0.5, 0.5)], [], []])
    part = c[[2, 1]]
    assert part.conditions.prompt == ["c", "b"] and part.conditions.boxes == [[], []]
    assert torch.equal(part.conditions.target_mask[1], m[1])
    both = Batch.cat([c[[0]], c[[1, 2]]])
    assert both.conditions.prompt == ["a", "b", "c"] and torch.equal(both.conditions.target_mask, m)
    assert c.to("cpu").conditions.prompt == ["a", "b", "c"] and c.clone().conditions.boxes == c.conditions.boxes
    with pytest.raises(ConditionError, match="some batches only"):
        Batch.cat([c[[0]], b[[1]]])
    assert c.keep_conditions(["prompt"]).conditions.present() == ("prompt",)
    assert Conditions().present() == () and not Conditions()


def test_a_generator_refuses_what_it_does_not_read_and_honours_what_it_does(painter) -> None:
    b = make_toy_batch(2, 16)
    m = torch.zeros(2, 1, 16, 16)
    m[:, :, 2:6, 2:6] = 1
    out = painter().generate(b.with_conditions(target_mask=m, prompt="a dent"), seed=0)
    assert torch.equal(out.mask, m) and out.label == ["a_dent", "a_dent"]
    assert out.conditions.prompt == ["a dent", "a dent"]  # the output says what was asked
    with pytest.raises(ConditionError, match="does not use conditions.source_image"):
        painter().generate(b.with_conditions(source_image=b.image), seed=0)

    class Needy(Painter):
        name = "test-needy"
        requires = Requires(conditions=("prompt",))

    with pytest.raises(ConditionError, match="needs conditions.prompt"):
        Needy().generate(b, seed=0)
    with pytest.raises(ValueError, match="unknown condition 'colour'"):
        Requires(accepts=("colour",))


# -- from the command line -------------------------------------------------------------------------
def _masks(d: Path, n: int, size: int) -> list[np.ndarray]:
    d.mkdir()
    out = []
    for k in range(n):
        a = np.zeros((size, size), np.uint8)
        a[4 * k:4 * k + 8, 10:20] = 255
        Image.fromarray(a).save(d / f"m{k}.png")
        out.append(a > 127)
    return out


def test_cli_masks_boxes_and_prompt_reach_each_sample(painter, tmp_path: Path, capsys) -> None:
    masks = _masks(tmp_path / "masks", 2, 32)
    assert main(["generate", "test-painter", "--data", "toy:metal", "--size", "32", "-n", "5", "--out",
                 str(tmp_path / "A"), "--masks", str(tmp_path / "masks"), "--prompt", "a scratch", "-q"]) == 0
    recs = [json.loads(line) for line in (tmp_path / "A/metal/manifest.jsonl").read_text().splitlines()]
    for r in recs:  # sample i takes mask file i % 2, wherever it landed in the chunks
        got = load_image(tmp_path / "A/metal" / r["mask"], mode="L") > 127
        assert np.array_equal(got, masks[r["index"] % 2]) and r["label"] == "a_scratch"
        assert r["sample_conditions"] == {"target_mask": f"m{r['index'] % 2}.png", "prompt": "a scratch"}
    # the same run from Python through the writer gives the same bytes
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([[["s", 0.0, 0.0, 0.5, 0.25]], [["s", 0.5, 0.5, 1.0, 1.0]]]))
    assert main(["generate", "test-painter", "--data", "toy:metal", "--size", "32", "-n", "3", "--out",
                 str(tmp_path / "B"), "--boxes", str(boxes), "-q", "--batch-size", "2"]) == 0
    m2 = load_image(tmp_path / "B/metal/ground_truth/painted/000002_mask.png", mode="L") > 127
    assert m2[:8, :16].all() and m2.sum() == 8 * 16  # sample 2 -> box row 0
    # a different conditions file is another run: refused rather than mixed
    boxes.write_text(json.dumps([[["s", 0.0, 0.0, 1.0, 1.0]]]))
    assert main(["generate", "test-painter", "--data", "toy:metal", "--size", "32", "-n", "3", "--out",
                 str(tmp_path / "B"), "--boxes", str(boxes), "-q"]) == 2
    assert "conditions differ" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["draem", "--masks", "{masks}"], "draem does not use conditions.target_mask"),
    (["test-painter", "--masks", "{tmp}/nowhere"], "--masks"),
    (["test-painter", "--boxes", "{tmp}/none.json"], "--boxes"),
    (["test-painter", "--boxes", "{bad}"], "not valid JSON"),
    (["test-painter", "--prompt", "  "], "--prompt: empty prompt"),
])
def test_cli_bad_conditions_exit_2_with_one_line(argv, needle, tmp_path: Path, capsys, painter) -> None:
    from anoplug.registry import get_registry

    get_registry().register(__import__("anoplug_draem.plugin", fromlist=["x"]), "draem-for-test")
    _masks(tmp_path / "masks", 1, 16)
    (tmp_path / "bad.json").write_text("[[")
    argv = [a.format(masks=tmp_path / "masks", tmp=tmp_path, bad=tmp_path / "bad.json") for a in argv]
    code = main(["generate", *argv, "--data", "toy:metal", "--size", "32", "-n", "2", "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o" / "metal" / "test").exists()  # nothing half-written


def test_info_lists_the_conditions_a_method_reads(capsys) -> None:
    assert main(["info", "bboxdiffusion"]) == 0
    assert "conditions: boxes (optional; --boxes FILE)" in capsys.readouterr().out
    assert main(["info", "draem"]) == 0
    assert "conditions:" not in capsys.readouterr().out
