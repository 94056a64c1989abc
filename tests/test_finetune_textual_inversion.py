"""The shared noise-prediction loss (finetune.common) and textual inversion on the Trainer.

Each test fails when its mechanism is removed: the loss is zero only for the right target
(ε, or v for a v-prediction schedule) at the right x_t; its draws come in the order
AnomalyDiffusion's fits depend on; textual inversion on the Trainer learns, moves only the
placeholder rows, resumes from a checkpoint with its rows, and exports rows that diffusers'
``load_textual_inversion`` reads into a plain pipeline with the same text encoding.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from anoplug.diffusion import inversion, tiny  # noqa: E402
from anoplug.diffusion.finetune import common as C  # noqa: E402
from anoplug.diffusion.finetune import textual_inversion as T  # noqa: E402
from anoplug.diffusion.loading import Parts, load_pipeline, make_scheduler  # noqa: E402
from tests.finetune_data import checkerboard  # noqa: E402


class Oracle(torch.nn.Module):
    """A 'UNet' that knows the clean latents: it returns the exact ε (or v) of its input x_t."""

    def __init__(self, scheduler, z0: torch.Tensor, kind: str) -> None:
        super().__init__()
        self.scheduler, self.z0, self.kind = scheduler, z0, kind
        self.seen: list = []

    def forward(self, x_t, t, encoder_hidden_states=None):
        self.seen.append(encoder_hidden_states)
        ab = self.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (x_t - ab.sqrt() * self.z0) / (1 - ab).sqrt()
        out = eps if self.kind == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * self.z0
        return type("Out", (), {"sample": out})()


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_shared_loss_is_zero_exactly_for_the_schedules_target(kind):
    sched = make_scheduler("ddpm")
    sched.register_to_config(prediction_type=kind)
    z0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    oracle = Oracle(sched, z0, kind)
    loss = C.noise_prediction_loss(oracle, sched, z0, torch.zeros(3, 2, 5), generator=torch.Generator().manual_seed(1))
    assert float(loss) < 1e-8
    wrong = Oracle(sched, z0, "v_prediction" if kind == "epsilon" else "epsilon")
    assert float(C.noise_prediction_loss(wrong, sched, z0, torch.zeros(3, 2, 5),
                                         generator=torch.Generator().manual_seed(1))) > 1e-3
    per = C.noise_prediction_loss(wrong, sched, z0, torch.zeros(3, 2, 5), generator=torch.Generator().manual_seed(1),
                                  reduction="none")
    mean = C.noise_prediction_loss(wrong, sched, z0, torch.zeros(3, 2, 5), generator=torch.Generator().manual_seed(1))
    assert per.shape == (3,) and torch.allclose(per.mean(), mean)


def test_draws_are_timesteps_then_noise_then_the_condition():
    """The order textual inversion always had (AnomalyDiffusion's fits depend on it)."""
    sched = make_scheduler("ddpm")
    z0 = torch.zeros(2, 4, 8, 8)
    g = torch.Generator().manual_seed(3)
    ref = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (2,), generator=ref)
    noise = torch.randn(z0.shape, generator=ref)
    after = torch.rand(1, generator=ref)
    seen_by_cond = []

    class Probe(torch.nn.Module):
        def forward(self, x_t, t_, encoder_hidden_states=None):
            assert torch.equal(t_, t), "timesteps are not the first draw"
            assert torch.allclose(x_t, sched.add_noise(z0, noise, t)), "noise is not the second draw"
            return type("Out", (), {"sample": x_t})()

    C.noise_prediction_loss(Probe(), sched, z0, lambda: seen_by_cond.append(torch.rand(1, generator=g)) or z0,
                            generator=g)
    assert torch.equal(seen_by_cond[0], after), "the condition was not evaluated after the noise"


