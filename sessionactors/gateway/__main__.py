"""``python -m sessionactors.gateway``: the gateway process (started by the daemon)."""

from .server import main

main()
