"""Object UUIDs: version-1 stores upgraded on open (nothing lost), GeoJSON keeps the UUID."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

from shapely.geometry import Point, box

from napari_wsi_sam.pipeline import export_objects
from napari_wsi_sam.pipeline.objects import import_objects
from napari_wsi_sam.store import ObjectStore, changes, schema
from napari_wsi_sam.store.records import NewObject

DIMS = (4000, 3000)
META = {"dimensions": list(DIMS), "mpp": [0.5, 0.5], "store_id": "v1-test"}

# The version-1 DDL: today's schema without the uuid column and its unique index.
V1_SCHEMA = (schema.SCHEMA.replace("    resume_key TEXT,\n    uuid TEXT NOT NULL\n",
                                   "    resume_key TEXT\n")
             .replace("CREATE UNIQUE INDEX objects_uuid ON objects (uuid);\n", ""))


def write_v1_store(path, shapes):
    """A store as release 1 of the schema wrote it: its DDL, its write steps, user_version 1.
    shapes: (geometry, class name, deleted) per object."""
    assert "uuid" not in V1_SCHEMA
    conn = sqlite3.connect(path, isolation_level=None)
    with schema.transaction(conn):
        for statement in V1_SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                         [(k, json.dumps(v)) for k, v in META.items()])
        conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
        now = time.time()
        for geometry, name, deleted in shapes:
            cursor = conn.execute("INSERT INTO objects (current, deleted, created) "
                                  "VALUES (0, 0, ?)", (now,))
            object_id = int(cursor.lastrowid)
            item = NewObject(geometry, name, model="sam", score=0.9,
                             score_kind="predicted_iou")
            vid = changes.insert_version(conn, object_id, 1, "create", item, geometry, now)
            changes.set_state(conn, object_id, vid, deleted=deleted, geometry=geometry)
            changes.log_change(conn, "old", object_id, "create", (None, True),
                               (vid, deleted), "g", now)
        changes.ensure_classes(conn, {name for _, name, _ in shapes})
    conn.close()


SHAPES = [(box(10, 10, 200, 150), "tumor", False), (Point(600, 600).buffer(80), "stroma", False),
          (box(1000, 1000, 1300, 1200), "tumor", True)]


def test_a_version_1_store_is_upgraded_on_open_keeping_every_object(tmp_path):
    path = tmp_path / "objects.sqlite"
    write_v1_store(path, SHAPES)
    with ObjectStore.open(path) as store:
        assert store.count() == 2 and store.count(deleted=True) == 1
        objects = [store.get(i) for i in (1, 2, 3)]
        uuids = [o.uuid for o in objects]
        for obj, (geometry, name, deleted) in zip(objects, SHAPES, strict=True):
            assert obj.class_name == name and obj.deleted == deleted
            assert obj.geometry.symmetric_difference(geometry).area < 1e-6
        assert len(set(uuids)) == 3 and all(uuid.UUID(u).version == 4 for u in uuids)
        new_id = store.add(box(2000, 2000, 2100, 2100), class_name="tumor")
        assert store.get(new_id).uuid not in uuids
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 2
    conn.close()
    with ObjectStore.open(path) as again:  # upgraded once: the same UUIDs on every open
        assert [again.get(i).uuid for i in (1, 2, 3)] == uuids
        again.refine(1, box(10, 10, 210, 160), model="sam")
        assert again.get(1).uuid == uuids[0]  # a new version keeps the object's UUID


def test_a_version_1_store_opened_read_only_shows_stable_uuids_and_stays_untouched(tmp_path):
    path = tmp_path / "objects.sqlite"
    write_v1_store(path, SHAPES)
    before = path.read_bytes()
    with ObjectStore.open(path, read_only=True) as first:
        seen = [o.uuid for o in first.iter_live()]
    with ObjectStore.open(path, read_only=True) as second:
        assert [o.uuid for o in second.iter_live()] == seen and len(set(seen)) == 2
    assert path.read_bytes() == before
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()


def test_geojson_round_trip_keeps_each_objects_uuid(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with ObjectStore.create(tmp_path / "a" / "objects.sqlite", meta=META) as first:
        for geometry, name, _ in SHAPES:
            first.add(geometry, class_name=name, model="wsi-sam", score=0.8)
        export_objects(first, tmp_path / "one.geojson")
    features = json.loads((tmp_path / "one.geojson").read_text())["features"]
    ids = [f["id"] for f in features]
    assert len(set(ids)) == 3 and all(uuid.UUID(i) for i in ids)
    assert all("uuid" not in f["properties"] for f in features)  # at the top, as QuPath has it
    with ObjectStore.create(tmp_path / "b" / "objects.sqlite", meta=META) as second:
        new_ids, _ = import_objects(second, tmp_path / "one.geojson")
        assert len(new_ids) == 3
        export_objects(second, tmp_path / "two.geojson")
        # the same objects imported again (another file) stay distinct objects, new UUIDs
        (tmp_path / "copy.geojson").write_text((tmp_path / "one.geojson").read_text() + " ")
        again, _ = import_objects(second, tmp_path / "copy.geojson")
        assert not {second.get(i).uuid for i in again} & set(ids)
    round_trip = json.loads((tmp_path / "two.geojson").read_text())["features"]
    assert [f["id"] for f in round_trip] == ids
