"""Runtimes: where a session's actions execute.

What it is for: ``base`` is the interface a session actor drives (``Runtime``,
``RuntimeContext``, ``Output``, ``Status``, ...; plugins import it as
``sessionactors.runtime``, its stable public path); one module per built-in runtime
beside it (``echo``: in-process, for tests and benchmarks; ``local``: a persistent
bash, with its process helpers in ``_shell`` and ``_procs`` and its file helpers in
``_files`` and ``_localfiles``). ``sandbox`` runs a session's processes in namespaces
(bubblewrap) with the limits of ``cgroups``, helped by ``_sandboxfs`` and ``_net`` (the
outbound network); ``local`` uses it by default and a plugin runtime can too.

It may import ``errors`` and nothing else of sessionactors: the session actor drives
a runtime, a runtime never reaches back into the actors, the store or the gateway.
"""
