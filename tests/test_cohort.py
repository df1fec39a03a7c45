"""Cohorts on dask.distributed with the real weights on real slides (the CMU SVS and two
pyramids written from real H&E tiles): a LocalCluster's outputs equal a single-process
`segment --prompts` run pixel for pixel, a killed worker or client loses and duplicates
nothing, a scheduler and workers started as separate commands run the same batch, and a
precomputed node costs no encoder pass."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from shapely.geometry import shape

from napari_wsi_sam.cli import main
from napari_wsi_sam.cohort.manifest import read_manifest
from napari_wsi_sam.errors import UsageError
from napari_wsi_sam.store import ObjectStore
from napari_wsi_sam.store.files import default_folder
from slide_factory import make_pyramid

CLI = str(Path(sys.executable).with_name("napari-wsi-sam"))
DASK = str(Path(sys.executable).with_name("dask"))


def _polygon(x0: float, y0: float, x1: float, y1: float, **properties) -> dict:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Feature", "properties": properties,
            "geometry": {"type": "Polygon", "coordinates": [ring]}}


PROMPTS = {
    "cmu_small_region.svs": [_polygon(1185, 1980, 1345, 2185), _polygon(1690, 2535, 1790, 2650),
                             _polygon(1595, 2665, 1685, 2840), _polygon(900, 1200, 1300, 1600),
                             _polygon(-50, -50, 120, 90), _polygon(9000, 9000, 9100, 9100)],
    "pyramid_a.svs": [_polygon(100 + i * 700, 200 + j * 900, 260 + i * 700, 380 + j * 900)
                      for i in range(4) for j in range(2)],
    "pyramid_b.ome.tif": [_polygon(300 + i * 900, 300 + j * 800, 420 + i * 900, 430 + j * 800,
                                   classification={"name": "nest"})
                          for i in range(3) for j in range(2)],
}


@pytest.fixture(scope="module")
def cohort_sources(sample_slide, tmp_path_factory):
    """The three slides and their prompt files, and single-process reference outputs."""
    root = tmp_path_factory.mktemp("cohort-sources")
    shutil.copy(sample_slide, root / "cmu_small_region.svs")
    make_pyramid(root / "pyramid_a.svs", width=6000, height=4000, layout="svs", mpp=0.5)
    make_pyramid(root / "pyramid_b.ome.tif", width=5000, height=3000, layout="ome", mpp=0.5)
    reference = root / "reference"
    reference.mkdir()
    for name, features in PROMPTS.items():
        prompts = root / f"{Path(name).stem}.geojson"
        prompts.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        assert main(["segment", str(root / name), "--prompts", str(prompts), "--model", "sam",
                     "--device", "cpu", "--class", "cell", "--labels",
                     str(reference / f"{name}.labels"),
                     "--out", str(reference / f"{Path(name).stem}.geojson")]) == 0
    return root


def _cohort(sources: Path, folder: Path) -> Path:
    """Copies of the slides (their stores start empty) and a manifest; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["slide,prompts,out,class,model"]
    for name in PROMPTS:
        shutil.copy(sources / name, folder / name)
        stem = Path(name).stem
        shutil.copy(sources / f"{stem}.geojson", folder / f"{stem}.geojson")
        lines.append(f"{name},{stem}.geojson,out/{stem}.geojson,cell,sam")
    (folder / "out").mkdir(exist_ok=True)
    manifest = folder / "cohort.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _same_as_reference(sources: Path, folder: Path) -> None:
    """Every output equals the single-process one, object for object, pixel for pixel, and
    every store holds each prompt's object once."""
    for name in PROMPTS:
        stem = Path(name).stem
        ours = json.loads((folder / "out" / f"{stem}.geojson").read_text())["features"]
        theirs = json.loads((sources / "reference" / f"{stem}.geojson").read_text())["features"]
        assert len(ours) == len(theirs) > 0, name
        for a, b in zip(ours, theirs, strict=True):
            assert shape(a["geometry"]).equals_exact(shape(b["geometry"]), 0), name
            assert a["properties"]["classification"] == b["properties"]["classification"]
        with ObjectStore.open(default_folder(folder / name) / "objects.sqlite") as store:
            assert store.count() == len(theirs), name
            keys = [o.resume_key for o in store.iter_live()]
            assert len(set(keys)) == len(keys)


