"""Drive a real JupyterLab in headless chromium: run a notebook, move an explorer slider, see the image change.

The headless widget tests cannot catch a frontend that fails to render (a missing lab
extension, a PNG the browser cannot decode, a slider that never syncs to the kernel).
This test follows the recipe measured on this machine type (shared/environment-notes.md):
Debian's ``/usr/bin/chromium`` through Playwright, a JupyterLab on 127.0.0.1 with a token and
fresh config/settings/workspace dirs, Run All only once the kernel is connected and idle.
The notebook runs from a temporary copy (JupyterLab autosaves; the committed one must stay
stripped). Screenshots go to ``out/screenshots/`` for a human to look at.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("ANOPLUG_CHROMIUM", "/usr/bin/chromium"))
SHOTS = ROOT / "out" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
#: notebook driven by the test: the CutPaste one, or getting-started while that is not there
#: (ANOPLUG_BROWSER_NOTEBOOK overrides, for debugging another notebook's widgets)
NOTEBOOK = os.environ.get("ANOPLUG_BROWSER_NOTEBOOK") or next(
    (n for n in ("02_1_cutpaste.ipynb", "00_getting_started.ipynb") if (ROOT / "notebooks" / n).is_file()), None)

#: which explorer slider to move, and how far, so the change is visible in the screenshots
SLIDER_MOVES = {"02_1_cutpaste.ipynb": ("area_max", 20), "00_getting_started.ipynb": ("threshold", 15),
                "90_writing_a_plugin.ipynb": ("length", 10)}

pytestmark = [pytest.mark.browser, pytest.mark.slow]

KERNEL_READY_JS = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
}"""

RUN_STATE_JS = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  let pending = 0;
  for (const c of w.content.widgets) {
    if (c.model.type !== 'code') continue;
    const outs = c.model.outputs;
    for (let i = 0; i < outs.length; i++) {
      const o = outs.get(i);
      if (o.type === 'error') return 'error: ' + JSON.stringify(o.toJSON()).slice(0, 2000);
    }
    if (c.model.executionCount === null) pending += 1;
  }
  return pending === 0 ? 'done' : 'running ' + pending;
}"""


def _skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not installed (tools/install_browser.sh installs it with apt; needs root and apt-get)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (pip) not installed"
    if NOTEBOOK is None:
        return "no notebook to drive (02_1_cutpaste / 00_getting_started missing)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(settings: Path) -> None:
    """No news toast in screenshots; render every cell (windowing would hide the explorer off-screen)."""
    files = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for rel, content in files.items():
        p = settings / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(content))


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on a copy of notebooks/, stopped by its pid afterwards."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    work = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", work, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    dirs = {k: tmp_path / k.lower() for k in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                                               "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR")}
    for d in dirs.values():
        d.mkdir()
    _write_settings(dirs["JUPYTERLAB_SETTINGS_DIR"])
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, **{k: str(v) for k, v in dirs.items()}, "ANOPLUG_SMOKE": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    log = (tmp_path / "jupyterlab.log").open("w")
    jupyter = Path(sys.executable).with_name("jupyter")
    proc = subprocess.Popen([str(jupyter), "lab", "--no-browser", "--allow-root", "--ip", "127.0.0.1", "--port", str(port),
                             f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True",
                             f"--ServerApp.root_dir={work}"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_run_all(page, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    state = ""
    while time.time() < deadline:
        state = page.evaluate(RUN_STATE_JS)
        if state == "done":
            return
        if state.startswith("error"):
            pytest.fail(f"a cell failed in JupyterLab: {state}")
        time.sleep(0.5)
    pytest.fail(f"Run All did not finish in {timeout_s} s ({state})")


def test_slider_changes_the_rendered_image(jupyterlab):
    from playwright.sync_api import sync_playwright

    base, token = jupyterlab
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
            page.wait_for_function(KERNEL_READY_JS, timeout=120_000)  # connected AND idle before Run All
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            _wait_run_all(page, timeout_s=240)

            explorer = page.locator(".anoplug-explorer").first
            image = explorer.locator("img").first
            image.wait_for(state="visible", timeout=60_000)
            page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                                   timeout=30_000)
            explorer.scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / "browser_before.png"))
            before_src, before_png = image.get_attribute("src"), image.screenshot(path=str(SHOTS / "explorer_before.png"))

            name, presses = SLIDER_MOVES.get(NOTEBOOK, ("", 10))
            box = explorer.locator(".widget-slider", has=page.get_by_text(name, exact=True)) if name else explorer
            slider = box.locator("[role=slider]").first
            slider_before = slider.get_attribute("aria-valuenow")
            slider.focus()
            for _ in range(presses):
                page.keyboard.press("ArrowRight")
            page.wait_for_function("([img, src]) => img.src !== src && img.complete && img.naturalWidth > 0",
                                   arg=[image.element_handle(), before_src], timeout=60_000)
            page.wait_for_timeout(500)  # let a debounced second update land before the screenshot
            explorer.scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / "browser_after.png"))
            after_png = image.screenshot(path=str(SHOTS / "explorer_after.png"))
            slider_after = slider.get_attribute("aria-valuenow")
            status = explorer.locator(".widget-html").last.inner_text()
            for k, other in enumerate(page.locator(".anoplug-compare, .anoplug-explorer").all()):
                other.scroll_into_view_if_needed()  # every widget of the notebook, for a human to look at
                other.screenshot(path=str(SHOTS / f"widget_{k}.png"))
        finally:
            browser.close()
    assert slider_before != slider_after, f"the slider did not move ({slider_before})"
    assert after_png != before_png, "the slider moved but the rendered explorer image did not change"
    assert "Error" not in status, f"the explorer reported an error: {status}"
