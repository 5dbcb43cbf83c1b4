#!/usr/bin/env bash
# Installs what tests/test_console_browser.py needs, only when it is missing:
#   - Debian's chromium (/usr/bin/chromium), driven by Playwright with executable_path
#     (never `playwright install`: it downloads a browser build, which cannot work here);
#   - the playwright Python package.
# It never fails the run: when something cannot be installed it says so, and the browser
# tests skip with that reason.
set -uo pipefail

if [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "install-browser: installing Debian's chromium" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
            echo "install-browser: WARNING: apt-get could not install chromium; browser tests will skip" >&2
        fi
    else
        echo "install-browser: WARNING: /usr/bin/chromium is missing and apt-get (as root) is not available; browser tests will skip" >&2
    fi
fi

if ! python3 -c 'import playwright.sync_api' >/dev/null 2>&1; then
    echo "install-browser: installing the playwright Python package" >&2
    if ! python3 -m pip install --quiet --disable-pip-version-check 'playwright>=1.40'; then
        echo "install-browser: WARNING: pip could not install playwright; browser tests will skip" >&2
    fi
fi
exit 0
