"""``napari-wsi-sam serve`` against requests built as QuPath's SAM extension builds them.

A real uvicorn server on a free local port, real slides, real weights. Requests follow the
extension's builders (SAMPromptParameters, SAMAutoMaskParameters, SAMWeights, Gson's JSON:
unset fields left out): ``b64img`` is a base64 PNG of the viewer region rendered at its
downsample, boxes and points are integer pixels of that image. Answers are read as the
extension reads them (Utils.parsePathObjects): a JSON array of GeoJSON Features, geometry in
the sent image's pixels, ``properties.quality`` a number.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image
from shapely.affinity import affine_transform
from shapely.geometry import box, shape

from napari_wsi_sam.serve import ServeConfig, ServeLimits, create_app
from napari_wsi_sam.session import AnnotationSession
from napari_wsi_sam.slide import open_slide
from napari_wsi_sam.store.files import open_store

SAMPLE_BOX = (1185, 1980, 1345, 2185)  # a follicle of the CMU slide, level-0 px
REGION = (900.0, 1700.0, 2100.0, 2900.0)  # the QuPath viewer's region, level-0 px
DOWNSAMPLE = 2.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """uvicorn serving `create_app(config)` in a thread, until `stop`."""

    def __init__(self, config: ServeConfig) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1",
                                                    port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture
def slide_copy(sample_slide, tmp_path):
    """The CMU slide in a folder of its own (its object store is made beside it)."""
    folder = tmp_path / "slides"
    folder.mkdir()
    target = folder / sample_slide.name
    shutil.copyfile(sample_slide, target)
    return target


@pytest.fixture
def server(slide_copy):
    running = Server(ServeConfig(slides=slide_copy.parent, device="cpu",
                                 limits=ServeLimits(max_body_bytes=8 * 2**20,
                                                    max_image_pixels=2048 * 2048)))
    yield running
    running.stop()


def viewer_image(slide_path, region=REGION, downsample=DOWNSAMPLE) -> np.ndarray:
    """What QuPath's renderedServer.readRegion(regionRequest) gives: the region at the
    viewer's downsample."""
    x0, y0, x1, y1 = (int(v) for v in region)
    with open_slide(slide_path) as slide:
        level = slide.best_level_for_mpp(slide.mpp[0] * downsample)
        factor = slide.downsamples[level]
        pixels = slide.read_window(level, x0=int(x0 / factor), y0=int(y0 / factor),
                                   x1=int(x1 / factor), y1=int(y1 / factor))
    size = (int((x1 - x0) / downsample), int((y1 - y0) / downsample))
    return np.asarray(Image.fromarray(np.asarray(pixels)).resize(size, Image.BILINEAR))


def b64png(pixels: np.ndarray) -> str:
    """Utils.base64EncodePNG: ImageIO's PNG, java.util.Base64's basic encoder."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def to_sent(x: float, y: float, region=REGION, downsample=DOWNSAMPLE) -> tuple[float, float]:
    return (x - region[0]) / downsample, (y - region[1]) / downsample


def box_request(image_b64: str, bbox, **extra) -> dict:
    """SAMPromptParameters for a rectangle ROI: type, bbox, b64img, multimask_output (Gson
    leaves out the null point_coords, point_labels, b64mask and checkpoint_url)."""
    return {"type": "vit_t", "bbox": list(bbox), "b64img": image_b64, "multimask_output": False,
            **extra}


def sent_bbox(level0_box) -> list[int]:
    """The extension's bbox: (int) floor of the min corner, Math.round of the max corner."""
    x0, y0 = to_sent(level0_box[0], level0_box[1])
    x1, y1 = to_sent(level0_box[2], level0_box[3])
    return [int(x0), int(y0), round(x1), round(y1)]


def parse_like_qupath(response: httpx.Response, region=REGION, downsample=DOWNSAMPLE):
    """Utils.parsePathObjects + the task's transform: Features -> level-0 geometries."""
    assert response.status_code == 200, response.text
    features = response.json()
    assert isinstance(features, list)
    out = []
    for feature in features:
        assert feature["type"] == "Feature"
        assert isinstance(feature["properties"]["quality"], float)
        geometry = affine_transform(shape(feature["geometry"]),
                                    [downsample, 0, 0, downsample, region[0], region[1]])
        out.append((feature, geometry))
    return out


