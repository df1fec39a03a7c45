"""Hostile input, generated: damaged slide bytes, junk GeoJSON, wild CLI numbers and random
session requests. The property everywhere: it works, or it fails with one line that names
the problem (exit status 2 on the CLI), never a traceback, and nothing already stored changes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from napari_wsi_sam.cli import main
from napari_wsi_sam.errors import SlideError
from napari_wsi_sam.session import (
    AnnotationSession,
    BoxRequest,
    DeleteRequest,
    ImportRequest,
    PointRequest,
    ReclassRequest,
    UndoRequest,
)
from napari_wsi_sam.slide import open_slide
from napari_wsi_sam.store import ObjectStore


def fuzz(examples: int) -> settings:
    """Reproducible runs (the same examples each time, no example database), no deadline."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def run_cli(argv: list[str]) -> tuple[int, str]:
    """`napari-wsi-sam ARGV` in this process: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse usage errors
            code = int(exit_.code or 0)
    return code, err.getvalue()


def assert_clean_failure(code: int, stderr: str) -> None:
    """Exit 0, or exit 2 whose last stderr line is our one-line error; never a traceback."""
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert code in (0, 2), stderr
    if code == 2:
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("napari-wsi-sam") and "error:" in last, stderr


def store_state(folder: Path) -> tuple:
    """What a user made: every live object's id, version and class, and the classes."""
    path = folder / "objects.sqlite"
    if not path.exists():
        return ()
    with ObjectStore.open(path) as store:
        return (tuple((o.id, o.version, o.class_name) for o in store.iter_live()),
                tuple(sorted(store.classes().items())))


# -- damaged slides ----------------------------------------------------------------------------
def _damaged_copy(asset_path, tmp_path_factory, data, names: list[str]) -> Path:
    """A real slide with up to 12 bytes changed and perhaps cut short, drawn by hypothesis."""
    name = data.draw(st.sampled_from(names), label="slide")
    raw = bytearray(asset_path(name).read_bytes())
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)),
                               min_size=1, max_size=12), label="byte edits")
    for offset, value in edits:
        raw[offset] = value
    cut = data.draw(st.none() | st.integers(8, len(raw)), label="cut at")
    path = tmp_path_factory.mktemp("damaged") / name
    path.write_bytes(bytes(raw[:cut]))
    return path


def _read_every_level_or_one_line(path: Path, **options) -> None:
    try:
        with open_slide(path, **options) as slide:
            for level in range(slide.level_count):
                width, height = slide.level_dimensions[level]
                slide.read_window(level, x0=0, y0=0, x1=min(width, 2048),
                                  y1=min(height, 2048))
    except SlideError as error:
        assert "\n" not in str(error) and path.name in str(error)


@fuzz(200)
@given(data=st.data())
def test_damaged_slide_bytes_fail_as_one_line(asset_path, tmp_path_factory, data):
    path = _damaged_copy(asset_path, tmp_path_factory, data, ["small.svs", "boxes.tiff"])
    _read_every_level_or_one_line(path, mpp=0.5)
    assert_clean_failure(*run_cli(["info", str(path)]))


@pytest.mark.slow  # a hundred damaged files through OpenSlide's C code, in process
@fuzz(100)
@given(data=st.data())
def test_damaged_slide_bytes_fail_as_one_line_through_openslide(asset_path, tmp_path_factory,
                                                                data):
    """The same damage forced through OpenSlide (and DICOM, which only OpenSlide reads):
    found a damaged SVS whose property list names a key OpenSlide cannot return."""
    path = _damaged_copy(asset_path, tmp_path_factory, data,
                         ["small.svs", "boxes.tiff", "boxes_0.dcm"])
    _read_every_level_or_one_line(path, backend="openslide")


