"""Identity: who may open, join and read a session.

What it is for: ``tokens`` signs and verifies the session tokens (JWT), ``secrets``
keeps the signing secret on disk and follows its rotation, ``github`` verifies GitHub
tokens and decides who may join a bound session.

It may import ``errors`` and nothing else of sessionactors: both the gateway (which
checks tokens) and the command line (which rotates the secret) use it.
"""