def test_a_timestep_sampler_replaces_the_uniform_draw():
    sched = make_scheduler("ddpm")
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x_t, t, encoder_hidden_states=None):
            seen.append(t.clone())
            return x_t  # a plain tensor output is accepted too

    late = lambda n, total, g: torch.full((n,), total - 1)  # noqa: E731
    C.noise_prediction_loss(Probe(), sched, torch.zeros(3, 4, 8, 8), torch.zeros(3, 2, 5),
                            generator=torch.Generator().manual_seed(0), timesteps=late)
    assert seen[0].tolist() == [999, 999, 999]


def test_old_import_path_is_the_same_code():
    assert inversion.train_embeddings is T.train_embeddings and inversion.embedding_loss is T.embedding_loss
    assert inversion.PlaceholderEmbedding is T.PlaceholderEmbedding



def test_textual_inversion_on_the_trainer_learns_rows_only_and_exports_for_diffusers(tmp_path):
    pipe = load_pipeline("tiny-base")
    parts = Parts.from_pipeline(pipe).freeze()
    unet0 = {n: t.clone() for n, t in parts.unet.state_dict().items()}
    table0 = parts.text_encoder.get_input_embeddings().weight.detach().clone()
    emb = T.install_placeholders(parts.text_encoder, parts.tokenizer, ["<c0>", "<c1>"], "nut")
    init = emb.learned.detach().clone()
    z = C.encode_latents(parts, checkerboard())
    prompt = "a photo of <c0><c1>"
    with torch.no_grad():
        before = C.heldout_loss(parts.unet, parts.scheduler, z, parts.encode_text([prompt] * 2), repeats=8)
    seen = []
    losses = T.train_embeddings(parts, z, [prompt] * 2, [emb.learned], steps=12, lr=0.1, batch_size=1,
                                generator=torch.Generator().manual_seed(0), progress=lambda s, n, row: seen.append(s))
    with torch.no_grad():
        after = C.heldout_loss(parts.unet, parts.scheduler, z, parts.encode_text([prompt] * 2), repeats=8)
    assert len(losses) == 12 and seen == list(range(1, 13))
    assert after < 0.95 * before, (before, after)
    assert (emb.learned - init).abs().amax(1).min() > 1e-3, "a placeholder row did not train"
    assert torch.equal(emb.base.weight, table0), "the frozen token table changed"
    assert all(torch.equal(t, unet0[n]) for n, t in parts.unet.state_dict().items()), "the UNet changed"
    # diffusers' textual-inversion files, read by diffusers into a plain pipeline
    paths = T.save_diffusers_embeddings(tmp_path, emb, parts.tokenizer)
    fresh = load_pipeline("tiny-base")
    fresh.load_textual_inversion([str(p) for p in paths])
    ids = parts.tokenize([prompt])
    assert torch.equal(ids, Parts.from_pipeline(fresh).tokenize([prompt]))
    with torch.no_grad():
        ours, theirs = parts.text_encoder(ids)[0], fresh.text_encoder(ids)[0]
        plain = pipe.text_encoder(Parts.from_pipeline(fresh).tokenize(["a photo of nut nut"]))[0]
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert (ours - plain).abs().max() > 1e-4


def test_resume_restores_the_learned_rows(tmp_path):
    def run(**kw):
        parts = Parts.from_pipeline(tiny.tiny_sd_pipeline(seed=2)).freeze()
        emb = T.install_placeholders(parts.text_encoder, parts.tokenizer, ["<r0>"], "crack")
        z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        T.train_embeddings(parts, z, ["a <r0>"] * 2, [emb.learned], steps=4, lr=5e-2, batch_size=2,
                           generator=torch.Generator().manual_seed(0), **kw)
        return emb.learned.detach().clone()

    whole = run()
    run(checkpoint_every=2, checkpoint_dir=tmp_path)
    resumed = run(resume_from=tmp_path / "step-000002")
    assert torch.equal(resumed, whole), "resume did not restore the rows trained before the checkpoint"