# -- GeoJSON -------------------------------------------------------------------------------------
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(-10**12, 10**12), st.floats(0, 3000))
POSITIONS = st.lists(NUMBERS, min_size=0, max_size=3)
RINGS = st.lists(POSITIONS, min_size=0, max_size=6)
JUNK = st.recursive(st.none() | st.booleans() | NUMBERS | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
GEOMETRIES = st.fixed_dictionaries({
    "type": st.sampled_from(["Polygon", "MultiPolygon", "Point", "LineString",
                             "GeometryCollection", "Nonsense"]),
    "coordinates": st.one_of(st.lists(RINGS, max_size=3), st.lists(st.lists(RINGS, max_size=2),
                                                                   max_size=2), JUNK)})
FEATURES = st.fixed_dictionaries({
    "type": st.sampled_from(["Feature", "feature", "Thing"]),
    "geometry": GEOMETRIES | JUNK,
    "properties": st.one_of(JUNK, st.fixed_dictionaries({
        "classification": st.one_of(JUNK, st.fixed_dictionaries(
            {"name": JUNK | st.text(max_size=12), "color": JUNK | st.lists(NUMBERS, max_size=4)}
        ))}))})
DOCUMENTS = st.one_of(
    st.fixed_dictionaries({"type": st.just("FeatureCollection"),
                           "features": st.lists(FEATURES | JUNK, max_size=4)}),
    FEATURES, st.lists(FEATURES, max_size=3), JUNK)


def _dump(document) -> str:
    return json.dumps(document, allow_nan=True)


@fuzz(150)
@given(document=DOCUMENTS)
def test_junk_geojson_imports_or_fails_as_one_line_and_keeps_the_store(sample_slide,
                                                                       tmp_path_factory,
                                                                       document):
    folder = tmp_path_factory.mktemp("import")
    labels = folder / "labels"
    valid = folder / "valid.geojson"
    ring = [[100, 100], [160, 100], [160, 170], [100, 170], [100, 100]]
    valid.write_text(_dump({"type": "Feature", "properties": {},
                            "geometry": {"type": "Polygon", "coordinates": [ring]}}))
    assert run_cli(["objects", "import", str(sample_slide), str(valid),
                    "--labels", str(labels)])[0] == 0
    before = store_state(labels)
    junk = folder / "junk.geojson"
    junk.write_text(_dump(document))
    code, stderr = run_cli(["objects", "import", str(sample_slide), str(junk),
                            "--labels", str(labels)])
    event(f"exit {code}")
    assert_clean_failure(code, stderr)
    after = store_state(labels)
    if code != 0:
        assert after == before
    else:
        assert after[0][: len(before[0])] == before[0]  # imported objects only add


# -- CLI numbers ---------------------------------------------------------------------------------
WILD = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                 st.integers(-10**15, 10**15).map(str),
                 st.floats(-100, 3000).map(lambda v: f"{v:.1f}"),
                 st.sampled_from(["", "x", "1e309", "-0", "0x10", "1_000", "٣"]))


def plausible_boxes(low: float, high: float) -> st.SearchStrategy[list[float]]:
    """Boxes that may be good ones: corner in [low, high], 8..400 px, now and then inverted."""
    def box(x: float, y: float, w: float, h: float, flip: bool) -> list[float]:
        return [x + w, y, x, y + h] if flip else [x, y, x + w, y + h]
    size = st.floats(8, 400)
    return st.builds(box, st.floats(low, high), st.floats(low, high), size, size,
                     st.sampled_from([False, False, False, True]))


