"""The actors: the supervisor and one actor per session (the Thespian side of the daemon).

What it is for: ``supervisor`` is the only top-level actor, the registry and router of
sessions, with its parts ``lifecycle`` (warm pool, activation, exits and restarts,
shutdown), ``queries`` (answers to the gateway's queries) and ``registry`` (its entry per
session). ``session`` is one actor per live session (numbers, stores and fans out events),
with ``passivation`` (its timers, passivation after ``close_delay``, shutdown).

It may import the process-boundary modules (``messages``, ``bridge``, ``protocol``),
``config``, ``errors``, ``actorsystem``, ``store`` and ``runtimes``; never ``gateway``
(the gateway is another process, reached over the bridge).
"""
