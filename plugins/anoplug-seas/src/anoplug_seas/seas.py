"""SeaS (Dai, Zeng et al., ICCV 2025): one model per product for all its defect types, with precise masks.

The paper's steps, and where each lives below (section headers match):

1. **UA prompt** — an *Unbalanced Abnormal* prompt "a ob1 with sks(4k+1) … sks(4k+4)": one
   normal token shared by every image of the product, four anomaly tokens per defect type k
   (1 + 4·K new tokens). "ob1" starts at the embedding of "object", every "sks" at "defect".
2. **Separation and sharing fine-tune** — the *whole* UNet trains (lr 4e-6) and so does the
   *whole* token table of the text encoder (lr 4e-5; not only the new rows: the official
   optimiser holds the full embedding matrix), with AdamW8bit (bitsandbytes; plain AdamW where
   it is unavailable), gradient accumulation 2, batches of 2 anomalies + 2 normals.
3. **DA loss** (Decoupled Anomaly Alignment, :mod:`.maps`) — on pixel-softmax cross-attention
   maps of the first down block at two resolutions: anomaly-token map → mask, normal-token map
   inside the mask → 0, maps min-max normalised over the whole batch.
4. **NA loss** (Normal-image Alignment) — the plain ε-loss on normal images under "a ob1".
   Total = ε-MSE(anomalies) + L_DA(r₁) + L_DA(r₂) + ε-MSE(normals).
5. **RMP** (Refined Mask Prediction, :mod:`.rmp`) — with UNet, VAE and text encoder frozen, a
   mask head on the UNet's up-block features and the VAE decoder's features, trained with focal
   losses on x_{t−1} (one DDPM step from a random t) decoded by the VAE.
6. **Generation** — from a normal image's VAE latent, *not* multiplied by the scaling factor (as
   the official code, which the paper does not mention), noised to the last step of a
   1500-step schedule; DPM-Solver++ 25 steps, classifier-free guidance 8; the RMP mask is the
   class-1 probability averaged over the last 3 steps, thresholded at 0.2. The prompt "a ob1"
   generates normal images instead (``generate_normals``).

Real path: ``base_model`` = a local Stable Diffusion v1.4 directory (the paper's, 512 px) with the
default parameters. Offline default: the committed tiny base (64 px) — see :data:`CPU_PRESET`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from anoplug.conditions import ConditionError
from anoplug.diffusion.sampling import Hook
from anoplug.generator import NotFittedError, Paper, Requires, Samples
from anoplug.learned import LearnedGenerator
from anoplug.params import Params
from anoplug.types import GOOD, Batch
from anoplug_seas.maps import (
    block_map,
    capture_pixel_maps,
    da_loss,
    da_targets,
    down_block_layers,
    normalised_token_maps,
)
from anoplug_seas.rmp import RMP, FeaturePlan, focal_loss, plan_features, unet_tap, vae_tap

__all__ = ["SeaS", "SeaSParams", "CPU_PRESET", "ua_prompt", "normal_prompt", "token_columns", "more_noise",
           "choose_optimizer"]

NORMAL_TOKEN = "ob{}"
ANOMALY_TOKEN = "sks{}"

#: The CPU scale-down used for the shipped checkpoint (same code, smaller numbers): the tiny base has
#: three levels at 16/8/4 latents, so the two finest down blocks carry DA; a small RMP; larger learning
#: rates for far fewer steps (the ratio token/UNet = 10 as in the paper).
CPU_PRESET: dict[str, Any] = {
    "unet_lr": 1e-4, "token_lr": 1e-3, "rmp_lr": 1e-3, "grad_accumulation": 1, "gen_steps_per_type": 250,
    "rmp_steps_per_type": 200,
    "da_down_blocks": (0, 1), "rmp_low_channels": 32, "rmp_mid_channels": 16, "rmp_layers": 1, "rmp_heads": 4,
    "rmp_groups": 8,
}


class SeaSParams(Params):
    base_model: str = Field("tiny-base", description="'tiny-base' (bundled, offline), 'tiny-random', or a local "
                            "Stable Diffusion v1.x directory (the paper's: v1.4)")
    anomaly_tokens: int = Field(4, ge=1, le=8, description="anomaly tokens per defect type in the UA prompt")
    normal_init: str = Field("object", description="word whose embedding initialises the normal token ob1")
    anomaly_init: str = Field("defect", description="word whose embedding initialises every anomaly token")
    unet_lr: float = Field(4e-6, gt=0, le=1.0, description="learning rate of the full UNet fine-tune")
    token_lr: float = Field(4e-5, gt=0, le=1.0, description="learning rate of the whole token-embedding table")
    rmp_lr: float = Field(5e-4, gt=0, le=1.0, description="learning rate of the RMP mask head")
    weight_decay: float = Field(0.01, ge=0, le=1.0, description="AdamW weight decay (every optimiser)")
    optimizer: Literal["adamw8bit", "adamw"] = Field("adamw8bit", description="bitsandbytes AdamW8bit where it is "
                                                     "installed and a GPU is used, else torch AdamW")
    grad_accumulation: int = Field(2, ge=1, le=64, description="micro-batches summed per update")
    anomaly_batch: int = Field(2, ge=1, le=64, description="anomaly images per micro-batch")
    normal_batch: int = Field(2, ge=0, le=64, description="normal images per micro-batch (NA loss; 0 = no NA)")
    num_normal: int = Field(60, ge=1, le=100_000, description="normal training images used")
    use_all_anomalies: bool = Field(False, description="train on every given anomaly (official: the first "
                                    "max(N//3, 1) of each type)")
    rotation: bool = Field(True, description="augment with one of 0/90/180/270° and a flip (none/LR/TB) per "
                           "sample (MVTec setting; VisA: off)")
    gen_steps_per_type: int = Field(800, ge=1, le=1_000_000, description="fine-tune updates per defect type (800·K)")
    rmp_steps_per_type: int = Field(800, ge=0, le=1_000_000, description="RMP updates per defect type (800·K)")
    da_down_blocks: tuple[int, ...] = Field((1, 2), min_length=1, max_length=4, description="down blocks whose "
                                            "cross-attention (layers averaged) gives the DA maps (SD at 64 latents: "
                                            "1, 2 = 32² and 16²)")
    da_normal_region: Literal["full", "any"] = Field("full", description="normal-token term on target == 1 (MVTec) "
                                                     "or > 0 (VisA, MVTec-3D)")
    na_loss: bool = Field(True, description="Normal-image Alignment: ε-loss on normal images with 'a ob1'")
    da_weight: float = Field(1.0, ge=0, le=100.0, description="weight of the DA losses (official 1)")
    rmp_low_channels: int = Field(128, ge=4, le=1024, description="RMP projection of the coarser UNet feature")
    rmp_mid_channels: int = Field(64, ge=4, le=1024, description="RMP projection of the latent-size UNet feature")
    rmp_layers: int = Field(4, ge=1, le=16, description="self-attention transformer layers of RMP")
    rmp_heads: int = Field(8, ge=1, le=32, description="attention heads of those layers")
    rmp_groups: int = Field(32, ge=1, le=64, description="GroupNorm groups of those layers")
    steps: int = Field(25, ge=1, le=1000, description="DPM-Solver++ steps of generation")
    guidance: float = Field(8.0, ge=1.0, le=30.0, description="classifier-free guidance (MVTec 8, VisA 2, MVTec-3D 5)")
    noise_steps: int = Field(1500, ge=1, le=10_000, description="length of the schedule whose last step noises the "
                             "normal start latent (official add_noise_step 1500)")
    scale_start_latent: bool = Field(False, description="multiply the start latent by the VAE scaling factor "
                                     "(official: not)")
    mask_steps: int = Field(3, ge=1, le=1000, description="RMP masks averaged over this many last steps")
    mask_threshold: float = Field(0.2, gt=0, lt=1, description="averaged defect probability above this is the mask")
    defect_type: str = Field("", description="type to generate ('' = drawn per sample; conditions.defect_type wins)")
    generate_normals: bool = Field(False, description="generate normal images with 'a ob1' (empty masks)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of fit's draws")


# -- 1. the UA prompt -----------------------------------------------------------------------------------------
def ua_prompt(k: int, n_tokens: int = 4) -> str:
    """The Unbalanced Abnormal prompt of type index ``k``: "a ob1 with sks(4k+1) … sks(4k+4)"."""
    return "a " + NORMAL_TOKEN.format(1) + " with " + " ".join(ANOMALY_TOKEN.format(k * n_tokens + i + 1)
                                                               for i in range(n_tokens))


def normal_prompt() -> str:
    """The normal prompt "a ob1" (NA loss, normal generation)."""
    return "a " + NORMAL_TOKEN.format(1)


def placeholder_tokens(n_types: int, n_tokens: int = 4) -> list[str]:
    """ob1, then sks1 … sks(n_tokens·K): the 1 + 4·K tokens SeaS adds."""
    return [NORMAL_TOKEN.format(1)] + [ANOMALY_TOKEN.format(i + 1) for i in range(n_types * n_tokens)]


def token_columns(tokenizer: Any, n_tokens: int = 4) -> tuple[list[int], list[int]]:
    """Key columns of the normal and anomaly tokens in a UA prompt (official: 2 and 4–7 for 1 + 4 tokens)."""
    ids = tokenizer(ua_prompt(0, n_tokens)).input_ids
    ob = tokenizer.convert_tokens_to_ids(NORMAL_TOKEN.format(1))
    sks = set(tokenizer.convert_tokens_to_ids([ANOMALY_TOKEN.format(i + 1) for i in range(n_tokens)]))
    return [i for i, t in enumerate(ids) if t == ob], [i for i, t in enumerate(ids) if t in sks]


# -- 6. the start latent --------------------------------------------------------------------------------------
def more_noise(z: torch.Tensor, noise: torch.Tensor, steps: int = 1500, beta_start: float = 0.00085,
               beta_end: float = 0.012) -> torch.Tensor:
    """``add_morenoise``: noise ``z`` to the last step of a ``steps``-long scaled-linear schedule (√ᾱ = 0.0178 at 1500)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    a = torch.cumprod(1 - betas, 0)[-1]
    return (a.sqrt() * z.double() + (1 - a).sqrt() * noise.double()).to(z.dtype)