def maybe_wild(value: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    """Mostly left out (the default), sometimes a wild value."""
    return st.sampled_from([None, None, "wild"]).flatmap(
        lambda kind: value if kind == "wild" else st.none())


@pytest.mark.slow
@fuzz(60)
@given(box=st.lists(WILD, min_size=4, max_size=4)
       | plausible_boxes(-200, 3200).map(lambda b: [f"{v:.1f}" for v in b]),
       point=maybe_wild(st.lists(WILD, min_size=2, max_size=2)),
       hr_mpp=maybe_wild(WILD), mpp=maybe_wild(WILD))
def test_wild_segment_numbers_fail_as_one_line(sample_slide, tmp_path_factory, box, point,
                                               hr_mpp, mpp):
    folder = tmp_path_factory.mktemp("segment")
    argv = ["segment", str(sample_slide), "--model", "sam", "--device", "cpu",
            "--box", *box,
            "--labels", str(folder / "labels"), "--out", str(folder / "out.geojson")]
    if point is not None:
        argv += ["--point", *point]
    if hr_mpp is not None:
        argv.append(f"--hr-mpp={hr_mpp}")
    if mpp is not None:
        argv.append(f"--mpp={mpp}")
    code, stderr = run_cli(argv)
    event(f"exit {code}")
    assert_clean_failure(code, stderr)
    if code != 0:
        assert store_state(folder / "labels") in ((), ((), ()))
        assert not (folder / "out.geojson").exists()


# -- the annotation session ----------------------------------------------------------------------
COORD = st.one_of(st.floats(-500, 3500), st.floats(allow_nan=True, allow_infinity=True),
                  st.integers(-10**10, 10**10).map(float))
REQUESTS = st.one_of(
    st.builds(lambda b: BoxRequest(np.asarray(b, dtype=float)),
              st.lists(COORD, min_size=4, max_size=4) | plausible_boxes(-200, 3200)),
    st.builds(PointRequest, COORD, COORD, st.booleans()),
    st.builds(ReclassRequest, st.lists(st.integers(-3, 12), max_size=3).map(tuple),
              st.text(max_size=20)),
    st.builds(DeleteRequest, st.lists(st.integers(-3, 12), max_size=3).map(tuple)),
    st.builds(UndoRequest, redo=st.booleans()),
)


@pytest.fixture(scope="module")
def hostile_session(sample_slide, tmp_path_factory):
    copy = tmp_path_factory.mktemp("session") / sample_slide.name
    shutil.copy(sample_slide, copy)
    session = AnnotationSession.open(copy, device="cpu")
    yield session
    session.close()


def _session_state(session: AnnotationSession) -> tuple:
    return (tuple((o.id, o.version, o.class_name) for o in session.store.iter_live()),
            tuple(sorted(session.store.classes().items())))


@pytest.mark.slow
@fuzz(40)
@given(requests=st.lists(REQUESTS, min_size=1, max_size=4),
       geojson=st.none() | DOCUMENTS)
def test_random_session_requests_fail_as_one_line_and_change_nothing(hostile_session,
                                                                     tmp_path_factory,
                                                                     requests, geojson):
    session = hostile_session
    if geojson is not None:
        path = tmp_path_factory.mktemp("session-import") / "objects.geojson"
        path.write_text(_dump(geojson))
        requests = [*requests, ImportRequest(path)]
    for request in requests:
        before = _session_state(session)
        for outcome in session.run(request):
            assert outcome.message and "\n" not in outcome.message, outcome.message
            event(f"{type(request).__name__} {'error' if outcome.error else 'done'}")
            if outcome.error:
                assert _session_state(session) == before, outcome.message


# -- memory ----------------------------------------------------------------------------------------
def _one_crop_prompts(folder: Path, count: int) -> Path:
    """`count` small boxes that all share one crop: one encoder pass, `count` decoder prompts."""
    rng = np.random.default_rng(count)
    features = []
    for _ in range(count):
        x, y = rng.uniform(1000, 1300), rng.uniform(1400, 1700)
        features.append(_polygon(x, y, x + 24, y + 24))
    prompts = folder / f"{count}.geojson"
    prompts.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return prompts


def _segment_watched(slide: Path, folder: Path, count: int, *,
                     kill_after: int | None = None) -> tuple[int, int]:
    """Run `segment --prompts` over `count` one-crop boxes in a subprocess, sampling its
    resident memory; with `kill_after`, kill -9 it once that many objects are reported.
    Returns (peak RSS bytes, objects reported done)."""
    command = [str(Path(sys.executable).with_name("napari-wsi-sam")), "segment", str(slide),
               "--prompts", str(_one_crop_prompts(folder, count)), "--model", "sam",
               "--device", "cpu", "--labels", str(folder / f"labels{count}"),
               "--out", str(folder / f"out{count}.geojson")]
    log = folder / f"stderr{count}.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        watched, peak, done = psutil.Process(process.pid), 0, 0
        while process.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, watched.memory_info().rss)
            done = log.read_text().count("] object ")
            if kill_after is not None and done >= kill_after:
                process.kill()
                process.wait()
                break
            time.sleep(0.05)
    if kill_after is None:
        assert process.returncode == 0, log.read_text()[-2000:]
    return peak, log.read_text().count("] object ")


