"""The ``napari-wsi-sam`` command: everything the widget does, without Qt.

Each sub-module adds its sub-commands with ``register(subparsers)`` and sets ``func`` on its
parser. Errors of the package's own family become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import WsiSamError
from . import data, demo, evaluate, heads, objects, segment, slide, train, view, weights

COMMAND_MODULES = [data, slide, demo, segment, objects, train, evaluate, heads, view, weights]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-wsi-sam",
        description="Whole-slide annotation with WSI-SAM: slides, crops, weights and models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 a user-facing error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except WsiSamError as error:
        print(f"napari-wsi-sam: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-wsi-sam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
