"""``accelerate launch`` with 2 CPU processes fits a plugin: same weights on both, gradients averaged."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

TINY_PBAS = ["-p", "backbone=tiny-random", "-p", "pretrained=false", "-p", "image_size=64", "-p", "pretrain_dim=32",
             "-p", "target_dim=32", "-p", "dsc_hidden=16", "-p", "batch_size=4"]
FIT = ["pbas", "--data", "toy:metal", "--size", "64", "--limit", "8", "--steps", "4", *TINY_PBAS]


def _weights(d: Path) -> dict:
    return {f.name + "/" + k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_PORT": "0"}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_agree_and_differ_from_one(tmp_path):
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert launcher, "accelerate's launcher is part of the set-up"
    _run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no", "--main_process_port", "0", "-m", "anoplug.train.launch", *FIT,
          "--save", str(tmp_path / "two"), "--save-rank-weights", str(tmp_path / "ranks")], tmp_path)
    _run([sys.executable, "-m", "anoplug.train.launch", *FIT, "--save", str(tmp_path / "one")], tmp_path)
    r0, r1 = _weights(tmp_path / "ranks" / "rank-0"), _weights(tmp_path / "ranks" / "rank-1")
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert r0 and set(r0) == set(r1) == set(one)
    assert all((r0[k] == r1[k]).all() for k in r0), "the processes' weights diverged: gradients were not averaged"
    assert all((two[k] == r0[k]).all() for k in r0)
    assert any(not (r0[k] == one[k]).all() for k in r0), "2 processes trained exactly like 1: the ranks drew the same data"