@pytest.mark.slow
def test_box_with_the_slide_runs_wsi_sam_with_5x_context_and_stores_it(server, slide_copy):
    image = b64png(viewer_image(slide_copy))
    weights = httpx.get(f"{server.url}/sam/weights/?type=vit_t").json()
    wsi = next(w for w in weights if w["url"].startswith("napari-wsi-sam:wsi-sam:"))
    body = box_request(image, sent_bbox(SAMPLE_BOX), checkpoint_url=wsi["url"],
                       slide=slide_copy.name, region=list(REGION))
    response = httpx.post(f"{server.url}/sam/", json=body, timeout=600)
    [(feature, geometry)] = parse_like_qupath(response)
    props = feature["properties"]
    assert props["context"] == f"slide {slide_copy.name}"
    assert props["model"] == wsi["name"] and "LR" in props["scale"]
    assert geometry.intersection(box(*SAMPLE_BOX)).area > 0.5 * geometry.area
    assert uuid.UUID(feature["id"])
    with open_slide(slide_copy) as slide, open_store(slide) as store:
        [stored] = list(store.iter_live())
        assert stored.uuid == feature["id"] and stored.model == "wsi-sam"
        assert stored.head == props["head"] and stored.score is not None
        assert stored.prompt["box"] == pytest.approx(list(SAMPLE_BOX), abs=DOWNSAMPLE)
        assert stored.geometry.symmetric_difference(geometry).area < 0.02 * geometry.area
    # and the store's objects come back for the region, as drawn in napari
    listed = httpx.get(f"{server.url}/sam/objects/",
                       params={"slide": slide_copy.name, "region": "1000,1900,1500,2300"}).json()
    assert [f["id"] for f in listed["features"]] == [feature["id"]]


@pytest.mark.slow
def test_points_and_automask_on_the_sent_image_alone_say_so(server, slide_copy):
    pixels = viewer_image(slide_copy)
    image = b64png(pixels)
    cx, cy = to_sent(1265, 2080)
    # SAMPromptParameters for a point ROI: background points first, then foreground
    body = {"type": "vit_t", "b64img": image, "point_coords": [[int(cx), int(cy)]],
            "point_labels": [1], "multimask_output": False}
    [(feature, _)] = parse_like_qupath(httpx.post(f"{server.url}/sam/", json=body, timeout=600))
    props = feature["properties"]
    assert props["model"] == "sam"
    assert props["context"] == "sent image (no 5x context: the request names no slide)"
    assert props["stored"].startswith("nowhere:")
    # another image at the same place never reuses the first one's embedding
    flipped = {**body, "b64img": b64png(np.ascontiguousarray(pixels[:, ::-1]))}
    [(other, _)] = parse_like_qupath(httpx.post(f"{server.url}/sam/", json=flipped,
                                                timeout=600))
    assert shape(other["geometry"]).symmetric_difference(shape(feature["geometry"])).area > 0
    # SAMAutoMaskParameters, every field set as the extension's dialog does
    auto = {"type": "vit_t", "b64img": b64png(pixels[100:356, 100:356]), "points_per_side": 4,
            "points_per_batch": 16, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.5,
            "stability_score_offset": 1.0, "box_nms_thresh": 0.7, "crop_n_layers": 0,
            "crop_nms_thresh": 0.7, "crop_overlap_ratio": 512 / 1500,
            "crop_n_points_downscale_factor": 1, "min_mask_region_area": 20,
            "output_type": "Single mask", "include_image_edge": False}
    found = parse_like_qupath(httpx.post(f"{server.url}/sam/automask/", json=auto, timeout=600),
                              region=(0, 0, 0, 0), downsample=1.0)
    assert found and all(f["properties"]["context"].startswith("sent image") for f, _ in found)
    assert all(g.within(box(0, 0, 256, 256).buffer(1)) for _, g in found)
    with open_slide(slide_copy) as slide, open_store(slide) as store:
        assert store.count() == 0  # no slide named: stored nowhere, as each answer says