def _rows(text: str) -> list[dict]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def _report(folder: Path) -> list[dict]:
    return _rows((folder / "batch_report.csv").read_text())


def _stored(folder: Path) -> int:
    total = 0
    for path in folder.glob("*.wsi-sam/objects.sqlite"):
        with contextlib.suppress(Exception), ObjectStore.open(path) as store:
            total += store.count()
    return total


def _workers_of(process: psutil.Process) -> list[psutil.Process]:
    return [p for p in process.children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())]


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# -- the manifest ----------------------------------------------------------------------------
def test_manifest_rows_resolve_paths_and_name_what_is_wrong(tmp_path):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("slide,prompts,out,hr_mpp,model\n"
                        "a.svs,a.geojson,out/a.geojson,,\n"
                        "b.svs,b.geojson,out/b.geojson,1e12,\n"
                        "c.svs,,out/c.geojson,,\n"
                        "d.svs,d.geojson,out/d.geojson,,hq-sam\n")
    good, huge, empty, model = read_manifest(manifest)
    assert good.error is None and good.slide == tmp_path / "a.svs"
    assert good.out == tmp_path / "out" / "a.geojson" and good.class_name == "object"
    assert huge.error == "line 3: hr_mpp must lie in 0.05..16 µm/px, got 1e12"
    assert empty.error == "line 4: the prompts cell is empty"
    assert model.error is not None and "unknown model 'hq-sam'" in model.error
    for text, expected in [("slide,prompts\n", "lacks the column(s) out"),
                           ("slide,prompts,out,colour\n", "unknown column(s) colour"),
                           ("slide,prompts,out\n", "names no slide"),
                           ("", "is empty"),
                           ("slide,prompts,out\na,b,o.geojson\nc,d,o.geojson\n", "two rows")]:
        manifest.write_text(text)
        with pytest.raises(UsageError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            read_manifest(manifest)


# -- on a cluster ----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_local_cluster_equals_one_process_and_survives_a_killed_worker(cohort_sources,
                                                                          tmp_path):
    manifest = _cohort(cohort_sources, tmp_path)
    log = tmp_path / "batch.log"
    with log.open("w") as stderr:
        client = subprocess.Popen([CLI, "batch", str(manifest), "--workers", "2",
                                   "--device", "cpu", "--no-progress"],
                                  stdout=subprocess.DEVNULL, stderr=stderr)
        watched = psutil.Process(client.pid)
        _wait(lambda: _stored(tmp_path) > 0 or client.poll() is not None, 300,
              "the first stored object")
        assert client.poll() is None, log.read_text()
        victim = _workers_of(watched)[0]
        victim.send_signal(signal.SIGKILL)
        assert client.wait(timeout=600) == 0, log.read_text()
    report = (tmp_path / "batch_report.csv").read_text()
    assert report.count(",done,") == 3, report
    _same_as_reference(cohort_sources, tmp_path)
    # A rerun finds every prompt done: nothing is added, the outputs stay the same.
    assert main(["batch", str(manifest), "--workers", "0", "--no-progress"]) == 0
    for first, again in zip(_rows(report), _report(tmp_path), strict=True):
        assert again["objects"] == "0" and again["skipped"] == first["objects"]
    _same_as_reference(cohort_sources, tmp_path)