# -- 2. the optimiser -------------------------------------------------------------------------------------------
def choose_optimizer(kind: str, device: torch.device) -> tuple[type, str]:
    """(optimiser class, its name): bitsandbytes AdamW8bit on a GPU where installed, else ``torch.optim.AdamW``."""
    if kind == "adamw8bit" and device.type == "cuda":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit, "bitsandbytes.optim.AdamW8bit"
        except ImportError:
            pass
    return torch.optim.AdamW, "torch.optim.AdamW"


def _augment(img: torch.Tensor, rot: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Per sample: rotate by ``rot``·90° then flip (0 none, 1 left-right, 2 top-bottom)."""
    out = []
    for x, r, f in zip(img, rot.tolist(), flip.tolist()):
        x = torch.rot90(x, int(r), dims=(-2, -1))
        x = x.flip(-1) if f == 1 else x.flip(-2) if f == 2 else x
        out.append(x)
    return torch.stack(out)


class SeaS(LearnedGenerator):
    """Fit on a product's normal images and a few real defects of each type; generate defects with their masks.

    ``batch.conditions.defect_type`` (optional) chooses the type per sample. SeaS takes no mask:
    its mask is an output, predicted by RMP.
    """

    name = "seas"
    title = "SeaS: separation and sharing fine-tuning with a refined mask head"
    category = "mask"
    tags = ("diffusion-image",)
    paper = Paper("SeaS: Few-shot Industrial Anomaly Image Generation with Separation and Sharing Fine-tuning",
                  "ICCV", 2025, "https://arxiv.org/abs/2410.14987", "https://github.com/HUST-SLOW/SeaS")
    Params = SeaSParams
    generation_params = ("steps", "guidance", "noise_steps", "scale_start_latent", "mask_steps", "mask_threshold",
                         "defect_type", "generate_normals")
    requires = Requires(fit=True, anomalies=True, weights="a local Stable Diffusion v1.4 directory (offline: tiny-base)",
                        accepts=("defect_type",))
    pretrained = {"toy-carpet": "weights/toy-carpet"}

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.gradient_accumulation_steps = self.params.grad_accumulation
        self.types: list[str] = []
        self.parts: Any = None
        self.rmp: RMP | None = None
        self.plan: FeaturePlan | None = None
        self.history: list[dict] = []
        self.optimizer_used = ""

    # -- 1. the model, the tokens ---------------------------------------------------------------------------
    def _build_model(self, types: Sequence[str]) -> None:
        """Load a private copy of the base, add the 1 + 4·K tokens, resize the table, build RMP."""
        from anoplug.diffusion.loading import Parts, load_pipeline

        p = self.params
        parts = Parts.from_pipeline(load_pipeline(p.base_model, scheduler="dpm")).freeze()
        tok, enc = parts.tokenizer, parts.text_encoder
        tokens = placeholder_tokens(len(types), p.anomaly_tokens)
        if tok.add_tokens(tokens) != len(tokens):
            raise ValueError(f"the tokenizer of {p.base_model} already has some of {tokens}")
        from anoplug.diffusion.tiny import seeded

        with seeded(p.seed):  # the new rows are overwritten below; keep the global RNG untouched
            enc.resize_token_embeddings(len(tok), mean_resizing=False)
        table = enc.get_input_embeddings().weight
        with torch.no_grad():
            for word, rows in ((p.normal_init, tokens[:1]), (p.anomaly_init, tokens[1:])):
                init = tok(word, add_special_tokens=False).input_ids
                if len(init) != 1:
                    raise ValueError(f"init word {word!r} must be one token of the tokenizer, got {len(init)}")
                table[tok.convert_tokens_to_ids(rows)] = table[init[0]].clone()
        self.types, self.parts = list(types), parts
        lat = int(parts.unet.config.sample_size)
        self.plan = plan_features(parts.unet, parts.vae, lat)
        down_block_layers(parts.unet, p.da_down_blocks)  # fail early on a UNet without these blocks
        from anoplug.diffusion.tiny import seeded

        with seeded(p.seed):
            self.rmp = RMP(self.plan, low_channels=p.rmp_low_channels, mid_channels=p.rmp_mid_channels,
                           layers=p.rmp_layers, heads=p.rmp_heads, groups=p.rmp_groups).to(parts.device).eval()
        from anoplug.diffusion.base import make_scheduler

        self.ddpm = make_scheduler("ddpm")

    @property
    def token_table(self) -> nn.Embedding:
        return self.parts.text_encoder.get_input_embeddings()

    def modules(self) -> dict[str, nn.Module]:
        if self.parts is None:
            return {}
        return {"unet": self.parts.unet, "tokens": self.token_table, "rmp": self.rmp}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "types": list(self.types), "optimizer_used": self.optimizer_used}

    def restore_config(self, config: dict[str, Any]) -> None:
        types = config.get("types") or []
        if not types:
            raise ValueError("seas config.json lists no fitted defect types")
        self._build_model(types)
        self.optimizer_used = str(config.get("optimizer_used", ""))

    def to(self, device: str | torch.device) -> SeaS:
        self.device = torch.device(device)
        if self.parts is not None:
            for m in (self.parts.unet, self.parts.vae, self.parts.text_encoder, self.rmp):
                m.to(self.device)
        return self

    def train_mode(self, training: bool) -> None:
        for m in self.modules().values():
            m.train(training)

    @property
    def size(self) -> int:
        """The base model's native image side (tiny base 64, SD 512)."""
        return int(self.parts.unet.config.sample_size) * self.parts.vae_factor

    # -- 2. data and optimisers -------------------------------------------------------------------------------
    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, Any]:
        """Choose the shots, build the model, unfreeze the UNet and the token table, resize the data once."""
        p = self.params
        if anomalies is None or len(anomalies) == 0:
            raise ValueError(f"{self.name}.fit needs anomalies (images, masks and defect labels)")
        if any(lab == GOOD or not bool(anomalies.mask[i].any()) for i, lab in enumerate(anomalies.label)):
            raise ValueError(f"{self.name}.fit: every anomaly needs a non-empty mask and a defect label (not 'good')")
        if p.normal_batch and (normals is None or len(normals) == 0):
            raise ValueError(f"{self.name}.fit needs normal images for the NA loss (or normal_batch=0)")
        types = list(dict.fromkeys(anomalies.label))
        chosen: list[int] = []
        for t in types:
            idx = [i for i, lab in enumerate(anomalies.label) if lab == t]
            chosen += idx if p.use_all_anomalies else idx[: max(len(idx) // 3, 1)]
        self._build_model(types)
        parts = self.parts
        parts.unet.requires_grad_(True)
        self.token_table.requires_grad_(True)  # the whole table, as the official optimiser holds it
        s = self.size
        shots = anomalies[chosen]
        img = F.interpolate(shots.image, size=(s, s), mode="bilinear", align_corners=False).clamp(0, 1)
        mask = (F.interpolate(shots.mask, size=(s, s), mode="bilinear", align_corners=False) > 0.5).float()
        data = {"images": img, "masks": mask, "type_idx": torch.tensor([types.index(t) for t in shots.label])}
        if p.normal_batch:
            nrm = normals[: min(len(normals), p.num_normal)]
            data["normals"] = F.interpolate(nrm.image, size=(s, s), mode="bilinear", align_corners=False).clamp(0, 1)
        tok = parts.tokenizer
        data["ua_ids"] = parts.tokenize([ua_prompt(k, p.anomaly_tokens) for k in range(len(types))])
        data["normal_ids"] = parts.tokenize([normal_prompt()])
        data["cols"] = token_columns(tok, p.anomaly_tokens)
        data["layers"] = down_block_layers(parts.unet, p.da_down_blocks)
        return data

    def planned_steps(self, steps: int | None, data: dict[str, Any]) -> int:
        """Fine-tune then RMP: ``steps`` each when given, else 800·K each (official)."""
        k = len(self.types)
        data["gen_steps"] = self.params.gen_steps_per_type * k if steps is None else int(steps)
        rmp = self.params.rmp_steps_per_type * k if steps is None else int(steps)
        return data["gen_steps"] + rmp

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """UNet (lr 4e-6), token table (4e-5), RMP (5e-4): AdamW8bit where available, else AdamW; β (0.9, 0.999)."""
        p = self.params
        cls, self.optimizer_used = choose_optimizer(p.optimizer, self.parts.device)
        kw = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": p.weight_decay}
        return {"unet": cls(self.parts.unet.parameters(), lr=p.unet_lr, **kw),
                "tokens": cls(self.token_table.parameters(), lr=p.token_lr, **kw),
                "rmp": cls(self.rmp.parameters(), lr=p.rmp_lr, **kw)}

    def _draw(self, data: dict[str, Any], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """A micro-batch: (images [anomalies; normals], anomaly masks, type indices, number of anomalies)."""
        p = self.params
        ia = torch.randint(0, len(data["images"]), (p.anomaly_batch,), generator=g)
        img, mask, types = data["images"][ia], data["masks"][ia], data["type_idx"][ia]
        if p.normal_batch:
            ino = torch.randint(0, len(data["normals"]), (p.normal_batch,), generator=g)
            img = torch.cat([img, data["normals"][ino]])
        if p.rotation:
            n = len(img)
            rot = torch.randint(0, 4, (p.anomaly_batch,), generator=g)
            flip = torch.randint(0, 3, (p.anomaly_batch,), generator=g)
            # the normal image paired with anomaly j gets anomaly j's rotation and flip (one transform per example)
            pair = torch.arange(n) % p.anomaly_batch
            img, mask = _augment(img, rot[pair], flip[pair]), _augment(mask, rot, flip)
        return img.to(self.device), mask.to(self.device), types, p.anomaly_batch

    def _noised(self, z0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sch = self.parts.scheduler
        t = torch.randint(0, int(sch.config.num_train_timesteps), (len(z0),), generator=g).to(z0.device)
        noise = torch.randn(z0.shape, generator=g).to(z0.device)
        return self.ddpm.add_noise(z0, noise, t), noise, t

    def training_step(self, data: dict[str, Any], step: int, generator: torch.Generator) -> dict[str, Any]:
        if step < data["gen_steps"]:
            return self._finetune_step(data, generator)
        return self._rmp_step(data, generator)

    # -- 3. + 4. the fine-tune step: ε-loss, DA at two resolutions, NA -------------------------------------------
    def _finetune_step(self, data: dict[str, Any], g: torch.Generator) -> dict[str, Any]:
        p, parts = self.params, self.parts
        img, mask, types, na = self._draw(data, g)
        with torch.no_grad():
            z0 = parts.encode_image(img)
        x_t, noise, t = self._noised(z0, g)
        ids = data["ua_ids"][types]
        if p.normal_batch:
            ids = torch.cat([ids, data["normal_ids"].expand(p.normal_batch, -1)])
        cond = parts.text_encoder(ids.to(self.device))[0]  # gradients reach the token table
        layers = data["layers"]
        with capture_pixel_maps(parts.unet, [n for v in layers.values() for n in v]) as state:
            eps = parts.unet(x_t, t, encoder_hidden_states=cond).sample
        loss_anom = F.mse_loss(eps[:na].float(), noise[:na].float())
        lat = int(z0.shape[-1])
        normal_cols, anomaly_cols = data["cols"]
        sizes = {b: int(math.isqrt(block_map(state, v).shape[1])) for b, v in layers.items()}
        targets = da_targets(mask, lat, list(sizes.values()))
        row: dict[str, Any] = {"phase": "finetune", "eps_loss": float(loss_anom.detach())}
        total = loss_anom
        for b, v in layers.items():
            s = sizes[b]
            nmap, amap = normalised_token_maps(block_map(state, v)[:na], normal_cols, anomaly_cols, (s, s))
            da = da_loss(nmap, amap, targets[s], p.da_normal_region)
            total = total + p.da_weight * da
            row[f"da_loss_{s}"] = float(da.detach())
        if p.normal_batch and p.na_loss:
            na_term = F.mse_loss(eps[na:].float(), noise[na:].float())
            total = total + na_term
            row["na_loss"] = float(na_term.detach())
        row["loss"] = total
        return row

    # -- 5. the RMP step: x_{t−1} by one DDPM step, decoded with features, focal losses --------------------------
    def _rmp_step(self, data: dict[str, Any], g: torch.Generator) -> dict[str, Any]:
        p, parts = self.params, self.parts
        img, mask, types, na = self._draw(data, g)
        utap, vtap = unet_tap(parts.unet, self.plan), vae_tap(parts.vae, self.plan)
        with torch.no_grad():
            z0 = parts.encode_image(img)
            x_t, noise, t = self._noised(z0, g)
            ids = data["ua_ids"][types]
            if p.normal_batch:
                ids = torch.cat([ids, data["normal_ids"].expand(p.normal_batch, -1)])
            with utap.active():
                eps = parts.unet(x_t, t, encoder_hidden_states=parts.text_encoder(ids.to(self.device))[0]).sample
            feats = [f.detach() for f in utap.get()]
            prev = torch.cat([self.ddpm.step(eps[i:i + 1], int(t[i]), x_t[i:i + 1], generator=g).prev_sample
                              for i in range(na)])
            with vtap.active():
                parts.vae.decode(prev / parts.scaling_factor)
            vfeats = [f.detach() for f in vtap.get()]
        full, coarse = self.rmp.forward_train(feats, vfeats, na)
        m_all = torch.cat([mask, torch.zeros(len(img) - na, 1, *mask.shape[-2:], device=mask.device)])
        m_all = F.interpolate(m_all, size=full.shape[-2:], mode="nearest") if m_all.shape[-2:] != full.shape[-2:] else m_all
        m_coarse = F.interpolate(m_all, size=coarse.shape[-2:], mode="bilinear", align_corners=False)
        fl, fl_c = focal_loss(full, m_all), focal_loss(coarse, m_coarse)
        return {"loss": fl + fl_c, "phase": "rmp", "focal": float(fl.detach()), "focal_coarse": float(fl_c.detach())}

    # -- 6. generation ---------------------------------------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample: the defect type (condition > parameter > drawn). The noise is drawn later from the same rng."""
        if not self.types:
            raise NotFittedError(f"{self.name} has no fitted defect types")
        given = batch.conditions.defect_type
        out = Samples()
        for i, g in enumerate(rngs):
            drawn = self.types[int(torch.randint(0, len(self.types), (1,), generator=g))]
            t = given[i] if given is not None else (self.params.defect_type or drawn)
            if t not in self.types:
                raise ConditionError(f"conditions.defect_type[{i}] {t!r} was not fitted; known: {self.types}")
            out.append({"defect_type": t})
        return out

    def _replayed(self, samples: Samples) -> Samples:
        for i, s in enumerate(samples):
            if not isinstance(s, dict) or s.get("defect_type") not in self.types:
                raise ValueError(f"samples[{i}]['defect_type'] is not a fitted type; known: {self.types}")
        return Samples(dict(s) for s in samples)

    @torch.no_grad()
    def start_latent(self, image01: torch.Tensor, rngs: Sequence[torch.Generator]) -> torch.Tensor:
        """The normal image's VAE latent (a posterior sample), unscaled unless ``scale_start_latent``, 1.5·T-noised."""
        parts = self.parts
        dist = parts.vae.encode(image01.to(self.device) * 2 - 1).latent_dist
        eps = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in rngs]).to(self.device)
        z = dist.mean + dist.std * eps
        if self.params.scale_start_latent:
            z = z * parts.scaling_factor
        noise = torch.stack([torch.randn(z.shape[1:], generator=g) for g in rngs]).to(self.device)
        return more_noise(z, noise, self.params.noise_steps)

    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        from anoplug.diffusion import sampling as S

        if self.parts is None:
            raise NotFittedError(f"{self.name} must be fitted or loaded before generate")
        p, parts = self.params, self.parts
        drawn = self.sample(batch, rngs)  # every rng reaches its noise at the same place, replay or not
        samples = drawn if samples is None else self._replayed(samples)
        n, (h, w), s = len(batch), batch.size, self.size
        img = F.interpolate(batch.image, size=(s, s), mode="bilinear", align_corners=False).clamp(0, 1)
        x_T = self.start_latent(img, rngs)
        types = [r["defect_type"] for r in samples]
        prompts = [normal_prompt()] * n if p.generate_normals else [
            ua_prompt(self.types.index(t), p.anomaly_tokens) for t in types]
        cond = parts.encode_text(prompts)
        hooks: list[Any] = []
        if p.guidance > 1:
            hooks.append(S.ClassifierFreeGuidance(parts.encode_text([""] * n), p.guidance, batched=True))
        mask_hook = None if p.generate_normals else MaskHead(self.rmp, parts, self.plan, p.mask_steps)
        if mask_hook is not None:
            hooks.append(mask_hook)

        def model(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return parts.unet(x, t, encoder_hidden_states=c).sample

        utap = unet_tap(parts.unet, self.plan)
        with utap.active():
            if mask_hook is not None:
                mask_hook.tap = utap
            out = S.sample(model, parts.scheduler, x_T, rngs=rngs, num_steps=p.steps, cond=cond, hooks=hooks,
                           decode=parts.decode)
        image = out if (h, w) == (s, s) else F.interpolate(out, size=(h, w), mode="bicubic",
                                                            align_corners=False).clamp(0, 1)
        if mask_hook is None:
            mask = torch.zeros(n, 1, h, w, device=image.device)
        else:
            prob = mask_hook.probability()
            prob = prob if (h, w) == tuple(prob.shape[-2:]) else F.interpolate(prob, size=(h, w), mode="bilinear",
                                                                                align_corners=False)
            mask = (prob > p.mask_threshold).float()
        labels = [GOOD if p.generate_normals or not bool(mask[i].any()) else t for i, t in enumerate(types)]
        result = Batch(image=image.float().contiguous(), mask=mask, label=labels, meta=[dict(m) for m in batch.meta],
                       object_mask=batch.object_mask, depth=batch.depth, text=batch.text)
        return result, samples

    @torch.no_grad()
    def predict_masks(self, images: torch.Tensor, defect_types: Sequence[str], *, seed: int = 0) -> torch.Tensor:
        """RMP masks of *existing* images (e.g. real defects, for evaluation), as generation computes them.

        Each image's latent is noised to each of the last ``mask_steps`` timesteps of the sampler
        (fresh noise from ``seed``), the UNet runs with the UA prompt of its type under the same
        guidance, and RMP reads its conditional features and the VAE decoding of that x_t; the mean
        probability is thresholded at ``mask_threshold``. Returns ``[B,1,H,W]`` in {0,1}.
        """
        import copy

        p, parts = self.params, self.parts
        n, (h, w), s = len(images), images.shape[-2:], self.size
        img = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False).clamp(0, 1)
        z0 = parts.encode_image(img)
        sch = copy.deepcopy(parts.scheduler)
        sch.set_timesteps(p.steps)
        g = torch.Generator().manual_seed(seed)
        cond = parts.encode_text([ua_prompt(self.types.index(t), p.anomaly_tokens) for t in defect_types])
        ctx = torch.cat([parts.encode_text([""] * n), cond]) if p.guidance > 1 else cond
        utap, probs = unet_tap(parts.unet, self.plan), []
        for t in sch.timesteps[-p.mask_steps:]:
            x = self.ddpm.add_noise(z0, torch.randn(z0.shape, generator=g).to(z0.device), t.reshape(1))
            with utap.active():
                parts.unet(torch.cat([x, x]) if p.guidance > 1 else x, t, encoder_hidden_states=ctx)
            feats = [f.chunk(2)[1] if p.guidance > 1 else f for f in utap.get()]
            vtap = vae_tap(parts.vae, self.plan)
            with vtap.active():
                parts.vae.decode(x / parts.scaling_factor)
            probs.append(self.rmp(feats, vtap.get())[:, 1:2])
        prob = F.interpolate(torch.stack(probs).mean(0), size=(h, w), mode="bilinear", align_corners=False)
        return (prob > p.mask_threshold).float()


class MaskHead(Hook):
    """Sampling hook of step 6: at each of the last ``last`` steps, RMP on the conditional UNet features and the
    VAE decoding (with features) of the current latent x_t; :meth:`probability` is their mean defect probability."""

    def __init__(self, rmp: RMP, parts: Any, plan: FeaturePlan, last: int) -> None:
        self.rmp, self.parts, self.plan, self.last = rmp, parts, plan, last
        self.tap: Any = None
        self.features: list[torch.Tensor] = []
        self.probs: list[torch.Tensor] = []

    def before_model(self, ctx: Any, x: torch.Tensor, branch: str) -> None:
        self.tap.clear()

    def after_model(self, ctx: Any, branch: str) -> None:
        if branch == "uncond":
            return
        feats = self.tap.get()
        self.features = [f.chunk(2)[1] if branch == "both" else f for f in feats]  # the conditional half

    def on_prediction(self, ctx: Any, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ctx.i >= ctx.num_steps - self.last:
            vtap = vae_tap(self.parts.vae, self.plan)
            with vtap.active():
                self.parts.vae.decode(x / self.parts.scaling_factor)
            self.probs.append(self.rmp(self.features, vtap.get())[:, 1:2])
        return x, eps

    def probability(self) -> torch.Tensor:
        if not self.probs:
            raise RuntimeError("RMP did not run (no sampling step)")
        return torch.stack(self.probs).mean(0)
