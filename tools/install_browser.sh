#!/usr/bin/env bash
# Installs Debian's chromium for the JupyterLab browser test (tests/test_browser.py).
# Playwright drives /usr/bin/chromium through executable_path; `playwright install` cannot
# download browsers here. Never fails the set-up: without apt (or without root) the
# browser test skips and names the reason.
set -u
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: apt-get not available; the browser test will skip" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install_browser: not root and no passwordless sudo; the browser test will skip" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium; } >/tmp/anoplug-install-browser.log 2>&1; then
    echo "install_browser: apt-get install chromium failed (see /tmp/anoplug-install-browser.log); the browser test will skip" >&2
    exit 0
fi
echo "install_browser: installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
