"""The cluster layer over the shared PostgreSQL store: node registry, heartbeats, drain.

What it is for: with ``store_url`` every daemon registers in ``sa_nodes`` and heartbeats
from a thread of its own (``nodes.py``); a node that misses its heartbeats for
``node_timeout`` is dead for every node, its sessions are taken over at once and it fences
itself. ``member.py`` is the supervisor's side (refusals while draining or fenced, the
passivation of a draining node's sessions); ``commands.py`` holds the ``nodes`` and
``drain`` commands.

What it may import: ``config``, ``errors``, ``protocol``, ``store``, psycopg and Thespian
(``member.py`` stops session actors with its ``ActorExitRequest``); never the
gateway, the actors (the supervisor mixes ``member.ClusterMember`` in, not the other way)
or the runtimes.
"""
