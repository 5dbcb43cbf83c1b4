#!/usr/bin/env bash
# The one test command (README, .ci/run): install, lint, type-check, run the suite,
# and check that the run left no process of ours behind.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
if [ -f tests/js/package.json ] && command -v npm >/dev/null; then
    (cd tests/js && npm install --silent --no-audit --no-fund)
fi
if [ -x tests/install-browser.sh ]; then
    tests/install-browser.sh
fi
ruff check sessionactors tests bench
ruff format --check sessionactors tests bench
mypy sessionactors
export THESPIAN_BASE_IPADDR=127.0.0.1
python3 -m pytest -q "$@"
