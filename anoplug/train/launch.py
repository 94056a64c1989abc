"""Fit a learned plugin from the command line, on one process or many (``accelerate launch``).

    python -m anoplug.train.launch supersimplenet --data toy:metal --steps 200 --save out/ssn
    accelerate launch --multi_gpu --num_processes 2 -m anoplug.train.launch supersimplenet \\
        --data toy:metal --steps 200 --save out/ssn

``--multi_gpu`` is accelerate's name for "torch.distributed process group"; with no GPU the
processes train on CPUs (gloo). Every process builds the same start weights (same seed),
draws its own training data and averages gradients with the others; only the main process
writes ``--save``. ``--save-rank-weights DIR`` also writes each process's weights (to check
that they agree).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m anoplug.train.launch", description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="a learned generator (see `anoplug list`)")
    ap.add_argument("--data", required=True, help="normal training images, e.g. toy:metal")
    ap.add_argument("--anomalies", help="real defects with masks for supervised / few-shot methods (test split)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training images (0: all)")
    ap.add_argument("--steps", type=int, help="optimiser updates (default: the method's fit_steps)")
    ap.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--save", type=Path, help="where the main process writes the fitted model")
    ap.add_argument("--save-rank-weights", type=Path, help="every process writes its weights to DIR/rank-K")
    ap.add_argument("--checkpoint-every", type=int, default=0)
    ap.add_argument("--resume-from", type=Path)
    args = ap.parse_args(argv)

    from accelerate import PartialState

    from anoplug.cli import UserError, _build_generator
    from anoplug.data import DataError, open_dataset

    state = PartialState(cpu=True) if _no_gpu() else PartialState()
    try:  # the same NAME=VALUE parsing and one-line errors as `anoplug generate -p`
        gen = _build_generator(args.name, args.param)
    except (UserError, ValueError, KeyError) as e:
        print(f"anoplug.train.launch: {e}", file=sys.stderr)
        return 2
    from anoplug.learned import Trainable

    if not isinstance(gen, Trainable):
        print(f"anoplug.train.launch: {args.name} is not a learned method; nothing to fit", file=sys.stderr)
        return 2
    try:
        ds = open_dataset(args.data, split="train", size=args.size)
    except DataError as e:
        print(f"anoplug.train.launch: --data {args.data}: {e}", file=sys.stderr)
        return 2
    n = len(ds) if not args.limit else min(args.limit, len(ds))
    normals = ds.batch(range(n))
    anomalies = None
    if args.anomalies:
        from anoplug.cli import _read_anomalies

        anomalies = _read_anomalies(args.anomalies, args.size)
    t0 = time.perf_counter()
    gen.fit(normals, anomalies, steps=args.steps, progress=state.is_local_main_process, resume_from=args.resume_from,
            checkpoint_every=args.checkpoint_every, checkpoint_dir=(args.save or Path(".")) / "checkpoints")
    seconds = time.perf_counter() - t0
    if args.save_rank_weights is not None:
        gen.save(args.save_rank_weights / f"rank-{state.process_index}")
    if args.save is not None and state.is_main_process:
        gen.save(args.save)
    if state.is_main_process:
        last = gen.history[-1].get("loss") if gen.history else None
        print(f"fitted {args.name}: {len(gen.history)} updates on {state.num_processes} process(es) in {seconds:.1f} s"
              + (f", last loss {last:.4g}" if isinstance(last, float) else ""))
    state.wait_for_everyone()
    # Tear the process group down before the interpreter exits: left to exit-time destructors, gloo's
    # threads can be destroyed while joinable and abort a rank ("terminate called without an active
    # exception", SIGABRT) after a successful fit; seen once in a fresh-clone run under load.
    state.destroy_process_group()
    return 0


def _no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


if __name__ == "__main__":
    raise SystemExit(main())
