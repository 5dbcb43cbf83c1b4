"""The gateway: the Socket.IO and HTTP front of the daemon, in its own eventlet process.

What it is for: ``server`` is the python-socketio server (connect, ``oh_action``,
disconnect) and the process entry point (``python -m sessionactors.gateway``);
``rest`` the HTTP API on the same port; ``fanout`` queues frames to connections with
back-pressure; ``links`` is its end of the bridge to the actors; ``hosts`` refuses requests whose
Host or Origin is not the daemon's own (DNS rebinding); ``guards`` keeps hostile clients
from the handlers (reserved event names, malformed websocket packets, log floods);
``httpserver`` is eventlet's WSGI server bounded against silent connections; ``static/``
the web console.

It holds no session logic. It may import the process-boundary modules (``bridge``,
``protocol``), ``config``, ``errors``, ``logs``, ``metrics``, ``auth`` and ``store``
(to *read* for REST queries); never ``actors`` or ``runtimes``: it speaks frames over
the bridge. This ``__init__`` imports nothing,
because ``server`` must monkey-patch with eventlet before anything else is imported.
"""
