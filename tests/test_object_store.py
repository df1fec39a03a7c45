"""The object store: overlapping and nested objects, versions, undo/redo per writer, journal
modes, damaged/read-only/full stores, the release-0.1 migration, and rasters drawn from it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat

import numpy as np
import pytest
from shapely.geometry import Point, box

from napari_wsi_sam.errors import StoreError
from napari_wsi_sam.formats import read_geojson
from napari_wsi_sam.paths import HOME_ENV
from napari_wsi_sam.pipeline import export_objects
from napari_wsi_sam.polygons import geometry_to_mask, mask_to_geometry
from napari_wsi_sam.slide import open_slide
from napari_wsi_sam.store import ObjectRasters, ObjectStore, open_store
from napari_wsi_sam.store.files import cache_folder, default_folder
from napari_wsi_sam.store.migration import BACKUP_DIR
from napari_wsi_sam.store.schema import JOURNAL_ENV, journal_mode_for

DIMS = (20_000, 15_000)
LEGACY = os.path.join(os.path.dirname(__file__), "data", "legacy-0.1-store")


def disc(cx: int, cy: int, r: int):
    """A nucleus-like object: the exact pixel outline of a disc."""
    yy, xx = np.mgrid[cy - r:cy + r + 1, cx - r:cx + r + 1]
    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    return mask_to_geometry(mask, (cx - r, cy - r, cx + r + 1, cy + r + 1))


@pytest.fixture
def store(tmp_path):
    with ObjectStore.create(tmp_path / "objects.sqlite",
                            meta={"dimensions": list(DIMS), "mpp": [0.5, 0.5],
                                  "store_id": "test"}) as opened:
        yield opened


def test_overlapping_and_nested_objects_all_stay(store, tmp_path):
    """A region, five nuclei inside it, a second region over the first: 7 objects out, the
    first region untouched (release 0.1 exported 5 of 14 in such a case)."""
    region = box(1000, 1000, 3000, 3000)
    first = store.add(region, class_name="tumour")
    nuclei = [store.add(disc(1200 + 300 * i, 1500, 20), class_name="nucleus")
              for i in range(5)]
    second = store.add(box(2500, 2000, 4000, 3500), class_name="tumour")
    out = tmp_path / "all.geojson"
    assert export_objects(store, out) == 7
    objects = {o.id: o for o in read_geojson(out).objects}
    assert len(objects) == 7
    assert objects[first].geometry.area == region.area == store.get(first).area
    assert objects[first].geometry.equals(region)
    for nucleus in nuclei:
        assert objects[nucleus].properties["parent"] == first
        assert objects[nucleus].geometry.equals(store.get(nucleus).geometry)
    assert "parent" not in objects[second].properties  # overlaps, is not inside
    # A nucleus under both regions belongs to the smaller one that covers it.
    inner = store.add(disc(2700, 2200, 10), class_name="nucleus")
    assert store.get(inner).parent == second
    # Deleting the second region hands it to the first.
    store.delete([second])
    assert store.get(inner).parent == first


def test_a_later_container_adopts_and_a_refine_moves_children(store):
    nucleus = store.add(disc(500, 500, 10), class_name="nucleus")
    assert store.get(nucleus).parent is None
    region = store.add(box(400, 400, 700, 700), class_name="tumour")
    assert store.get(nucleus).parent == region
    store.refine(region, box(600, 600, 900, 900))  # no longer covers the nucleus
    assert store.get(nucleus).parent is None
    store.undo()
    assert store.get(nucleus).parent == region


def test_every_change_is_a_version_and_undo_walks_them(store):
    first = disc(5000, 5000, 30)
    object_id = store.add(first, class_name="nucleus", model="sam", score=0.9,
                          score_kind="predicted_iou", prompt={"box": [1, 2, 3, 4]})
    store.refine(object_id, disc(5000, 5000, 25), model="wsi-sam", head="hgsc_nuclei",
                 score=0.8, score_kind="stability")
    store.reclass([object_id], "lymphocyte")
    now = store.get(object_id)
    assert (now.version, now.class_name, now.head) == (3, "lymphocyte", "hgsc_nuclei")
    # Undo goes back one version at a time: class, then the previous mask, then gone.
    store.undo()
    assert store.get(object_id).class_name == "nucleus" and store.get(object_id).version == 2
    store.undo()
    back = store.get(object_id)
    assert back.version == 1 and back.geometry.equals(first) and back.model == "sam"
    store.undo()
    assert store.get(object_id).deleted and store.count() == 0
    assert store.undo() == []
    store.redo()
    assert store.count() == 1 and store.get(object_id).version == 1
    store.redo()
    assert store.get(object_id).version == 2
    # A new change drops what could still be redone.
    store.delete([object_id])
    assert store.redo() == []
    assert [v.op for v in store.versions(object_id)] == ["create", "refine", "reclass"]
    assert store.get(object_id, version=1).geometry.equals(first)


def test_delete_is_recoverable_until_purge(store):
    keep = store.add(disc(300, 300, 10), class_name="nucleus")
    gone = store.add(disc(600, 300, 10), class_name="nucleus")
    store.delete([gone])
    assert store.ids() == [keep] and store.get(gone).deleted
    store.undo()
    assert store.ids() == [keep, gone]
    store.delete([gone])
    assert store.purge() == 1
    with pytest.raises(StoreError, match="no object"):
        store.get(gone)
    assert store.ids() == [keep]


def test_two_writers_keep_their_own_undo(store, tmp_path):
    other = ObjectStore.open(store.path)
    mine = store.add(disc(100, 100, 10), class_name="a")
    theirs = other.add(disc(200, 200, 10), class_name="a")
    assert mine != theirs
    assert store.changed_elsewhere() and not store.changed_elsewhere()
    seen = store.last_seq()
    other.refine(theirs, disc(200, 200, 12))
    assert [c.op for c in store.changes_since(seen)] == ["refine"]
    store.undo()  # my add, not their refine
    assert store.get(mine).deleted and other.get(theirs).version == 2
    store.redo()
    other.refine(mine, disc(100, 100, 14))  # they change my object ...
    with pytest.raises(StoreError, match="changed elsewhere"):
        store.undo()  # ... so I may not undo mine over it
    assert store.get(mine).version == 2
    other.close()


def test_viewport_and_click_queries(store):
    big = store.add(box(0, 0, 1000, 1000), class_name="tumour")
    small = store.add(disc(500, 500, 20), class_name="nucleus")
    far = store.add(disc(9000, 9000, 20), class_name="nucleus")
    assert {o.id for o in store.query((400, 400, 600, 600))} == {big, small}
    assert [o.id for o in store.query((8000, 8000, 10000, 10000))] == [far]
    assert [o.id for o in store.at_point(500.5, 500.5)] == [small, big]
    assert [o.id for o in store.at_point(900.5, 900.5)] == [big]
    assert store.ids(classes=["nucleus"]) == [small, far]


def test_storage_grows_linearly_with_edits(store):
    """Release 0.1's undo data grew about with n²; here every edit adds about the same."""
    sizes = []
    for step in range(3):
        store.add_many([_new(disc(100 + 40 * (i % 400), 100 + 40 * (i // 400) + 4000 * step, 8))
                        for i in range(1000)])
        with sqlite3.connect(store.path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes.append(os.path.getsize(store.path))
    growth = np.diff([0, *sizes])
    assert growth.max() < 1.5 * growth.min()
    assert sizes[-1] / 3000 < 2048  # bytes per nucleus, all tables and indexes


def _new(geometry):
    from napari_wsi_sam.store import NewObject

    return NewObject(geometry, "nucleus", model="sam")


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_both_journal_modes_work(tmp_path, monkeypatch, journal):
    monkeypatch.setenv(JOURNAL_ENV, journal)
    path = tmp_path / "objects.sqlite"
    with ObjectStore.create(path, meta={"dimensions": [100, 100]}) as created:
        assert created.journal == journal
        created.add(box(10, 10, 20, 20), class_name="a")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == journal
    with ObjectStore.open(path) as reopened, ObjectStore.open(path) as second:
        second.add(box(30, 30, 40, 40), class_name="a")
        assert reopened.count() == 2


def test_network_file_systems_get_the_rollback_journal(tmp_path, monkeypatch):
    monkeypatch.delenv(JOURNAL_ENV, raising=False)
    mounts = ("sysfs /sys sysfs rw 0 0\n/dev/sda1 / ext4 rw 0 0\n"
              f"server:/slides {tmp_path} nfs4 rw 0 0\n//nas/share /mnt/nas cifs rw 0 0\n")
    assert journal_mode_for(tmp_path / "a.wsi-sam", mounts=mounts) == "delete"
    assert journal_mode_for(tmp_path.parent / "elsewhere", mounts=mounts) == "wal"
    assert journal_mode_for(tmp_path / "x", mounts="/dev/sda1 / ext4 rw 0 0\n") == "wal"


def test_a_damaged_store_gives_one_line_and_is_left_alone(store):
    path = store.path
    store.add(box(1, 1, 5, 5), class_name="a")
    store.close()
    for suffix in ("-wal", "-shm"):
        (path.parent / (path.name + suffix)).unlink(missing_ok=True)
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\x13" * (4096 - 100)  # scribble over the first page
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError) as caught:
        ObjectStore.open(path)
    message = str(caught.value)
    assert "\n" not in message and "left untouched" in message
    assert path.read_bytes() == bytes(data)  # never reset
    foreign = path.parent / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a napari-wsi-sam object store"):
        ObjectStore.open(foreign)


READ_ONLY_CHILD = """
import json, sys
from shapely.geometry import box
from napari_wsi_sam.store import ObjectStore
from napari_wsi_sam.errors import StoreError
store = ObjectStore.open(sys.argv[1])
out = {"read_only": store.read_only, "count": store.count(), "class": store.get(1).class_name}
try:
    store.add(box(9, 9, 12, 12), class_name="a")
    out["error"] = None
except StoreError as error:
    out["error"] = str(error)
print(json.dumps(out))
"""


def run_on_read_only_folder(folder, code, *args):
    """Run `code` in a child that sees `folder` on a read-only mount (a user and mount
    namespace: works as root too), or with the folder made unwritable (non-root)."""
    import subprocess
    import sys

    command = [sys.executable, "-c", code, *args]
    if shutil.which("unshare") and subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode == 0:
        script = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"')
        command = ["unshare", "-rm", "sh", "-c", script, str(folder), *command]
    elif os.geteuid() != 0:
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR)
    else:
        pytest.skip("no way to make a read-only folder here (no unshare, running as root)")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        os.chmod(folder, stat.S_IRWXU)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("settled", [True, False], ids=["checkpointed", "with-wal"])
def test_a_read_only_store_opens_read_only(store, settled):
    store.add(box(1, 1, 5, 5), class_name="a")
    path = store.path
    if settled:
        store.close()
    out = run_on_read_only_folder(path.parent, READ_ONLY_CHILD, str(path))
    if not settled:
        store.close()
    assert out["read_only"] and out["count"] == 1 and out["class"] == "a"
    assert "read-only" in out["error"] and "\n" not in out["error"]
    with ObjectStore.open(path) as again:
        assert again.count() == 1


def test_asked_read_only_refuses_every_change(store):
    store.add(box(1, 1, 5, 5), class_name="a")
    with ObjectStore.open(store.path, read_only=True) as viewer:
        assert viewer.count() == 1
        for change in (lambda: viewer.add(box(1, 1, 2, 2), class_name="a"),
                       lambda: viewer.delete([1]), viewer.undo, viewer.purge):
            with pytest.raises(StoreError, match="read-only"):
                change()
    assert store.count() == 1


def test_a_full_disk_leaves_the_store_as_it_was(store):
    kept = store.add(box(1, 1, 5, 5), class_name="a")
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # as good as a full disk
    huge = mask_to_geometry(np.random.default_rng(0).random((300, 300)) > 0.5,
                            (1000, 1000, 1300, 1300))
    with pytest.raises(StoreError) as caught:
        store.add_many([_new(huge) for _ in range(20)])
    assert "full" in str(caught.value) and "\n" not in str(caught.value)
    assert store.ids() == [kept] and store.get(kept).geometry.equals(box(1, 1, 5, 5))


def test_bad_objects_are_refused_in_one_line(store):
    with pytest.raises(StoreError, match="off the slide"):
        store.add(box(DIMS[0] + 10, 0, DIMS[0] + 20, 10), class_name="a")
    with pytest.raises(StoreError, match="without an area"):
        store.add(Point(3, 3), class_name="a")
    with pytest.raises(StoreError, match="a class needs a name"):
        store.add(box(1, 1, 2, 2), class_name="  ")
    clipped = store.add(box(-10, -10, 10, 10), class_name="a")  # cut to the slide
    assert store.get(clipped).bounds == (0, 0, 10, 10)
    with pytest.raises(StoreError, match="no object 999"):
        store.refine(999, box(1, 1, 2, 2))


# ---------------------------------------------------------------------------- files
def test_the_store_lives_beside_the_slide_or_in_the_cache(sample_slide, tmp_path, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "cache"))
    slide_dir = tmp_path / "slides"
    slide_dir.mkdir()
    copy = slide_dir / sample_slide.name
    shutil.copy(sample_slide, copy)
    with open_slide(copy) as slide, open_store(slide) as opened:
        assert opened.folder == copy.with_name("cmu_small_region.wsi-sam")
        assert opened.dimensions == slide.dimensions and opened.mpp == slide.mpp
    with open_slide(sample_slide) as slide, pytest.raises(StoreError, match="2220x2967"):
        other = tmp_path / "other"
        other.mkdir()
        with ObjectStore.create(other / "objects.sqlite", meta={"dimensions": [10, 10]}):
            pass
        open_store(slide, folder=other)
    if os.geteuid() != 0:
        os.chmod(slide_dir, stat.S_IRUSR | stat.S_IXUSR)
        try:
            fresh = slide_dir / "fresh.svs"
            assert default_folder(fresh) == cache_folder(fresh)
        finally:
            os.chmod(slide_dir, stat.S_IRWXU)


def test_a_release_0_1_store_converts_once_keeping_every_object(sample_slide, tmp_path):
    """The fixture was written by release 0.1's LabelStore (tests/data/legacy-0.1-store):
    nucleus 4 was wholly covered by a later region and nucleus 3 in part."""
    copy = tmp_path / sample_slide.name
    shutil.copy(sample_slide, copy)
    folder = copy.with_name("cmu_small_region.wsi-sam")
    shutil.copytree(LEGACY, folder)
    table = json.loads((folder / "objects.json").read_text())
    with open_slide(copy) as slide, open_store(slide) as store:
        assert sorted(store.ids()) == sorted(o["id"] for o in table["objects"]) == [1, 2, 3, 4,
                                                                                  6, 7]
        expected = {1: box(1000, 1800, 1500, 2300), 7: box(1180, 1980, 1600, 2400)}
        for object_id, shape in expected.items():
            assert store.get(object_id).geometry.equals(shape)
        for object_id, (cx, cy) in zip((2, 3, 4), [(1100, 1900), (1200, 2000), (1300, 2100)],
                                       strict=True):
            nucleus = store.get(object_id)
            assert nucleus.geometry.equals(disc(cx, cy, 20)), object_id
            assert nucleus.class_name == "nucleus" and nucleus.model == "wsi-sam"
            assert nucleus.prompt["labels"] == [1]
        ring = store.get(6).geometry
        assert ring.area == 300 * 300 - 100 * 100 and len(ring.interiors) == 1
        assert store.get(3).parent == 7 and store.get(2).parent == 1
        assert store.classes() == {"tumour": "#e41a1c", "nucleus": "#0000ff",
                                   "stroma": "#4daf4a"}
        assert store.get(1).score == 0.91
    assert (folder / BACKUP_DIR / "objects.json").is_file()
    assert not (folder / "objects.json").exists()
    assert (folder / BACKUP_DIR / "levels.zarr").is_dir()
    with open_slide(copy) as slide, open_store(slide) as again:  # once: now it just opens
        assert again.count() == 6


# ---------------------------------------------------------------------------- rasters
def nearest(store, name, shape, d):
    """What a level of downsample d must hold: level 0 sampled under each pixel centre,
    the latest change on top."""
    h, w = shape
    hk, wk = -(-h // d), -(-w // d)
    xs = np.minimum(np.floor((np.arange(wk) + 0.5) * d), w - 1) + 0.5
    ys = np.minimum(np.floor((np.arange(hk) + 0.5) * d), h - 1) + 0.5
    out = np.zeros((hk, wk), np.uint32)
    for obj in sorted(store.query((0, 0, w, h), classes=[name]), key=lambda o: o.edited):
        from napari_wsi_sam.polygons import rasterize

        out[rasterize(obj.geometry, xs, ys)] = obj.id
    return out


@pytest.fixture
def small_store(tmp_path):
    with ObjectStore.create(tmp_path / "objects.sqlite",
                            meta={"dimensions": [3000, 2000], "store_id": "s"}) as opened:
        yield opened


def test_rasters_are_level_zero_resampled_and_follow_every_change(small_store, tmp_path):
    store = small_store
    shape, downsamples = (2000, 3000), [1.0, 4.0, 16.0]
    rasters = ObjectRasters(store, shape=shape, downsamples=downsamples, chunk=512)
    region = store.add(box(100, 100, 1700, 1300), class_name="tumour")
    nuclei = [store.add(disc(300 + 200 * i, 600, 30), class_name="nucleus") for i in range(6)]
    overlap = store.add(box(1200, 800, 2600, 1900), class_name="tumour")
    rasters.sync()
    for name in ("tumour", "nucleus"):
        for level, d in enumerate((1, 4, 16)):
            np.testing.assert_array_equal(np.asarray(rasters.levels(name)[level][:]),
                                          nearest(store, name, shape, d))
    tumour0 = np.asarray(rasters.levels("tumour")[0][:])
    assert (tumour0 == overlap).sum() == 1400 * 1100  # the newest region on top
    assert (tumour0 == region).sum() == 1600 * 1200 - 500 * 500
    # Refine, re-class, delete, undo: each redraws only what it touched, correctly.
    store.refine(nuclei[0], disc(300, 600, 40))
    store.reclass([nuclei[1]], "tumour")
    store.delete([overlap])
    touched = rasters.sync()
    assert set(touched) == {"tumour", "nucleus"}
    store.undo()
    rasters.sync()
    for name in ("tumour", "nucleus"):
        for level, d in enumerate((1, 4, 16)):
            np.testing.assert_array_equal(np.asarray(rasters.levels(name)[level][:]),
                                          nearest(store, name, shape, d))
    # The rasters are a view: delete them and they come back the same.
    before = {n: [np.asarray(a[:]) for a in rasters.levels(n)] for n in ("tumour", "nucleus")}
    shutil.rmtree(rasters.folder)
    again = ObjectRasters(store, shape=shape, downsamples=downsamples, chunk=512)
    for name, levels in before.items():
        for a, b in zip(levels, again.levels(name), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b[:]))


def test_rasters_pick_up_changes_made_elsewhere(small_store):
    rasters = ObjectRasters(small_store, shape=(2000, 3000), downsamples=[1.0, 8.0])
    first = small_store.add(box(10, 10, 100, 100), class_name="a")
    rasters.sync()
    with ObjectStore.open(small_store.path) as other:
        second = other.add(box(200, 200, 300, 300), class_name="a")
    assert small_store.changed_elsewhere()
    assert rasters.sync() == {"a": [(200, 200, 300, 300)]}
    level0 = np.asarray(rasters.levels("a")[0][:])
    assert (level0 == first).sum() == 90 * 90 and (level0 == second).sum() == 100 * 100


def test_paint_matches_the_rasteriser_for_small_and_large_objects():
    from napari_wsi_sam.store.rendering import paint

    geoms = [disc(50, 50, 3), box(0, 0, 200, 120), disc(60, 40, 30)]
    ids = np.array([5, 6, 7])
    bounds = np.array([[int(v) for v in (g.bounds[0], g.bounds[1], np.ceil(g.bounds[2]),
                                         np.ceil(g.bounds[3]))] for g in geoms])
    xs, ys = np.arange(150) + 0.5, np.arange(100) + 0.5
    block = paint(ids, bounds, geoms, xs, ys, dtype=np.dtype("uint32"))
    expected = np.zeros((100, 150), np.uint32)
    for object_id, geometry in zip(ids, geoms, strict=True):
        mask, _ = geometry_to_mask(geometry, (0, 0, 150, 100))
        expected[mask] = object_id
    np.testing.assert_array_equal(block, expected)


def test_the_objects_command(sample_slide, tmp_path, capsys):
    from napari_wsi_sam.cli import main
    from napari_wsi_sam.formats import AnnotationObject, write_geojson

    ring = box(100, 100, 400, 400).difference(box(200, 200, 300, 300))
    source = tmp_path / "qupath.geojson"
    write_geojson([AnnotationObject(id=1, geometry=ring, class_name="DCIS",
                                    color=(152, 78, 163)),
                   AnnotationObject(id=2, geometry=box(150, 150, 180, 180))], source)
    labels = ["--labels", str(tmp_path / "store")]
    slide = str(sample_slide)
    assert main(["objects", "import", slide, str(source), *labels]) == 0
    assert "2 objects imported" in capsys.readouterr().out
    assert main(["objects", "info", slide, *labels]) == 0
    out = capsys.readouterr().out
    assert "2 objects" in out and "DCIS\t#984ea3\t1" in out and "imported\t" in out
    assert main(["objects", "export", slide, "--out", str(tmp_path / "o.geojson"),
                 "--classes", "DCIS", *labels]) == 0
    (exported,) = read_geojson(tmp_path / "o.geojson").objects
    assert exported.geometry.equals(ring)
    assert main(["objects", "check", slide, *labels]) == 0
    assert main(["objects", "rebuild", slide, *labels]) == 0
    assert "drew 2 class layers" in capsys.readouterr().out
    with ObjectStore.open(tmp_path / "store" / "objects.sqlite") as store:
        store.delete([2])
    assert main(["objects", "purge", slide, *labels]) == 0
    assert "1 deleted objects removed" in capsys.readouterr().out
    assert main(["objects", "import", slide, str(tmp_path / "none.geojson"), *labels]) == 2