@pytest.mark.slow
def test_automask_with_the_slide_stores_objects_that_the_napari_session_sees(server,
                                                                             slide_copy):
    region = (1100.0, 1900.0, 1612.0, 2412.0)
    pixels = viewer_image(slide_copy, region=region, downsample=2.0)
    auto = {"type": "sam", "b64img": b64png(pixels), "points_per_side": 8,
            "pred_iou_thresh": 0.5, "stability_score_thresh": 0.5, "box_nms_thresh": 0.7,
            "output_type": "Single mask", "slide": slide_copy.name, "region": list(region)}
    found = parse_like_qupath(httpx.post(f"{server.url}/sam/automask/", json=auto,
                                         timeout=600), region=region, downsample=2.0)
    assert found
    with open_slide(slide_copy) as slide:
        session = AnnotationSession.open(slide, device="cpu")  # what the napari widget drives
        try:
            uuids = {o.uuid for o in session.store.iter_live()}
            labels = np.asarray(session.rasters.levels("object")[0])
        finally:
            session.close()
    assert uuids == {f["id"] for f, _ in found}
    for _, geometry in found:  # drawn into the class's label pyramid that napari shows
        inside = geometry.representative_point()
        assert labels[int(inside.y), int(inside.x)] != 0


@pytest.mark.slow
def test_eight_concurrent_clients_lose_nothing(server, slide_copy):
    image = b64png(viewer_image(slide_copy))
    boxes = [(SAMPLE_BOX[0] + dx, SAMPLE_BOX[1] + dy, SAMPLE_BOX[2] + dx, SAMPLE_BOX[3] + dy)
             for dx in (-8, 0, 8, 16) for dy in (0, 12)]

    wsi = next(w["url"] for w in httpx.get(f"{server.url}/sam/weights/").json()
               if w["url"].startswith("napari-wsi-sam:wsi-sam:"))

    def one(k):  # two models at once: two workers write into the one store
        model = {"checkpoint_url": wsi} if k % 2 else {"type": "sam"}
        body = box_request(image, sent_bbox(boxes[k]), slide=slide_copy.name,
                           region=list(REGION), **model)
        return httpx.post(f"{server.url}/sam/", json=body, timeout=600)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    ids = [parse_like_qupath(a)[0][0]["id"] for a in answers]
    models = [parse_like_qupath(a)[0][0]["properties"]["model_spec"] for a in answers]
    assert len(set(models)) == 2
    with open_slide(slide_copy) as slide, open_store(slide) as store:
        assert sorted(o.uuid for o in store.iter_live()) == sorted(ids) and len(set(ids)) == 8


JSON = {"Content-Type": "application/json; charset=utf-8"}  # HttpUtils.postRequest's header


def hostile_requests(url: str, image: str) -> list[tuple[str, str, dict]]:
    """(method, path, httpx kwargs) of 20 bad requests, each to be refused in one line."""
    ok = {"type": "vit_t", "bbox": [10, 10, 60, 60], "b64img": image}
    return [
        ("POST", "/sam/", {"content": b"{not json", "headers": JSON}),
        ("POST", "/sam/", {"content": b"[1, 2]", "headers": JSON}),
        ("POST", "/sam/", {"json": {**ok, "b64img": "A" * (9 * 2**20)}}),  # over the body cap
        ("POST", "/sam/", {"json": {**ok, "b64img": "%%%not base64%%%"}}),
        ("POST", "/sam/", {"json": {**ok, "b64img": base64.b64encode(b"hello").decode()}}),
        ("POST", "/sam/", {"json": {**ok, "b64img": ""}}),
        ("POST", "/sam/", {"json": {**ok, "b64img": b64png(np.zeros((2100, 2100, 3), "u1"))}}),
        ("POST", "/sam/", {"json": {**ok, "bbox": [500, 500, 900, 900]}}),  # off the image
        ("POST", "/sam/", {"json": {**ok, "bbox": [60, 60, 10, 10]}}),  # inverted
        ("POST", "/sam/", {"json": {**ok, "bbox": ["a", 2, 3, 4]}}),  # wrong type
        ("POST", "/sam/", {"json": {**ok, "type": "vit_h"}}),  # not served here
        ("POST", "/sam/", {"json": {**ok, "type": "no-such-model"}}),
        ("POST", "/sam/", {"json": {**ok, "checkpoint_url": "https://example.com/x.pth"}}),
        ("POST", "/sam/", {"json": {**ok, "bbox": None, "point_coords": [[5, 5]],
                                    "point_labels": [1, 0]}}),
        ("POST", "/sam/", {"json": {**ok, "slide": "../../etc/passwd",
                                    "region": [0, 0, 100, 100]}}),
        ("POST", "/sam/", {"json": {**ok, "slide": "missing.svs", "region": [0, 0, 64, 64]}}),
        ("POST", "/sam/", {"json": {"type": "vit_t", "bbox": [1, 1, 5, 5]}}),  # no image
        ("POST", "/sam/automask/", {"json": {"type": "vit_t", "b64img": image,
                                              "points_per_side": 100000}}),
        ("POST", "/sam/weights/", {"json": {"type": "vit_t", "name": "x",
                                            "url": "/no/such/head.pt"}}),
        ("GET", "/sam/objects/", {"params": {"slide": "missing.svs"}}),
    ]


