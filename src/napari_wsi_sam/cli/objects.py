"""``napari-wsi-sam objects``: a slide's object store without napari.

``info`` says where the store is, how many objects of each class it holds and how it is kept;
``import`` stores every outline of an annotation file as an object (holes and parts kept);
``export`` writes every live object to a file (QuPath GeoJSON, COCO or ASAP XML by suffix);
``check`` runs SQLite's full integrity check; ``purge`` removes deleted objects for good;
``rebuild`` draws the label pyramids again.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from . import args as argtypes

if TYPE_CHECKING:
    from ..slide import Slide
    from ..store import ObjectStore
    from ..store.rendering import ObjectRasters


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("objects", help="a slide's object store: info, import, "
                                                   "export, check, purge, rebuild")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=text)
        sub.add_argument("slide", type=Path, help="slide file")
        sub.add_argument("--labels", type=Path, default=None, metavar="DIR",
                         help="object store folder (default: <slide stem>.wsi-sam/ beside it)")
        sub.add_argument("--mpp", type=argtypes.slide_mpp, default=None,
                         help="µm/px of the slide, when it does not record one")
        argtypes.add_backend_argument(sub)
        return sub

    verb("info", "where the store is and what it holds").set_defaults(func=_info)
    imp = verb("import", "store every outline of an annotation file as an object")
    imp.add_argument("file", type=Path, help="QuPath GeoJSON, COCO .json, ASAP .xml, "
                                             "GeoParquet or an instance label image")
    imp.add_argument("--format", default=None, choices=_format_names(readable=True),
                     help="the file's format, when its suffix does not tell")
    imp.add_argument("--class", dest="class_name", default="imported",
                     help="class of features without one (default: imported)")
    imp.set_defaults(func=_import)
    exp = verb("export", "every live object to QuPath GeoJSON, COCO or ASAP XML")
    exp.add_argument("--out", type=Path, required=True, metavar="OUT.geojson",
                     help="the file; its suffix tells the format (.geojson/.json: GeoJSON, "
                          ".xml: ASAP XML)")
    exp.add_argument("--format", default=None, choices=_format_names(readable=False),
                     help="write this format whatever the suffix (coco for COCO .json)")
    exp.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                     help="only objects of these classes")
    exp.set_defaults(func=_export)
    labels = verb("export-labels", "the class label pyramid as an OME-Zarr (NGFF) labels image")
    labels.add_argument("--out", type=Path, required=True, metavar="OUT.zarr",
                        help="a new folder, or an existing OME-Zarr image to add the labels to")
    labels.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                        help="only these classes, valued 1, 2, ... in this order")
    labels.add_argument("--name", default="classes", help="the label image's name")
    labels.add_argument("--ngff", choices=("0.4", "0.5"), default="0.5",
                        help="NGFF version of a new folder (zarr v2 or v3; default 0.5)")
    labels.set_defaults(func=_export_labels)
    verb("check", "SQLite's full integrity check").set_defaults(func=_check)
    verb("purge", "remove deleted objects and their versions for good").set_defaults(
        func=_purge)
    verb("rebuild", "draw every class's label pyramid again from the objects").set_defaults(
        func=_rebuild)


def _format_names(*, readable: bool) -> list[str]:
    from ..formats.registry import FORMATS

    return [f.name for f in FORMATS if (f.read if readable else f.write) is not None]


def _open(args: argparse.Namespace) -> tuple:
    from ..slide import open_slide
    from ..store.files import open_store

    slide = open_slide(args.slide, mpp=args.mpp, backend=args.backend)
    return slide, open_store(slide, folder=args.labels)


def _info(args: argparse.Namespace) -> int:
    slide, store = _open(args)
    with slide, store:
        counts: dict[str, int] = {}
        for obj in store.iter_live():
            counts[obj.class_name] = counts.get(obj.class_name, 0) + 1
        mode = "read-only" if store.read_only else f"journal {store.journal}"
        print(f"{store.path} ({mode}): {store.count()} objects, "
              f"{store.count(deleted=True)} deleted (recoverable), {store.last_seq()} changes")
        for name, color in store.classes().items():
            print(f"  {name}\t{color}\t{counts.get(name, 0)}")
    return 0


def _import(args: argparse.Namespace) -> int:
    import sys

    from ..errors import AnnotationError
    from ..formats.registry import format_for_reading
    from ..pipeline.objects import image_of, import_objects

    if not args.file.is_file():
        raise AnnotationError(f"annotation file {args.file} does not exist")
    format_for_reading(args.file, name=args.format)  # said before the slide is opened
    slide, store = _open(args)
    with slide, store:
        ids, skipped = import_objects(store, args.file, default_class=args.class_name,
                                      image=image_of(slide), format=args.format)
        for line in skipped:
            print(f"napari-wsi-sam: skipped {line}", file=sys.stderr)
        print(f"{len(ids)} objects imported into {store.path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..formats.registry import check_export_path
    from ..pipeline.objects import export_objects, image_of

    check_export_path(args.out, name=args.format)
    slide, store = _open(args)
    with slide, store:
        count = export_objects(store, args.out, image=image_of(slide), classes=args.classes,
                               format=args.format)
    print(f"{count} objects written to {args.out}")
    return 0


def _export_labels(args: argparse.Namespace) -> int:
    from ..formats.ome_zarr_labels import export_ome_zarr_labels
    from ..store.rendering import check_shape

    slide, store = _open(args)
    with slide, store:
        rasters = _rasters(slide, store)
        check_shape(rasters, slide.dimensions)
        meta = export_ome_zarr_labels(rasters, args.out, mpp=slide.mpp, name=args.name,
                                      classes=args.classes, version=args.ngff)
    names = ", ".join(f"{p['label-value']}={p['class']}" for p in meta["properties"])
    print(f"wrote {args.out}/labels/{args.name} ({names or 'no classes'})")
    return 0


def _check(args: argparse.Namespace) -> int:
    slide, store = _open(args)
    with slide, store:
        store.integrity_check()
    print(f"{store.path}: ok")
    return 0


def _purge(args: argparse.Namespace) -> int:
    slide, store = _open(args)
    with slide, store:
        print(f"{store.purge()} deleted objects removed from {store.path}")
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    slide, store = _open(args)
    with slide, store:
        rasters = _rasters(slide, store)
        rasters.rebuild(store.classes())
        print(f"drew {len(store.classes())} class layers in {rasters.folder}")
    return 0


def _rasters(slide: Slide, store: ObjectStore) -> ObjectRasters:
    """The slide's label pyramid, drawn from the store."""
    from ..store.rendering import ObjectRasters

    w, h = slide.dimensions
    return ObjectRasters(store, shape=(h, w), downsamples=slide.downsamples)
