#!/usr/bin/env bash
# Install emovox with its dev dependencies (CPU PyTorch) and run the whole test suite.
# This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0" -e ".[dev]"
# Browser tests (tests/test_browser.py) drive Debian's Chromium through Playwright; Playwright's own
# browser download is not used. Install it when missing (needs root and apt, e.g. a fresh Debian CI box).
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: /usr/bin/chromium is missing and cannot be installed here; browser tests will be skipped" >&2
    fi
fi
python -m pytest -q "$@"
