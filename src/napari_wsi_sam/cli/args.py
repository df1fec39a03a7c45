"""Argument types and a parser whose usage errors are one line, as every other error.

A value out of its sane range (``--mpp 1e-12``, ``--hr-mpp 1e12``, ``--size 100000``) is a
usage error naming the range, found before any slide is opened or model loaded.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def number_in(low: float, high: float, what: str, *, integer: bool = False,
              hint: str = "") -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high], else a one-line usage error."""

    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a {'whole ' if integer else ''}"
                                             f"number, got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{what} must lie in {low:g}..{high:g}{hint}, "
                                             f"got {text}")
        return value

    return parse


def slide_mpp(text: str) -> float:
    from ..slide.reader import MAX_MPP, MIN_MPP

    return number_in(MIN_MPP, MAX_MPP, "the slide's pixel size (µm/px)",
                     hint=" (a 40x scan is about 0.25)")(text)


def hr_mpp(text: str) -> float:
    from ..slide.crops import MAX_HR_MPP, MIN_HR_MPP

    return number_in(MIN_HR_MPP, MAX_HR_MPP, "the HR pixel size (µm/px)",
                     hint=" (40x is 0.25, 10x is 1.0)")(text)


def crop_size(text: str) -> int:
    from ..slide.crops import MAX_CROP, MIN_CROP

    return int(number_in(MIN_CROP, MAX_CROP, "the crop size (px)", integer=True)(text))


def lr_factor(text: str) -> float:
    from ..slide.crops import MAX_LR_FACTOR

    return number_in(1.0, MAX_LR_FACTOR, "the LR factor")(text)


def fraction(text: str) -> float:
    value = number_in(0.0, 1.0, "the fraction")(text)
    if value in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"the fraction must lie strictly between 0 and 1, "
                                         f"got {text}")
    return value


def class_weight(text: str) -> tuple[str, float]:
    """CLASS=WEIGHT: a class's objects weigh WEIGHT in an instance decoder's loss."""
    from ..train.instance_trainer import MAX_CLASS_WEIGHT

    name, sep, value = text.rpartition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = float("nan")
    if not sep or not name or not 0 < weight <= MAX_CLASS_WEIGHT:
        raise argparse.ArgumentTypeError(f"give CLASS=WEIGHT with a weight in "
                                         f"(0, {MAX_CLASS_WEIGHT:g}], e.g. connective=3; "
                                         f"got {text!r}")
    return name, weight


def count(low: int, high: int, what: str) -> Callable[[str], int]:
    parse = number_in(low, high, what, integer=True)
    return lambda text: int(parse(text))


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend``: which library reads the slide (default: chosen per file)."""
    from ..slide.backends import BACKENDS

    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="slide reader: auto (tifffile where it reads the format, OpenSlide "
                             "otherwise, zarr for OME-Zarr), or force tifffile, openslide or "
                             "ome-zarr")
