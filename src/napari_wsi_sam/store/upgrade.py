"""Bring an object store of an older schema version up to this one, when it is opened.

Version 1 (before QuPath interchange) had no object UUIDs. Upgrading adds the ``uuid``
column, gives every object (live or deleted, so undo keeps working) a fresh uuid4 and makes the
column unique, in one transaction: a kill mid-way leaves the version-1 file as it was. A store
that cannot be written (a read-only medium, a read-only view) is not changed; its objects get
UUIDs derived from the store's id and their own id (uuid5), the same on every open, through a
temporary view that lives only in that connection.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from pathlib import Path

from . import schema

logger = logging.getLogger(__name__)

READ_ONLY_NAMESPACE = uuid.UUID("5d0f6c0e-3f0b-4b43-9e55-0a1f1b2d7a52")
"""The uuid5 namespace of UUIDs shown for a version-1 store that cannot be upgraded."""


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def upgrade(conn: sqlite3.Connection, path: Path) -> bool:
    """Upgrade a writable store's file to `schema.SCHEMA_VERSION`; True when it changed."""
    version = schema_version(conn)
    if version >= schema.SCHEMA_VERSION:
        return False
    try:
        with schema.transaction(conn):
            if version < 2:
                _add_uuids(conn)
            conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION}")
    except sqlite3.Error as error:
        raise schema.translate(error, path, "upgrade") from error
    logger.info("%s: upgraded the object store from version %d to %d", path, version,
                schema.SCHEMA_VERSION)
    return True


def _add_uuids(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE objects ADD COLUMN uuid TEXT")
    ids = [int(row[0]) for row in conn.execute("SELECT id FROM objects")]
    conn.executemany("UPDATE objects SET uuid = ? WHERE id = ?",
                     [(str(uuid.uuid4()), object_id) for object_id in ids])
    conn.execute("CREATE UNIQUE INDEX objects_uuid ON objects (uuid)")


def view_without_upgrade(conn: sqlite3.Connection) -> None:
    """Show a version-1 store that cannot be written as if it had UUIDs (see module doc)."""
    if schema_version(conn) >= 2:
        return
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    store_id = json.loads(meta.get("store_id", '""')) or "store"

    def derived(object_id: int) -> str:
        return str(uuid.uuid5(READ_ONLY_NAMESPACE, f"{store_id}:{object_id}"))

    conn.create_function("wsi_sam_uuid", 1, derived, deterministic=True)
    query_only = int(conn.execute("PRAGMA query_only").fetchone()[0])
    conn.execute("PRAGMA query_only = 0")  # the temp schema only; the file stays untouched
    try:
        conn.execute("CREATE TEMP VIEW objects AS "
                     "SELECT *, wsi_sam_uuid(id) AS uuid FROM main.objects")
    finally:
        conn.execute(f"PRAGMA query_only = {query_only}")
