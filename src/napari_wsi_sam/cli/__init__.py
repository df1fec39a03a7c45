"""The ``napari-wsi-sam`` command: everything the widget does, without Qt.

Each sub-module adds its sub-commands with ``register(subparsers)`` and sets ``func`` on its
parser. Errors of the package's own family, and the machine's (disk full, permission denied,
out of memory), become one line on stderr and exit status 2; anything else is a bug of ours:
one line asking for a report (exit 1), the traceback with ``--verbose``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import WsiSamError, one_line
from . import (
    cohort,
    data,
    demo,
    evaluate,
    heads,
    objects,
    segment,
    serve,
    slide,
    train,
    view,
    weights,
)
from .args import OneLineParser

COMMAND_MODULES = [data, slide, demo, segment, objects, cohort, train, evaluate, heads, view,
                   weights, serve]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    if not args.verbose:  # a damaged file gets our one line, not tifffile's every complaint
        logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args) or 0)
    except WsiSamError as error:
        print(f"napari-wsi-sam: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-wsi-sam: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("napari-wsi-sam: error: out of memory; close other programs, or work on a "
              "smaller region or fewer prompts at a time", file=sys.stderr)
        return 2
    except OSError as error:  # not one of ours: the disk, permissions, a vanished file
        where = f" ({error.filename})" if error.filename else ""
        reason = error.strerror or one_line(error)
        print(f"napari-wsi-sam: error: {reason}{where}; check free space and permissions there",
              file=sys.stderr)
        return 2
    except Exception as error:
        if args.verbose:
            logging.getLogger(__name__).exception("internal error")
        print(f"napari-wsi-sam: internal error ({type(error).__name__}: {one_line(error)}); "
              f"please report it with the output of `napari-wsi-sam -v {args.command} ...`",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
