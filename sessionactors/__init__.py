"""sessionactors: an actor-per-session supervisor for agent servers.

Each session is a Thespian actor that owns its runtime and its connections; a
supervisor actor routes INIT and disconnect, restarts crashed sessions and knows
which exist; a thin python-socketio gateway on eventlet speaks the wire protocol
(``PROTOCOL.md``) to browsers. See ``docs/architecture.md``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