@pytest.mark.slow
def test_five_times_the_prompts_on_one_crop_use_no_more_memory(sample_slide, tmp_path):
    """Decoder batches are bounded and each object is stored when done, so memory does not
    grow with the number of prompts (measured: about 1.2 GB for 100 or 400 prompts)."""
    small, _ = _segment_watched(sample_slide, tmp_path, 50)
    large, done = _segment_watched(sample_slide, tmp_path, 250)  # 16 decoder batches, not 4
    assert large < small + 256 * 2**20, (small >> 20, large >> 20)
    with ObjectStore.open(tmp_path / "labels250" / "objects.sqlite") as store:
        assert store.count() == done > 225  # a few tiny boxes on bare glass give no object


@pytest.mark.slow
def test_fifty_thousand_prompts_start_at_once_in_bounded_memory_and_survive_a_kill(
        sample_slide, tmp_path):
    """50,000 prompts: objects are stored from the first batches on, under 2 GB, and a kill -9
    loses none of those reported done."""
    peak, done = _segment_watched(sample_slide, tmp_path, 50_000, kill_after=100)
    assert peak < 2 * 2**30, peak >> 20
    with ObjectStore.open(tmp_path / "labels50000" / "objects.sqlite") as store:
        assert store.count() >= done >= 100
        store.integrity_check()  # raises StoreError on any damage


# -- each case of the hardening issue ------------------------------------------------------------
def _polygon(x0: float, y0: float, x1: float, y1: float) -> dict:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Feature", "properties": {},
            "geometry": {"type": "Polygon", "coordinates": [ring]}}


def _hostile_argv(case: str, slide: Path, tmp_path: Path) -> list[str]:
    deep = tmp_path / "deep.geojson"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    out, labels = str(tmp_path / "out.geojson"), str(tmp_path / "labels")
    (tmp_path / "afile").write_text("not a folder")
    segment = ["segment", str(slide), "--model", "sam", "--device", "cpu"]
    box = ["--box", "1185", "1980", "1345", "2185"]
    return {
        "box near 1e308": [*segment, "--box", "0", "0", "1e308", "1e308", "--out", out],
        "point far outside its box": [*segment, *box, "--point", "2100", "2900", "--out", out],
        "point outside the slide": [*segment, *box, "--point", "90000", "90000", "--out", out],
        "JSON nested 200,000 deep": [*segment, "--prompts", str(deep), "--out", out],
        "--hr-mpp 1e12": [*segment, *box, "--hr-mpp", "1e12", "--out", out],
        "--mpp 1e-12": [*segment, *box, "--mpp", "1e-12", "--out", out],
        "crops --size 100000": ["crops", str(slide), *box, "--size", "100000", "--out",
                                str(tmp_path)],
        "--out a folder": [*segment, *box, "--out", str(tmp_path)],
        "--out on a read-only file system": [*segment, *box, "--out", "/proc/out.geojson"],
        "--labels a file": [*segment, *box, "--out", out, "--labels", str(tmp_path / "afile")],
        "unknown model": ["segment", str(slide), "--model", "hq-sam", *box, "--out", out],
    }[case] + ([] if case.startswith(("crops", "--labels")) else ["--labels", labels])


@pytest.mark.parametrize(("case", "expected"), [
    ("box near 1e308", "lies beyond any slide"),
    ("point far outside its box", "far outside its box"),
    ("point outside the slide", "lies outside the 2220x2967 px slide"),
    ("JSON nested 200,000 deep", "nests its JSON too deeply"),
    ("--hr-mpp 1e12", "must lie in 0.05..16"),
    ("--mpp 1e-12", "must lie in 0.01..100"),
    ("crops --size 100000", "crop size (px) must lie in 16..4096"),
    ("--out a folder", "is a folder; give a file name"),
    ("--out on a read-only file system", "cannot write /proc/out.geojson"),
    ("--labels a file", "is a file; give the folder"),
    ("unknown model", "invalid choice: 'hq-sam'"),
])
def test_each_hostile_case_is_one_line_before_any_model_loads(case, expected, sample_slide,
                                                              tmp_path, monkeypatch):
    from napari_wsi_sam.model import build

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(build, "build_predictor", no_model)
    code, stderr = run_cli(_hostile_argv(case, sample_slide, tmp_path))
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert expected in stderr and "error:" in stderr
    assert store_state(tmp_path / "labels") in ((), ((), ()))
    assert not (tmp_path / "out.geojson").exists()


