"""The persistent label pyramid: levels, undo, crash recovery, touched chunks, real slides."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_wsi_sam.annotations import label_ops
from napari_wsi_sam.annotations.labels import LabelStore, default_folder
from napari_wsi_sam.errors import LabelStoreError, WsiSamError
from napari_wsi_sam.slide import open_slide

SMALL = {"shape": (70, 90), "downsamples": [1.0, 2.0, 4.0003], "chunk": 16}


def src_index(n_level: int, d: float, n0: int) -> np.ndarray:
    """Level-0 pixel under each level pixel's centre (the documented nearest rule)."""
    return np.minimum(np.floor((np.arange(n_level) + 0.5) * d).astype(int), n0 - 1)


def model_levels(level0: np.ndarray, downsamples: list[float]) -> list[np.ndarray]:
    """Every level of a store whose level 0 is `level0`."""
    h, w = level0.shape
    out = []
    for d in downsamples:
        hk, wk = math.ceil(h / d), math.ceil(w / d)
        out.append(level0[np.ix_(src_index(hk, d, h), src_index(wk, d, w))])
    return out


def all_levels(store: LabelStore) -> list[np.ndarray]:
    return [np.asarray(a[:]) for a in store.levels]


def disc(h: int, w: int, *, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 < r * r


def chunk_files(folder: Path) -> dict[str, int]:
    """Chunk file -> mtime (ns) of every chunk of every level."""
    root = folder / "levels.zarr"
    return {str(p.relative_to(root)): p.stat().st_mtime_ns
            for p in root.rglob("*") if p.is_file() and "/c/" in str(p.relative_to(root)) + "/"
            and p.name != "zarr.json"}


# -- basics -----------------------------------------------------------------------------------
def test_create_add_reopen_restores_everything(tmp_path):
    store = LabelStore.create(tmp_path / "s", slide_path="/x/slide.svs", mpp=(0.5, 0.5), **SMALL)
    assert store.level_shapes == [(70, 90), (35, 45), (18, 23)]
    assert all(a.chunks == (16, 16) for a in store.levels) and store.dtype == np.uint32
    mask = disc(20, 30, cy=10, cx=15, r=9)
    oid = store.add_object(mask, (5, 7, 35, 27), class_name="tumor", color=(255, 0, 0),
                           model="wsi-sam-tiny", score=0.93, prompt={"box": [5, 7, 35, 27]})
    assert oid == 1
    before = all_levels(store)
    again = LabelStore.open(tmp_path / "s")
    rec = again.objects[1]
    assert (rec.class_name, rec.color, rec.model, rec.score) == ("tumor", (255, 0, 0),
                                                               "wsi-sam-tiny", 0.93)
    assert rec.prompt == {"box": [5, 7, 35, 27]} and rec.area == int(mask.sum())
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    tight = (5 + cols[0], 7 + rows[0], 5 + cols[-1] + 1, 7 + rows[-1] + 1)
    assert rec.window == tight  # tightened to the mask's True pixels
    assert again.mpp == (0.5, 0.5) and again.slide_path == "/x/slide.svs" and again.next_id == 2
    for a, b in zip(before, all_levels(again), strict=True):
        np.testing.assert_array_equal(a, b)
    full = np.zeros((70, 90), np.uint32)
    full[7:27, 5:35][mask] = 1
    for got, want in zip(before, model_levels(full, SMALL["downsamples"]), strict=True):
        np.testing.assert_array_equal(got, want)
    got_mask, window = again.object_mask(1)
    np.testing.assert_array_equal(got_mask, full[tight[1]:tight[3], tight[0]:tight[2]] == 1)
    assert window == tight
    np.testing.assert_array_equal(again.read_window(1, (0, 0, 45, 35)), before[1])


def test_undo_gives_back_the_older_object_and_ids_are_never_reused(tmp_path):
    store = LabelStore.create(tmp_path / "s", **SMALL)
    a = store.add_object(np.ones((40, 40), bool), (10, 10, 50, 50))
    b = store.add_object(disc(30, 30, cy=15, cx=15, r=14), (30, 30, 60, 60))
    assert (a, b) == (1, 2)
    snapshot = all_levels(store)
    store.undo()
    only_a = np.zeros((70, 90), np.uint32)
    only_a[10:50, 10:50] = 1
    for got, want in zip(all_levels(store), model_levels(only_a, SMALL["downsamples"]),
                         strict=True):
        np.testing.assert_array_equal(got, want)
    assert list(store.objects) == [1]
    c = store.add_object(disc(30, 30, cy=15, cx=15, r=14), (30, 30, 60, 60))
    assert c == 3
    for got, want in zip(all_levels(store), snapshot, strict=True):
        np.testing.assert_array_equal(got, np.where(want == 2, 3, want))
    assert LabelStore.open(tmp_path / "s").next_id == 4
    assert store.undo() == 3 and store.undo() == 1 and store.undo() is None
    assert all(not a.any() for a in all_levels(store))
    assert not any((tmp_path / "s" / "levels.zarr" / "0" / "c").rglob("*.*"))


def test_remove_object_in_the_middle_equals_never_drawing_it(tmp_path):
    store = LabelStore.create(tmp_path / "s", **SMALL)
    boxes = [(0, 0, 40, 40), (20, 20, 60, 60), (30, 10, 80, 50)]
    for x0, y0, x1, y1 in boxes:
        store.add_object(np.ones((y1 - y0, x1 - x0), bool), (x0, y0, x1, y1))
    store.remove_object(2)
    store.undo()  # removes 3: must give back 1 where 1 was under 2, not the removed 2
    want = np.zeros((70, 90), np.uint32)
    want[0:40, 0:40] = 1
    for got, exp in zip(all_levels(store), model_levels(want, SMALL["downsamples"]), strict=True):
        np.testing.assert_array_equal(got, exp)


def test_one_line_errors(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(LabelStoreError, match="not a napari-wsi-sam label store"):
        LabelStore.open(tmp_path / "plain")
    store = LabelStore.create(tmp_path / "s", **SMALL)
    with pytest.raises(LabelStoreError, match=r"mask shape \(10, 10\) does not match window"):
        store.add_object(np.ones((10, 10), bool), (0, 0, 20, 10))
    with pytest.raises(LabelStoreError, match="lies off the slide"):
        store.add_object(np.ones((10, 10), bool), (85, 0, 95, 10))
    with pytest.raises(LabelStoreError, match="is empty"):
        store.add_object(np.zeros((10, 10), bool), (0, 0, 10, 10))
    with pytest.raises(LabelStoreError, match="no object 7"):
        store.object_mask(7)
    with pytest.raises(WsiSamError, match="already holds a label store"):
        LabelStore.create(tmp_path / "s", **SMALL)
    with pytest.raises(ValueError, match="not JSON"):
        store.add_object(np.ones((2, 2), bool), (0, 0, 2, 2), prompt={"x": object()})
    assert store.objects == {} and store.next_id == 1


# -- touched chunks and crash safety --------------------------------------------------------
def test_add_and_undo_write_only_the_touched_chunks(tmp_path):
    store = LabelStore.create(tmp_path / "s", **SMALL)
    store.add_object(np.ones((70, 90), bool), (0, 0, 90, 70))  # every chunk exists
    files = chunk_files(tmp_path / "s")
    for name in files:
        os.utime(tmp_path / "s" / "levels.zarr" / name, ns=(10**9, 10**9))
    mask = np.zeros((30, 30), bool)
    mask[2:5, 2:5] = True  # level 0 chunk (0, 0) only, although the window spans 4 chunks
    mask[25:28, 25:28] = True  # and chunk (1, 1)
    store.add_object(mask, (5, 5, 35, 35))
    written = {n for n, t in chunk_files(tmp_path / "s").items() if t != 10**9}
    plans = label_ops.plan_levels(mask[2:28, 2:28], (7, 7, 33, 33), shapes=store.level_shapes,
                                  downsamples=store.downsamples, chunk=16)
    expect = {f"{p.level}/c/{r}/{c}" for p in plans for r, c in p.chunks}
    assert "0/c/0/0" in expect and "0/c/0/1" not in expect and "0/c/1/1" in expect
    assert written == expect
    for name in files:
        os.utime(tmp_path / "s" / "levels.zarr" / name, ns=(10**9, 10**9))
    store.undo()
    assert {n for n, t in chunk_files(tmp_path / "s").items() if t != 10**9} == expect


def test_crash_after_level0_rolls_back_on_reopen(tmp_path, monkeypatch):
    store = LabelStore.create(tmp_path / "s", **SMALL)
    store.add_object(np.ones((30, 30), bool), (10, 10, 40, 40))
    before = all_levels(store)
    write = store._write_level

    def crash_after_level0(plan, undo, object_id):
        if plan.level == 1:
            raise KeyboardInterrupt("simulated crash")
        write(plan, undo, object_id)

    monkeypatch.setattr(store, "_write_level", crash_after_level0)
    monkeypatch.setattr(store, "_recover", lambda: None)  # a dead process recovers nothing
    with pytest.raises(KeyboardInterrupt):
        store.add_object(np.ones((40, 40), bool), (20, 20, 60, 60))
    assert (tmp_path / "s" / "pending.json").exists()
    assert not np.array_equal(np.asarray(store.levels[0][:]), before[0])  # half-written
    again = LabelStore.open(tmp_path / "s")
    for got, want in zip(all_levels(again), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert list(again.objects) == [1] and again.next_id == 3
    assert not (tmp_path / "s" / "pending.json").exists()
    assert [p.name for p in (tmp_path / "s" / "undo").iterdir()] == ["1.npz"]


def test_failed_add_rolls_back_in_process(tmp_path, monkeypatch):
    store = LabelStore.create(tmp_path / "s", **SMALL)
    store.add_object(np.ones((30, 30), bool), (10, 10, 40, 40))
    before = all_levels(store)

    def disk_full(*_args):
        raise OSError("no space left on device")

    monkeypatch.setattr(store, "_save_table", disk_full)
    with pytest.raises(OSError, match="no space"):
        store.add_object(np.ones((40, 40), bool), (20, 20, 60, 60))
    monkeypatch.undo()
    for got, want in zip(all_levels(store), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert list(store.objects) == [1]


def test_crash_during_remove_is_finished_on_reopen(tmp_path, monkeypatch):
    store = LabelStore.create(tmp_path / "s", **SMALL)
    store.add_object(np.ones((30, 30), bool), (10, 10, 40, 40))
    store.add_object(np.ones((30, 30), bool), (20, 20, 50, 50))
    monkeypatch.setattr(store, "_save_table", lambda: (_ for _ in ()).throw(SystemExit(1)))
    with pytest.raises(SystemExit):
        store.undo()
    again = LabelStore.open(tmp_path / "s")
    want = np.zeros((70, 90), np.uint32)
    want[10:40, 10:40] = 1
    for got, exp in zip(all_levels(again), model_levels(want, SMALL["downsamples"]), strict=True):
        np.testing.assert_array_equal(got, exp)
    assert list(again.objects) == [1]


# -- property: any add/remove sequence equals replaying the remaining objects ----------------
ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 89), st.integers(0, 69), st.integers(1, 40),
              st.integers(1, 40), st.integers(0, 2**31)),
    st.tuples(st.just("undo")),
    st.tuples(st.just("remove"), st.integers(0, 50))), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_random_add_undo_remove_match_a_numpy_model(sequence):
    with tempfile.TemporaryDirectory() as tmp:
        store = LabelStore.create(Path(tmp) / "s", **SMALL)
        drawn: dict[int, tuple[np.ndarray, tuple[int, int, int, int]]] = {}
        for op in sequence:
            if op[0] == "add":
                _, x0, y0, w, h, seed = op
                x1, y1 = min(x0 + w, 90), min(y0 + h, 70)
                mask = np.random.default_rng(seed).random((y1 - y0, x1 - x0)) < 0.6
                if not mask.any():
                    continue
                oid = store.add_object(mask, (x0, y0, x1, y1))
                drawn[oid] = (mask, (x0, y0, x1, y1))
            elif op[0] == "undo":
                gone = store.undo()
                if gone is not None:
                    del drawn[gone]
            elif drawn:
                victim = sorted(drawn)[op[1] % len(drawn)]
                store.remove_object(victim)
                del drawn[victim]
        level0 = np.zeros((70, 90), np.uint32)
        for oid, (mask, (x0, y0, x1, y1)) in sorted(drawn.items()):
            level0[y0:y1, x0:x1][mask] = oid
        reopened = LabelStore.open(Path(tmp) / "s")
        for got, want in zip(all_levels(reopened), model_levels(level0, SMALL["downsamples"]),
                             strict=True):
            np.testing.assert_array_equal(got, want)
        assert sorted(reopened.objects) == sorted(drawn)


# -- real and very large slides -----------------------------------------------------------------
def test_real_slide_store_beside_the_slide(tmp_path, sample_slide, monkeypatch):
    copy = Path(shutil.copy(sample_slide, tmp_path / "cmu.svs"))
    with open_slide(copy) as slide:
        store = LabelStore.for_slide(slide)
        assert store.folder == tmp_path / "cmu.wsi-sam"
        w, h = slide.dimensions
        assert store.shape == (h, w) and store.downsamples == slide.downsamples
        assert store.level_shapes == [(math.ceil(h / d), math.ceil(w / d))
                                      for d in slide.downsamples]
        assert store.mpp == slide.mpp and store.slide_path == str(copy.resolve())
        mask = disc(600, 800, cy=300, cx=400, r=290)
        oid = store.add_object(mask, (w // 2 - 400, h // 2 - 300, w // 2 + 400, h // 2 + 300),
                               class_name="tumor", model="wsi-sam")
        again = LabelStore.for_slide(slide)
        assert list(again.objects) == [oid]
        got, window = again.object_mask(oid)
        assert got.sum() == mask.sum() and window[2] - window[0] == 580
    (tmp_path / "other").mkdir()
    blocked = Path(shutil.copy(sample_slide, tmp_path / "other" / "cmu.svs"))
    (tmp_path / "other" / "cmu.wsi-sam").write_text("a file, not a folder")
    monkeypatch.setenv("NAPARI_WSI_SAM_HOME", str(tmp_path / "cache"))
    fallback = default_folder(blocked)
    assert fallback.parent == tmp_path / "cache" / "labels" and fallback.name.endswith(".wsi-sam")


@pytest.mark.slow
def test_100k_slide_add_is_memory_bounded_and_writes_only_touched_chunks(tmp_path):
    from slide_factory import make_pyramid

    path = make_pyramid(tmp_path / "big.svs", width=100_000, height=100_000)
    with open_slide(path) as slide:
        store = LabelStore.for_slide(slide)
    assert len(store.levels) >= 4 and store.shape == (100_000, 100_000)
    size = sum(p.stat().st_size for p in store.folder.rglob("*") if p.is_file())
    assert size < 100_000
    proc = psutil.Process()
    rss = proc.memory_info().rss
    mask = disc(4000, 4000, cy=2000, cx=2000, r=2000)
    oid = store.add_object(mask, (50_100, 30_200, 54_100, 34_200))
    assert proc.memory_info().rss - rss < 300e6
    plans = label_ops.plan_levels(mask, (50_100, 30_200, 54_100, 34_200),
                                  shapes=store.level_shapes, downsamples=store.downsamples,
                                  chunk=store.chunk)
    expect = {f"{p.level}/c/{r}/{c}" for p in plans for r, c in p.chunks}
    assert set(chunk_files(store.folder)) == expect
    level0 = sorted(n for n in expect if n.startswith("0/"))
    assert 20 <= len(level0) < 25  # the window spans 5x5 chunks; the disc misses some corners
    got, _ = store.object_mask(oid)
    assert got.sum() == mask.sum()
    store.undo()
    assert chunk_files(store.folder) == {}


def test_object_masks_read_in_groups_equal_one_by_one(tmp_path):
    store = LabelStore.create(tmp_path / "s", shape=(3000, 3000), downsamples=[1.0, 4.0],
                              chunk=512, durable=False)
    rng = np.random.default_rng(0)
    for _ in range(30):
        x0, y0 = (int(v) for v in rng.integers(0, 2900, 2))
        w, h = (int(v) for v in rng.integers(5, 90, 2))
        mask = rng.random((min(h, 3000 - y0), min(w, 3000 - x0))) > 0.3
        mask[0, 0] = True
        store.add_object(mask, (x0, y0, x0 + mask.shape[1], y0 + mask.shape[0]))
    grouped = store.object_masks()
    assert [i for i, _, _ in grouped] == list(store.objects)
    for object_id, mask, window in grouped:
        alone, alone_window = store.object_mask(object_id)
        assert window == alone_window
        np.testing.assert_array_equal(mask, alone)
