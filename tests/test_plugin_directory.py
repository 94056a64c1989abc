"""docs/plugins.md is what the installed plugins say about themselves (regenerated, never measured, in CI)."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest

from anoplug.generator import FeatureGenerator, Paper, Requires

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("plugin_directory", ROOT / "tools" / "plugin_directory.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


@pytest.fixture(scope="module")
def reg():
    return tool.registry()


def _row(page: str, name: str) -> str:
    return next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))


def test_committed_directory_matches_the_installed_plugins(reg) -> None:
    expected = tool.render(reg, tool.load_timings())
    committed = tool.DOC.read_text()
    if committed != expected:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), expected.splitlines(True),
                                                 "docs/plugins.md (committed)", "regenerated"))[:60])
        pytest.fail("docs/plugins.md is stale: run `make plugins-doc` (it re-installs changed plugin metadata "
                    f"first) and commit it with tools/plugin_timings.json\n{diff}", pytrace=False)


def test_readme_methods_table_matches_the_installed_plugins(reg) -> None:
    readme = (ROOT / "README.md").read_text()
    if tool.with_readme_section(readme, tool.render_readme_section(reg)) != readme:
        pytest.fail("README.md's methods table is stale: run `make plugins-doc` and commit README.md", pytrace=False)


def test_readme_section_lists_every_generator_under_its_category(reg) -> None:
    from anoplug.specs import CATEGORIES

    section = tool.render_readme_section(reg)
    for name in reg.specs("generators"):
        cls = reg.generator_class(name)
        row = next(line for line in section.splitlines() if f"`{name}`" in line)
        assert row.startswith(f"| {tool._cell(CATEGORIES.get(cls.category, cls.category))} |"), row
    with pytest.raises(ValueError, match="markers"):
        tool.with_readme_section("# no markers here", section)


def test_rows_come_from_the_generator_class(reg, monkeypatch) -> None:
    cls = reg.generator_class("draem")
    monkeypatch.setattr(cls, "paper", Paper("A | piped title", venue="V", year=1999, url="https://example.org/p",
                                            code_url="https://github.com/someone/thing"))
    row = _row(tool.render(reg, {"seconds_per_image": {}}), "draem")
    assert "[A \\| piped title](https://example.org/p) | V 1999 | [someone/thing](https://github.com/someone/thing)" in row
    assert row.endswith("| pixel | no | — | — |"), row


def test_a_generator_without_a_measured_time_shows_a_dash(reg) -> None:
    assert _row(tool.render(reg, {"seconds_per_image": {}}), "cutpaste").endswith("| — |")
    assert _row(tool.render(reg, {"seconds_per_image": {"cutpaste": 0.00123}}), "cutpaste").endswith("| 0.00123 |")


def test_measure_times_training_free_and_skips_learned_without_weights(reg) -> None:
    timed = tool.measure(reg, {"seconds_per_image": {"gone": 1.0}}, ["cutpaste", "anomalydiffusion"])
    assert set(timed["seconds_per_image"]) == {"cutpaste"}  # "gone" is no longer installed: dropped
    assert 0 < timed["seconds_per_image"]["cutpaste"] < 5 and "torch" in timed["machine"]["cutpaste"]
    assert "256x256, batch 4" in timed["protocol"]


def test_what_is_measurable() -> None:
    class Base:
        level, requires, pretrained = "image", Requires(), {}

    learned = type("Learned", (Base,), {"requires": Requires(fit=True)})
    shipped = type("Shipped", (learned,), {"pretrained": {"fabric": "weights/fabric"}})
    assert tool.measurable(Base) and not tool.measurable(learned) and tool.measurable(shipped)
    assert not tool.measurable(type("Feat", (FeatureGenerator,), {}))
