"""Under ``pytest --nbval-lax notebooks/``: print each notebook's cell execution time at the end.

The budget (60 s per notebook in smoke mode) is enforced by ``tools/run_notebooks.py``,
whose CSV is the record; this summary makes a slow notebook visible in every test run.
"""

from __future__ import annotations

from collections import defaultdict

_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    _seconds[report.nodeid.split("::")[0]] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    terminalreporter.section("notebook cell time (s), kernel start excluded")
    for name, s in sorted(_seconds.items()):
        terminalreporter.write_line(f"{s:7.1f}  {name}")