@pytest.mark.slow
def test_bad_features_are_skipped_by_name_and_huge_ones_cut_to_the_slide(sample_slide,
                                                                          tmp_path):
    prompts = tmp_path / "mixed.geojson"
    prompts.write_text(json.dumps({"type": "FeatureCollection", "features": [
        _polygon(0, 0, 1e300, 1e300),                  # skipped: no slide is that large
        _polygon(-10**6, -10**6, 10**6, 10**6),        # cut to the slide
        _polygon(-100, -100, 150, 120),                # mostly off the slide: cut
        _polygon(1e7, 1e7, 1e7 + 50, 1e7 + 50),        # wholly off the slide: no object
    ]}))
    out, labels = tmp_path / "out.geojson", tmp_path / "labels"
    code, stderr = run_cli(["segment", str(sample_slide), "--prompts", str(prompts),
                            "--model", "sam", "--device", "cpu", "--labels", str(labels),
                            "--out", str(out)])
    assert code == 0, stderr
    assert "skipped feature id=1" in stderr and "lies beyond any slide" in stderr
    assert "no object: item 2 (feature id=4)" in stderr and "lies outside" in stderr
    with ObjectStore.open(labels / "objects.sqlite") as store:
        objects = list(store.iter_live())
        assert len(objects) == 2
        for obj in objects:
            x0, y0, x1, y1 = obj.bounds
            assert x0 >= 0 and y0 >= 0 and x1 <= 2220 and y1 <= 2967


@pytest.mark.slow
def test_a_full_disk_at_export_keeps_the_objects_and_says_where(sample_slide, tmp_path,
                                                                monkeypatch):
    """The export fails as on a full disk (ENOSPC at the final rename): one line, the objects
    of the run stay in the store, no partial file is left."""
    import errno
    import os

    from napari_wsi_sam.formats import file_io

    real_replace = os.replace

    def full_disk(src, dst, *args, **kwargs):
        if str(dst).endswith("out.geojson"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(file_io.os, "replace", full_disk)
    labels, out = tmp_path / "labels", tmp_path / "out.geojson"
    code, stderr = run_cli(["segment", str(sample_slide), "--box", "1185", "1980", "1345",
                            "2185", "--model", "sam", "--device", "cpu", "--labels",
                            str(labels), "--out", str(out)])
    last = stderr.strip().splitlines()[-1]
    assert code == 2 and "No space left on device" in last
    assert "the 1 objects of this run are kept in" in last
    assert not out.exists() and not list(tmp_path.glob(".out.geojson.*"))
    assert len(store_state(labels)[0]) == 1


@pytest.mark.parametrize("loader", ["head", "sam-decoder", "weights"])
def test_crafted_checkpoints_run_no_code(loader, tmp_path, asset_path):
    import torch

    from napari_wsi_sam.errors import WeightsError
    from napari_wsi_sam.model.decoder_checkpoint import load_sam_decoder
    from napari_wsi_sam.model.head_checkpoint import load_head
    from napari_wsi_sam.model.sam import load_sam
    from test_train import _Payload

    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": "napari-wsi-sam-head", "settings": {}, "state_dict": _Payload(marker)},
               crafted)
    load = {"head": lambda: load_head(crafted),
            "sam-decoder": lambda: load_sam_decoder(crafted),
            "weights": lambda: load_sam("mobile_sam", checkpoint=crafted)}[loader]
    with pytest.raises(WeightsError) as caught:
        load()
    assert not marker.exists() and "\n" not in str(caught.value)


# -- slide paths that are not slide files ------------------------------------------------------
def _odd_slide_path(kind: str, tmp_path: Path) -> Path:
    if kind == "fifo":
        path = tmp_path / "slide.svs"
        os.mkfifo(path)
    elif kind == "device":
        path = Path("/dev/null")
    elif kind == "directory":
        path = tmp_path / "notes.zarr"
        path.mkdir()
        (path / "readme.txt").write_text("not a slide")
    else:  # a symlink loop
        path = tmp_path / "loop.svs"
        path.symlink_to(tmp_path / "loop2.svs")
        (tmp_path / "loop2.svs").symlink_to(path)
    return path


