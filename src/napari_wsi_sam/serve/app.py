"""The HTTP routes of ``napari-wsi-sam serve``: samapi's protocol, plus the store's objects.

samapi's routes (``/sam/``, ``/sam/automask/``, ``/sam/weights/`` GET and POST,
``/sam/weights/cancel/``, ``/sam/progress/``, ``/sam/version/``) answer as samapi does, so
QuPath's SAM extension works unchanged; ``GET /sam/objects/?slide=S&region=x0,y0,x1,y1``
returns the objects stored for a slide in a level-0 region (those drawn in napari too) as a
GeoJSON FeatureCollection. Every refusal is a 4xx whose JSON ``detail`` is one line; no
request ever sees a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import ServeError, WsiSamError, one_line
from ..formats.geojson import objects_to_feature_collection
from ..pipeline.objects import annotation_object
from . import models
from .context import Slides, decode_image
from .jobs import Run, automask_job, prompt_job
from .protocol import AutoMaskBody, PromptBody, WeightsBody
from .security import Guard, ServeLimits
from .worker import Workers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """slides: the folder request slide names resolve in (None: any path). token: required
    from every client when set. device: where the models run."""

    slides: Path | None = None
    token: str | None = None
    device: str = "auto"
    limits: ServeLimits = field(default_factory=ServeLimits)


def create_app(config: ServeConfig) -> FastAPI:
    """The application; its slides and workers close when the server stops."""
    slides = Slides(config.slides)
    workers = Workers(device=config.device, max_queue=config.limits.max_queue)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        workers.stop()
        slides.close()

    app = FastAPI(title="napari-wsi-sam serve", version=__version__, docs_url=None,
                  redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(Guard, token=config.token, max_body_bytes=config.limits.max_body_bytes)
    app.state.slides, app.state.workers = slides, workers
    _add_error_handlers(app)

    @app.get("/sam/version/", response_class=PlainTextResponse)
    async def version() -> str:
        return __version__

    @app.get("/sam/weights/")
    async def weights(type: str | None = None) -> list[dict[str, str]]:
        return models.weights_list(type)

    @app.post("/sam/weights/", response_class=PlainTextResponse)
    async def register(body: WeightsBody) -> str:
        return await run_in_threadpool(models.register_weights, body.type, body.name, body.url)

    @app.get("/sam/weights/cancel/", response_class=PlainTextResponse)
    async def cancel() -> str:
        return "Nothing to cancel: this server downloads no weights"

    @app.get("/sam/progress/")
    async def progress() -> dict[str, object]:
        running, waiting = workers.status()
        message = None if running is None else f"running {running}, {waiting} waiting"
        return {"message": message, "percent": -1}

    async def _run(body: PromptBody | AutoMaskBody, make_job) -> list[dict]:
        def prepare():
            pixels = decode_image(body.b64img, max_pixels=config.limits.max_image_pixels)
            place = slides.place(pixels, slide=body.slide, region=body.region)
            chosen = models.choose(body.type, body.checkpoint_url, on_slide=place.on_slide)
            run = Run(chosen, place, sam_model=body.type or models.SAMAPI_TYPE)
            return chosen, make_job(body, run)

        chosen, job = await run_in_threadpool(prepare)
        return await asyncio.wrap_future(workers.submit(chosen.choice, job))

    @app.post("/sam/")
    async def predict(body: PromptBody) -> list[dict]:
        if not body.bbox and not body.point_coords:
            raise ServeError("give a bbox or point_coords (the prompt) with the image")
        return await _run(body, prompt_job)

    @app.post("/sam/automask/")
    async def automask(body: AutoMaskBody) -> list[dict]:
        return await _run(body, automask_job)

    @app.get("/sam/objects/")
    async def objects(slide: str, region: str | None = None) -> dict:
        def read() -> dict:
            opened, store = slides.get(slide)
            width, height = opened.dimensions
            window = _window(region, width, height)
            colors = store.classes()
            return objects_to_feature_collection(
                [annotation_object(o, colors) for o in store.query(window)], mpp=opened.mpp)

        return await run_in_threadpool(read)

    return app


def _window(region: str | None, width: int, height: int) -> tuple[int, int, int, int]:
    if region is None:
        return (0, 0, width, height)
    try:
        x0, y0, x1, y1 = (float(v) for v in region.split(","))
    except ValueError as error:
        raise ServeError(f"region {region[:60]!r} must be x0,y0,x1,y1 level-0 px") from error
    if not (x1 > x0 and y1 > y0):
        raise ServeError(f"region {region[:60]!r} is empty: give x0 < x1 and y0 < y1")
    return (int(x0), int(y0), int(-(-x1 // 1)), int(-(-y1 // 1)))


def _add_error_handlers(app: FastAPI) -> None:
    """One line for every refusal: validation, our errors, routing, and anything else."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        errors = error.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        message = str(first.get("msg", "invalid request"))
        if first.get("type") == "json_invalid":
            text = "the request body is not valid JSON"
        elif where == "body" or first.get("type") == "model_attributes_type":
            text = "the request body must be a JSON object (Content-Type: application/json)"
        else:
            text = f"{where}: {message}"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return _detail(422, one_line(ValueError(text + more), 300))

    @app.exception_handler(ServeError)
    async def _serve(_request: Request, error: ServeError) -> JSONResponse:
        return _detail(error.status, one_line(error, 400))

    @app.exception_handler(WsiSamError)
    async def _ours(_request: Request, error: WsiSamError) -> JSONResponse:
        return _detail(422, one_line(error, 400))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            return _detail(404, f"no route {request.url.path[:80]} here; this server has "
                                "/sam/, /sam/automask/, /sam/weights/, /sam/progress/, "
                                "/sam/version/ and /sam/objects/")
        if error.status_code == 405:
            return _detail(405, f"{request.method} is not allowed on {request.url.path[:80]}")
        return _detail(error.status_code, one_line(ValueError(str(error.detail)), 200))

    @app.exception_handler(MemoryError)
    async def _memory(_request: Request, _error: MemoryError) -> JSONResponse:
        return _detail(507, "out of memory for this request: send a smaller viewer region")

    @app.exception_handler(Exception)
    async def _bug(_request: Request, error: Exception) -> JSONResponse:
        logger.exception("internal error")
        return _detail(500, f"internal error: {one_line(error, 200)} (please report it)")


def _detail(status: int, text: str) -> JSONResponse:
    return JSONResponse({"detail": text}, status_code=status)