@pytest.mark.slow
def test_a_killed_client_reruns_without_duplicates(cohort_sources, tmp_path):
    manifest = _cohort(cohort_sources, tmp_path)
    client = subprocess.Popen([CLI, "batch", str(manifest), "--workers", "1", "--device",
                               "cpu", "--no-progress"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watched = psutil.Process(client.pid)
    _wait(lambda: _stored(tmp_path) >= 3 or client.poll() is not None, 300,
          "three stored objects")
    workers = _workers_of(watched)
    client.send_signal(signal.SIGKILL)
    client.wait()
    for worker in workers:  # a killed client leaves its LocalCluster's workers behind
        with contextlib.suppress(psutil.Error):
            worker.kill()
    assert 3 <= _stored(tmp_path) < sum(len(f) for f in PROMPTS.values())
    assert main(["batch", str(manifest), "--workers", "0", "--no-progress"]) == 0
    _same_as_reference(cohort_sources, tmp_path)


@pytest.mark.slow
def test_a_scheduler_and_workers_started_as_commands_run_the_batch(cohort_sources, tmp_path):
    manifest = _cohort(cohort_sources, tmp_path)
    scheduler_file = tmp_path / "scheduler.json"
    processes = [subprocess.Popen([DASK, "scheduler", "--scheduler-file", str(scheduler_file),
                                   "--port", "0", "--no-dashboard", "--host", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait(scheduler_file.exists, 60, "the scheduler file")
        for _ in range(2):
            processes.append(subprocess.Popen(
                [DASK, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                 "--no-dashboard", "--nworkers", "1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        assert main(["batch", str(manifest), "--scheduler", address, "--device", "cpu",
                     "--no-progress"]) == 0
        _same_as_reference(cohort_sources, tmp_path)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            if process.poll() is None:
                process.kill()


@pytest.mark.slow
def test_a_precomputed_node_costs_no_encoder_pass(cohort_sources, tmp_path, capsys):
    from napari_wsi_sam.model.build import build_predictor
    from napari_wsi_sam.model.registry import parse_choice
    from napari_wsi_sam.pipeline import segment_prompt
    from napari_wsi_sam.pipeline.embedding_store import attach
    from napari_wsi_sam.prompts import Prompt
    from napari_wsi_sam.slide import open_slide

    slide_path = tmp_path / "cmu_small_region.svs"
    shutil.copy(cohort_sources / slide_path.name, slide_path)
    assert main(["precompute", str(slide_path), "--model", "sam", "--workers", "0",
                 "--device", "cpu", "--no-progress"]) == 0
    table = capsys.readouterr().out.splitlines()
    nodes, new, kept = (int(v) for v in table[1].split()[2:5])
    assert nodes == new > 0 and kept == 0
    prompt = Prompt.from_box(np.array([1185.0, 1980.0, 1345.0, 2185.0]))
    with open_slide(slide_path) as slide:
        stored = attach(build_predictor(parse_choice("sam"), device="cpu"))
        warm = segment_prompt(slide, prompt, stored, hr_mpp=1.0)
        cold_predictor = build_predictor(parse_choice("sam"), device="cpu")
        cold = segment_prompt(slide, prompt, cold_predictor, hr_mpp=1.0)
    assert stored.encoder_calls == 0 and stored.embeddings.loads == 1
    assert cold_predictor.encoder_calls == 1
    overlap = (warm.mask & cold.mask).sum() / (warm.mask | cold.mask).sum()
    assert warm.window == cold.window and overlap >= 0.99  # float16 storage, same object
    # The widget's session reads them too.
    from napari_wsi_sam.session import AnnotationSession, BoxRequest

    session = AnnotationSession.open(slide_path, device="cpu")
    try:
        (outcome,) = session.run_now(BoxRequest(np.array([1690.0, 2535.0, 1790.0, 2650.0])))
        assert not outcome.error and session.predictor().encoder_calls == 0
    finally:
        session.close()
    # A second precompute keeps every node.
    assert main(["precompute", str(slide_path), "--model", "sam", "--workers", "0",
                 "--no-progress"]) == 0
    again = capsys.readouterr().out.splitlines()[1].split()
    assert int(again[3]) == 0 and int(again[4]) == nodes
