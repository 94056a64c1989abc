"""Does the prompt modification change the image on this base? (the README's table and ε numbers)

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python plugins/anoplug-comgen/tools/prompt_effect.py

1. The four edits (one per type) on 4 held-out trays, generated twice: with the modified region
   prompts, and with the normal prompt in every region; prints the mean max-channel |Δ| over
   the edited components' footprints (raw output, 25-step schedule) for each start / strength.
2. The RMS difference of the UNet's ε on those trays noised to t = 500 between prompts: ComGEN's
   full vs context-only prompt, and the base's own captions.
"""

from __future__ import annotations

import torch


def main() -> None:
    from anoplug_comgen.method import DEFECT_TYPES, Comgen

    from anoplug.data import open_dataset

    torch.set_num_threads(1)
    shipped = Comgen.from_pretrained("tray")
    batch = open_dataset("toy:tray", split="train", size=64, seed=1, length=4).all()
    real = Comgen._regions

    def unmodified(self, record, inst, types, size):  # every region keeps the normal prompt
        return [(m, sorted(set(types.tolist())), r, i) for m, _, r, i in real(self, record, inst, types, size)]

    for strength in (0.4, 0.8):
        for init in ("layout", "noise"):
            g = Comgen(**{**shipped.params.model_dump(), "strength": strength, "init": init,
                          "paste_background": False, "steps": 25})
            g.vectors, g.state, g._fitted = shipped.vectors, shipped.state, True
            b = batch.with_conditions(defect_type=list(DEFECT_TYPES))
            a = g.generate(b, seed=0)
            Comgen._regions = unmodified
            try:
                c = g.generate(b, seed=0)
            finally:
                Comgen._regions = real
            flat = Comgen(**{**g.params.model_dump(), "region_dilation": 0})
            flat.vectors, flat.state = g.vectors, g.state
            row = []
            for i in range(len(b)):
                img, fg = flat._inputs(batch[[i]], flat.parts)
                inst, types = flat._parts_of(img[0], fg[0])
                fp = torch.stack([r[0] for r in flat._regions(a.samples[i], inst, types, 64)]).amax(0) > 0.5
                da = float((a.image[i] - batch.image[i]).abs().amax(0)[fp].mean())
                dc = float((c.image[i] - batch.image[i]).abs().amax(0)[fp].mean())
                row.append(f"{DEFECT_TYPES[i]} {da:.3f} vs {dc:.3f}")
            print(f"{init}, {strength}: " + "; ".join(row), flush=True)

    parts = shipped.parts
    z0 = parts.encode_image(batch.image)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor(500)
    x = parts.scheduler.add_noise(z0, torch.randn(z0.shape, generator=g), t.reshape(1))
    n = len(batch)
    with torch.no_grad():
        def eps(cond: torch.Tensor) -> torch.Tensor:
            return parts.unet(x, t, encoder_hidden_states=cond).sample

        e = {"full": eps(shipped._encode(parts, [shipped._prompt(0, list(range(shipped.n_types)))] * n)),
             "context only": eps(shipped._encode(parts, [shipped._prompt(0, [])] * n)),
             "caption normal": eps(parts.encode_text(["a normal parts tray with every component in its place"] * n)),
             "caption missing": eps(parts.encode_text(["a missing blue block in a parts tray"] * n)),
             "caption capsule": eps(parts.encode_text(["a normal capsule on a grey background"] * n)),
             "empty": eps(parts.encode_text([""] * n))}
    for a_, b_ in (("full", "context only"), ("caption normal", "caption missing"), ("caption normal", "caption capsule"),
                   ("full", "empty"), ("caption normal", "empty")):
        print(f"eps RMS {a_} vs {b_}: {float((e[a_] - e[b_]).pow(2).mean().sqrt()):.4f}")


if __name__ == "__main__":
    main()
