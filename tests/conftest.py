"""Host test configuration: offline, single-threaded, headless."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# `anoplug new-plugin` mirrors its copier template into a git repository under the user's cache;
# tests keep theirs in a temporary folder instead
os.environ.setdefault("ANOPLUG_TEMPLATE_REPO", os.path.join(tempfile.mkdtemp(prefix="anoplug-template-"), "repo"))

pytest_plugins = ["pytester"]
