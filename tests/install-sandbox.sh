#!/usr/bin/env bash
# Installs what the session sandbox (and tests/test_sandbox*.py) needs, only when missing:
#   - bubblewrap (bwrap): the sandbox itself, the default `local` runtime needs it;
#   - passt (pasta): the sandbox's `network = "outbound"` mode;
#   - util-linux's setpriv (drops the shell to its uid) and uidmap (newuidmap, for
#     daemons that are not root).
# It never fails the run: when something cannot be installed it says so; the sandbox tests
# then skip with that reason, except in CI (`CI` set) where they run and fail loudly.
set -uo pipefail

missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v pasta >/dev/null 2>&1 || missing+=(passt)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v newuidmap >/dev/null 2>&1 || missing+=(uidmap)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "install-sandbox: installing ${missing[*]}" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
        echo "install-sandbox: WARNING: apt-get could not install ${missing[*]}; sandbox tests will skip (outside CI)" >&2
    fi
else
    echo "install-sandbox: WARNING: ${missing[*]} missing and apt-get (as root) is not available; sandbox tests will skip (outside CI)" >&2
fi
exit 0
