"""The PostgreSQL store's schema (``postgres.py``): tables and the append function.

Created in one transaction on a fresh database under an advisory lock; ``sa_meta``
records ``schema_version``, and ``MIGRATIONS[v]`` brings a database at version ``v`` to
``v + 1`` (1 -> 2: the node registry ``sa_nodes`` and an ``sa_append`` that takes over
the sessions of a dead node and refuses the writes of a node that missed its heartbeats; 2 -> 3: the workspace
archives, ``postgres_archives.py``).
"""

from __future__ import annotations

from .leases import DEAD_HOLDER, LEASES_DDL, NODES_DDL
from .postgres_archives import ARCHIVES_DDL

__all__ = ["APP_MARKER", "DDL", "MIGRATIONS", "SCHEMA_VERSION"]

SCHEMA_VERSION = 3
APP_MARKER = "sessionactors"
_SCHEMA_LOCK = 0x5E55_AC70  # pg_advisory_xact_lock key while creating the tables

_APPEND_FUNCTION = (
    # p_epoch NULL: take the lease first. Returns the epoch held. SQLSTATEs: SAL01 another
    # node holds a live lease, SAL02 the held epoch was taken over, SAE01 an id gap/reuse.
    """CREATE OR REPLACE FUNCTION sa_append(p_session TEXT, p_node TEXT, p_epoch BIGINT, p_ttl DOUBLE PRECISION,
                                 p_ids BIGINT[], p_bodies TEXT[]) RETURNS BIGINT AS $$
    DECLARE
        v_epoch BIGINT := p_epoch;
        v_last BIGINT;
        v_who TEXT;
    BEGIN
        IF p_epoch IS NULL THEN
            INSERT INTO sa_leases AS l (session_id, node, epoch, expires_at)
            VALUES (p_session, p_node, 1, clock_timestamp() + p_ttl * interval '1 second')
            ON CONFLICT (session_id) DO UPDATE
                SET node = EXCLUDED.node, epoch = l.epoch + 1, expires_at = EXCLUDED.expires_at
                WHERE l.node IS NULL OR l.node = EXCLUDED.node OR l.expires_at <= clock_timestamp()
                    OR """
    + DEAD_HOLDER
    + """
            RETURNING l.epoch INTO v_epoch;
            IF v_epoch IS NULL THEN
                SELECT format('node %L at epoch %s', node, epoch) INTO v_who
                FROM sa_leases WHERE session_id = p_session;
                RAISE EXCEPTION USING ERRCODE = 'SAL01', MESSAGE = format(
                    'session %s is owned by %s, not by node %L', p_session, v_who, p_node);
            END IF;
        ELSE
            PERFORM 1 FROM sa_leases
            WHERE session_id = p_session AND node = p_node AND epoch = p_epoch FOR UPDATE;
            IF NOT FOUND THEN
                SELECT coalesce(format('node %L at epoch %s', node, epoch), 'nobody') INTO v_who
                FROM sa_leases WHERE session_id = p_session;
                RAISE EXCEPTION USING ERRCODE = 'SAL02', MESSAGE = format(
                    'session %s: node %L lost its lease (epoch %s) to %s; its write is refused',
                    p_session, p_node, p_epoch, coalesce(v_who, 'nobody'));
            END IF;
            -- Self-fencing in the database: a node every other node now holds dead may be
            -- taken over at any moment; it writes nothing more until it heartbeats again.
            PERFORM 1 FROM sa_nodes WHERE node_name = p_node
                AND heartbeat_at + timeout_s * interval '1 second' <= clock_timestamp();
            IF FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'SAL02', MESSAGE = format(
                    'session %s: node %L missed its heartbeats (presumed dead); its write is refused',
                    p_session, p_node);
            END IF;
        END IF;
        SELECT max(id) INTO v_last FROM sa_events WHERE session_id = p_session;
        IF p_ids[1] <> coalesce(v_last, -1) + 1 THEN
            RAISE EXCEPTION USING ERRCODE = 'SAE01', MESSAGE = format(
                'session %s: event id %s where %s was expected (last stored id %s)',
                p_session, p_ids[1], coalesce(v_last, -1) + 1, coalesce(v_last, -1));
        END IF;
        INSERT INTO sa_events (session_id, id, body)
        SELECT p_session, t.i, t.b FROM unnest(p_ids, p_bodies) AS t(i, b);
        RETURN v_epoch;
    END $$ LANGUAGE plpgsql"""
)

DDL = (
    "CREATE TABLE sa_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE sa_sessions (
        session_id TEXT PRIMARY KEY,
        owner TEXT,
        owner_login TEXT,
        args TEXT NOT NULL DEFAULT '{}',
        created_at DOUBLE PRECISION NOT NULL DEFAULT 0,
        last_active DOUBLE PRECISION NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'live',
        runtime_state TEXT NOT NULL DEFAULT '{}',
        token_version INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX sa_sessions_state_created ON sa_sessions (state, created_at)",
    "CREATE TABLE sa_events (session_id TEXT NOT NULL, id BIGINT NOT NULL, body TEXT NOT NULL, "
    "PRIMARY KEY (session_id, id))",
    LEASES_DDL,
    NODES_DDL,
    "CREATE INDEX sa_leases_node ON sa_leases (node)",
    "CREATE TABLE sa_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    _APPEND_FUNCTION,
    *ARCHIVES_DDL,
)

MIGRATIONS: dict[int, tuple[str, ...]] = {1: (NODES_DDL, _APPEND_FUNCTION), 2: ARCHIVES_DDL}
"""Statements bringing a database from version ``key`` to ``key + 1``."""
