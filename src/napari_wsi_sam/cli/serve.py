"""``napari-wsi-sam serve``: the HTTP server QuPath's SAM extension talks to (samapi's protocol).

Binds 127.0.0.1 by default; any other --host needs --token. Objects made through it go into
each slide's object store, where napari shows them (docs/qupath.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UsageError
from . import args as argtypes

EPILOG = """\
QuPath: Extensions > SAM, server URL http://127.0.0.1:8000/sam/ (with --token T on another
host: http://HOST:8000/t/T/sam/); model type vit_t (mobile), then a weight from its list.
examples:
  napari-wsi-sam serve
  napari-wsi-sam serve --slides /data/slides
  napari-wsi-sam serve --host 0.0.0.0 --token "$TOKEN"    (make TOKEN with
      python -c 'import secrets; print(secrets.token_urlsafe())')
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve WSI-SAM to QuPath's SAM extension (samapi's HTTP protocol)",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; any "
                             "other needs --token)")
    parser.add_argument("--port", type=argtypes.count(1, 65535, "--port"), default=8000)
    parser.add_argument("--slides", type=Path, default=None, metavar="DIR",
                        help="folder that request slide names resolve in (and the only one "
                             "served); default: any slide path a request gives")
    parser.add_argument("--token", default=None,
                        help="a secret every client must send (header or URL /t/TOKEN/sam/)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--max-body-mb", type=argtypes.number_in(1, 4096, "--max-body-mb"),
                        default=64.0, help="largest request body, MiB (default 64)")
    parser.add_argument("--max-image-mp", type=argtypes.number_in(0.01, 1024, "--max-image-mp"),
                        default=16.8, help="largest sent image, megapixels (default 16.8)")
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ..serve import ServeConfig, ServeLimits, check_bind, create_app

    check_bind(args.host, args.token)
    if args.slides is not None and not args.slides.is_dir():
        raise UsageError(f"--slides {args.slides} is not a folder")
    import uvicorn

    limits = ServeLimits(max_body_bytes=int(args.max_body_mb * 2**20),
                         max_image_pixels=int(args.max_image_mp * 1e6))
    app = create_app(ServeConfig(slides=args.slides, token=args.token, device=args.device,
                                 limits=limits))
    where = f"http://{args.host}:{args.port}"
    url = f"{where}/t/<token>/sam/" if args.token else f"{where}/sam/"
    print(f"napari-wsi-sam: serving samapi's protocol at {url}"
          + (" (token required: header 'Authorization: Bearer T' or the URL above)"
             if args.token else " (this machine only)"), file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