def test_twenty_hostile_requests_each_get_a_4xx_one_liner(server):
    image = b64png(np.full((64, 64, 3), 200, np.uint8))
    requests = hostile_requests(server.url, image)
    assert len(requests) == 20
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for method, path, kwargs in requests:
            response = client.request(method, path, **kwargs)
            assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
            detail = response.json()["detail"]
            assert isinstance(detail, str) and "\n" not in detail and len(detail) < 500
            assert "Traceback" not in response.text


def test_the_token_is_needed_in_a_header_or_the_url():
    running = Server(ServeConfig(token="s3cret-token"))
    try:
        assert httpx.get(f"{running.url}/sam/version/").status_code == 401
        wrong = httpx.get(f"{running.url}/sam/version/", headers={"X-Token": "nope-nope"})
        assert wrong.status_code == 401 and "token" in wrong.json()["detail"]
        bearer = {"Authorization": "Bearer s3cret-token"}
        assert httpx.get(f"{running.url}/sam/version/", headers=bearer).status_code == 200
        # the extension cannot send headers: the token in its server URL
        listed = httpx.get(f"{running.url}/t/s3cret-token/sam/weights/?type=vit_t")
        assert listed.status_code == 200
        assert {w["url"] for w in listed.json()} >= {"napari-wsi-sam:sam",
                                                      "napari-wsi-sam:medsam"}
        assert httpx.get(f"{running.url}/t/s3cret-token/sam/weights/?type=vit_l").json() == []
    finally:
        running.stop()


def test_a_non_local_bind_without_a_token_is_refused_in_one_line():
    result = subprocess.run([sys.executable, "-m", "napari_wsi_sam.cli", "serve", "--host",
                             "0.0.0.0", "--port", str(free_port())],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--token" in lines[0], result.stderr


def test_samapi_progress_version_and_cancel_answer_as_samapi_does(server):
    assert httpx.get(f"{server.url}/sam/version/").text
    video = httpx.post(f"{server.url}/sam/video/", json={})  # samapi's, not served here
    assert video.status_code == 404 and "/sam/automask/" in video.json()["detail"]
    assert httpx.get(f"{server.url}/sam/progress/").json() == {"message": None, "percent": -1}
    assert httpx.get(f"{server.url}/sam/weights/cancel/").status_code == 200
    registered = httpx.post(f"{server.url}/sam/weights/",
                            json={"type": "vit_t", "name": "sam", "url": "/x.pt"})
    assert registered.status_code == 404  # no such file here; never a 500
    json.loads(registered.text)


def test_registering_weights_installs_a_head_as_heads_install_does(monkeypatch, tmp_path):
    from napari_wsi_sam.model.registry import SHIPPED_HEADS_DIR
    from napari_wsi_sam.paths import HOME_ENV

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "cache"))  # install into a scratch cache
    head = sorted(SHIPPED_HEADS_DIR.glob("*.pt"))[0]
    copy = tmp_path / "my head.pt"
    shutil.copyfile(head, copy)
    running = Server(ServeConfig())
    try:
        # SAMRegisterWeightsTask's body: SAMWeights(type, name, url)
        body = {"type": "vit_t", "name": "my_head", "url": copy.as_uri()}
        answer = httpx.post(f"{running.url}/sam/weights/", json=body)
        assert answer.status_code == 200 and "napari-wsi-sam:wsi-sam:my_head" in answer.text
        assert (tmp_path / "cache" / "heads" / "my_head.pt").is_file()
        listed = httpx.get(f"{running.url}/sam/weights/?type=vit_t").json()
        assert "napari-wsi-sam:wsi-sam:my_head" in {w["url"] for w in listed}
        again = httpx.post(f"{running.url}/sam/weights/", json=body)
        assert again.status_code == 200 and "already exists" in again.text
    finally:
        running.stop()