ODD_SLIDES = [("fifo", "is a named pipe (FIFO), not a slide file"),
              ("device", "is a device, not a slide file"),
              ("directory", "is a directory without an OME-Zarr image"),
              ("symlink loop", "is a symlink loop")]


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs, /dev/null and symlinks: POSIX")
@pytest.mark.parametrize(("kind", "expected", "command"), [
    *[(kind, expected, ["info"]) for kind, expected in ODD_SLIDES],
    (*ODD_SLIDES[0], ["objects", "import"]), (*ODD_SLIDES[0], ["segment"]),
    (*ODD_SLIDES[3], ["objects", "import"])])
def test_a_slide_path_that_is_no_slide_file_is_one_line_at_once(kind, expected, command,
                                                                 tmp_path):
    """A FIFO, a device, a non-Zarr folder or a symlink loop given as the slide: exit 2 with
    one line, in a real process (opening a FIFO would hang it: the timeout catches that)."""
    slide = _odd_slide_path(kind, tmp_path)
    extra = {"info": [],
             "objects": [str(_write_one_feature(tmp_path)), "--labels", str(tmp_path / "l")],
             "segment": ["--box", "0", "0", "10", "10", "--out", str(tmp_path / "o.geojson"),
                         "--labels", str(tmp_path / "l")]}[command[0]]
    proc = subprocess.run([sys.executable, "-m", "napari_wsi_sam.cli", *command, str(slide),
                           *extra], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert expected in proc.stderr and "does not exist" not in proc.stderr, proc.stderr
    assert not (tmp_path / "l" / "objects.sqlite").exists()


def _write_one_feature(tmp_path: Path) -> Path:
    path = tmp_path / "one.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection",
                                "features": [_polygon(10, 10, 40, 40)]}))
    return path


# -- heads that are not heads ------------------------------------------------------------------
def _install_head(path: Path, home: Path) -> subprocess.CompletedProcess:
    """``napari-wsi-sam heads install PATH`` in a real process with its own cache."""
    return subprocess.run([sys.executable, "-m", "napari_wsi_sam.cli", "heads", "install",
                           str(path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NAPARI_WSI_SAM_HOME": str(home)})


def test_a_pickled_head_is_one_plain_line_and_runs_nothing(tmp_path):
    import torch

    from test_train import _Payload

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "napari-wsi-sam-head", "state_dict": _Payload(marker)}, evil)
    proc = _install_head(evil, tmp_path / "home")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert ("not a head written by train (it holds Python objects, which are never loaded)"
            in proc.stderr), proc.stderr
    assert "Warning" not in proc.stderr and "weights_only" not in proc.stderr, proc.stderr
    assert not marker.exists() and not list((tmp_path / "home").rglob("*.pt"))


def _doctored_head(tmp_path: Path, kind: str) -> Path:
    """The shipped head, with a ``../`` member added, or a member of 600 MB of zeros."""
    import zipfile

    from napari_wsi_sam.model.registry import shipped_heads

    path = tmp_path / "doctored" / "head.pt"
    path.parent.mkdir()
    shutil.copyfile(shipped_heads()[0].path, path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        if kind == "../ member":
            archive.writestr("../../outside.txt", "escaped")
        else:
            with archive.open("head/data/bomb", "w", force_zip64=True) as member:
                zeros = bytes(2**20)
                for _ in range(600):
                    member.write(zeros)
    return path


@pytest.mark.parametrize(("kind", "expected"), [
    ("../ member", "points outside the archive"),
    ("zip bomb", "a zip bomb"),
])
def test_a_doctored_head_archive_is_refused_before_anything_is_extracted(kind, expected,
                                                                         tmp_path):
    path = _doctored_head(tmp_path, kind)
    proc = _install_head(path, tmp_path / "home")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert expected in proc.stderr and "not a head written by train" in proc.stderr
    assert not (tmp_path / "outside.txt").exists()
    assert not list((tmp_path / "home").rglob("*.pt"))
