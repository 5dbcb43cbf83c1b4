#!/usr/bin/env bash
# The one test command (README, .ci/run): install, lint, type-check, run the suite,
# and check that the run left no process of ours behind.
set -euo pipefail
cd "$(dirname "$0")/.."
# tests/test_openhands_frontend.py drives this build; it skips where the checkout has no
# ../shared, but in CI it must run: say so at once rather than skip.
OPENHANDS_BUILD=../shared/clients/openhands-frontend-0dde1602c2/build
if [ -n "${CI:-}" ] && [ ! -f "$OPENHANDS_BUILD/index.html" ]; then
    echo "tests/run.sh: CI is set but the OpenHands frontend build is missing:" \
        "$(realpath -m "$OPENHANDS_BUILD")/index.html (needed by tests/test_openhands_frontend.py)" >&2
    exit 1
fi
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
if [ -f tests/js/package.json ] && command -v npm >/dev/null; then
    (cd tests/js && npm install --silent --no-audit --no-fund)
fi
if [ -x tests/install-browser.sh ]; then
    tests/install-browser.sh
fi
# The PostgreSQL store's tests start their own PostgreSQL 15 (tests/pg_harness.py): install
# it when missing (as root, through apt-get), with no cluster of its own (create_main_cluster
# = false: no server left running). Never fails the run: without it those tests skip with the
# reason, except in CI, where they fail.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        mkdir -p /etc/postgresql-common/createcluster.d
        [ -e /etc/postgresql-common/createcluster.d/sessionactors.conf ] ||
            echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/sessionactors.conf
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15; } \
            >/dev/null 2>&1 || echo "tests/run.sh: could not install postgresql-15" >&2
    else
        echo "tests/run.sh: PostgreSQL 15 is missing and this is not root: its tests will skip" >&2
    fi
fi
# The partition tests (tests/netns.py) make network namespaces and veths with `ip`: install
# iproute2 when it is missing (root, apt-get); without it they skip, except in CI.
if ! command -v ip >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2; } \
            >/dev/null 2>&1 || echo "tests/run.sh: could not install iproute2" >&2
    else
        echo "tests/run.sh: ip (iproute2) is missing and this is not root: the partition tests will skip" >&2
    fi
fi
# The cluster's Redis tests start their own redis-server (tests/redis_harness.py): install
# it when missing (as root, through apt-get), then stop the server the package starts, so
# that none is left running. Never fails the run: without it those tests skip with the
# reason, except in CI, where they fail.
if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } \
            >/dev/null 2>&1 || echo "tests/run.sh: could not install redis-server" >&2
        { command -v service >/dev/null && service redis-server stop; } >/dev/null 2>&1 || true
    else
        echo "tests/run.sh: redis-server is missing and this is not root: its tests will skip" >&2
    fi
fi
if [ -x tests/install-sandbox.sh ]; then
    tests/install-sandbox.sh
fi
ruff check sessionactors tests bench
ruff format --check sessionactors tests bench
mypy sessionactors
export THESPIAN_BASE_IPADDR=127.0.0.1
python3 -m pytest -q "$@"
