"""One source of truth for metadata: every installed generator's entry-point spec matches its class.

The entry point must stay torch-free, so it cannot import the class; the spec therefore
repeats name, title, category, tags and needs_fit, and this test (like the kit's
``test_metadata``) fails the moment the two drift.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from anoplug.registry import get_registry

SPECS = get_registry().specs("generators")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_matches_class(name: str) -> None:
    spec = SPECS[name]
    cls = get_registry().generator_class(name)
    assert (spec.title, spec.category, tuple(spec.tags), bool(spec.needs_fit)) == (
        cls.title, cls.category, tuple(cls.tags), bool(cls.requires.fit)), f"{name}: spec and class disagree"


def test_list_category_baseline_finds_draem() -> None:
    r = subprocess.run([sys.executable, "-m", "anoplug.cli", "list", "--category", "baseline"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "draem" in r.stdout
