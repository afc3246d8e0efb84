"""Coordinates files that TRIDENT and CLAM read as we mean them, and theirs read by us.

Each peer's reading and writing logic is transcribed below from its lines and run on our files
(and on files written by its own convention), on a synthetic 0.25 µm/px slide tiled at 0.5 µm/px.

- TRIDENT, commit a91fa8490e0210ebbbe58452c3babe009e0ab7ca: ``trident/IO.py`` (``read_coords``
  :604-606, ``read_coords_legacy`` :638-643, ``coords_to_h5`` :646-688, ``save_h5`` :490-517),
  ``trident/wsi_objects/WSI.py`` (``get_best_level_and_custom_downsample`` :640-695, the route
  choice of ``extract_patch_features`` :929-949 and of ``dump_patches`` :842-864),
  ``trident/wsi_objects/WSIPatcher.py`` (``__init__`` :132-189, ``from_legacy_coords``
  :226-245, ``_prepare`` :366-371, ``get_tile_xy`` :381-397) and
  ``trident/wsi_objects/OpenSlideWSI.py`` (:64-74 attributes, :200 ``read_region``).
- CLAM, commit 53e2409d4a8189c682c173382964a85f114f923c: ``dataset_modules/dataset_h5.py``
  (``Whole_Slide_Bag_FP`` :63-67, :83-89), ``wsi_core/WholeSlideImage.py``
  (``_assertLevelDownsamples`` :361-369, ``process_contour`` :396-474) and
  ``utils/file_utils.py`` (``save_hdf5`` :16-34).

Tiles that overhang the slide's edge are left out of pixel comparisons: OpenSlide returns
transparent pixels there, which TRIDENT and CLAM turn black (``.convert('RGB')``) and we
composite onto white glass.

Note: at this commit TRIDENT's ``extract_patch_features`` builds its legacy patcher with
``coords_only=True`` (WSI.py:939) and then unpacks a tile from it (WSIPatcherDataset.py:15), so
that fallback fails on any legacy file; its legacy route is run here as ``dump_patches`` runs it.
"""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import openslide
import pytest
from PIL import Image

from gpfm.slide import (
    MissingResolutionError,
    make_synthetic_slide,
    open_slide,
    read_coords,
    read_tiles,
    tile,
    write_coords,
)
from gpfm.slide.cli import main
from gpfm.slide.reader import resize_tile
from gpfm.slide.storage import custom_downsample

# --- TRIDENT, transcribed ----------------------------------------------------------------------


def trident_read_coords(coords_path):
    # IO.py:604-606
    with h5py.File(coords_path, "r") as f:
        attrs = dict(f["coords"].attrs)
        coords = f["coords"][:]
    return attrs, coords


def trident_read_coords_legacy(coords_path):
    # IO.py:638-643
    with h5py.File(coords_path, "r") as f:
        patch_size = f["coords"].attrs["patch_size"]
        patch_level = f["coords"].attrs["patch_level"]
        custom_downsample = f["coords"].attrs.get("custom_downsample", 1)
        coords = f["coords"][:]
    return patch_size, patch_level, custom_downsample, coords


class TridentOpenSlideWSI:
    """The parts of TRIDENT's OpenSlideWSI that its patcher uses."""

    def __init__(self, slide_path):
        # OpenSlideWSI.py:64-74 (mpp from openslide.mpp-x, magnification from WSI.py:306-319)
        self.img = openslide.OpenSlide(str(slide_path))
        self.width, self.height = self.img.dimensions
        self.level_downsamples = self.img.level_downsamples
        self.mpp = float(self.img.properties["openslide.mpp-x"])
        self.mag = 40 if self.mpp < 0.3 else 20 if self.mpp < 0.6 else 10

    def get_dimensions(self):
        return self.width, self.height

    def read_region(self, location, level, size, read_as="pil"):
        # OpenSlideWSI.py:200
        return self.img.read_region(location, level, size).convert("RGB")

    def get_best_level_and_custom_downsample(self, downsample, tolerance=0.01):
        # WSI.py:670-695
        level_downsamples = self.level_downsamples
        for level, level_downsample in enumerate(level_downsamples):
            if abs(level_downsample - downsample) <= tolerance:
                return level, 1.0
        if downsample >= level_downsamples[0]:
            closest_level = None
            closest_downsample = None
            for level, level_downsample in enumerate(level_downsamples):
                if level_downsample <= downsample:
                    closest_level = level
                    closest_downsample = level_downsample
                else:
                    break
            if closest_level is not None:
                custom_downsample = downsample / closest_downsample
                return closest_level, custom_downsample
        else:
            for level, level_downsample in enumerate(level_downsamples):
                if level_downsample >= downsample:
                    custom_downsample = level_downsample / downsample
                    return level, custom_downsample
        raise ValueError(f"No suitable level found for downsample {downsample}.")


class TridentWSIPatcher:
    """WSIPatcher with ``custom_coords``, no mask, ``pil=True``."""

    def __init__(
        self, wsi, patch_size, src_pixel_size=None, dst_pixel_size=None, src_mag=None, dst_mag=None,
        custom_coords=None,
    ):  # fmt: skip
        # WSIPatcher.py:119-150
        self.wsi = wsi
        self.width, self.height = self.wsi.get_dimensions()
        self.patch_size_target = patch_size
        if src_pixel_size is not None:
            self.src_pixel_size = src_pixel_size
        elif src_mag is not None:
            self.src_pixel_size = 10 / src_mag
        if dst_pixel_size is not None:
            self.dst_pixel_size = dst_pixel_size
        elif dst_mag is not None:
            self.dst_pixel_size = 10 / dst_mag
        else:
            self.dst_pixel_size = self.src_pixel_size
        self.downsample = self.dst_pixel_size / self.src_pixel_size
        self.patch_size_src = round(patch_size * self.downsample)
        self.level, self.patch_size_level = self._prepare()
        # WSIPatcher.py:176-185
        coords = np.asarray(custom_coords)
        if not np.issubdtype(coords.dtype, np.integer):
            coords = np.round(coords).astype(np.int64)
        self.valid_coords = coords

    @classmethod
    def from_legacy_coords(cls, wsi, patch_size, patch_level, custom_downsample, coords):
        # WSIPatcher.py:226-245
        src_mpp, dst_mpp, src_mag, dst_mag = None, None, None, None
        downsample_ratio = wsi.level_downsamples[patch_level] * custom_downsample
        if wsi.mpp is not None:
            src_mpp = wsi.mpp
            dst_mpp = wsi.mpp * downsample_ratio
        else:
            src_mag = wsi.mag
            dst_mag = int(wsi.mag / downsample_ratio)
        return cls(wsi, patch_size, src_mpp, dst_mpp, src_mag, dst_mag, custom_coords=coords)

    def _prepare(self):
        # WSIPatcher.py:367-371
        level, _ = self.wsi.get_best_level_and_custom_downsample(self.downsample, tolerance=0.1)
        level_downsample = int(self.wsi.level_downsamples[level])
        patch_size_level = round(self.patch_size_src / level_downsample)
        return level, patch_size_level

    def get_tile_xy(self, x, y):
        # WSIPatcher.py:383-397
        tile = self.wsi.read_region(
            location=(x, y), level=self.level, size=(self.patch_size_level, self.patch_size_level)
        )
        if self.patch_size_target is not None:
            tile = tile.resize((self.patch_size_target, self.patch_size_target))
        assert x < self.width and y < self.height
        return tile, x, y

    def tiles(self):
        return [np.asarray(self.get_tile_xy(x, y)[0]) for x, y in self.valid_coords]

    def regions(self):
        """What get_tile_xy reads, before its resize."""
        size = (self.patch_size_level, self.patch_size_level)
        return [
            np.asarray(self.wsi.read_region((x, y), self.level, size)) for x, y in self.valid_coords
        ]


def trident_patcher(wsi, coords_path):
    """The patcher TRIDENT's extract_patch_features builds (WSI.py:929-949) and its route."""
    try:
        coords_attrs, coords = trident_read_coords(coords_path)
        patch_size = coords_attrs.get("patch_size", None)
        level0_magnification = coords_attrs.get("level0_magnification", None)
        target_magnification = coords_attrs.get("target_magnification", None)
        if None in (patch_size, level0_magnification, target_magnification):
            raise KeyError("Missing attributes in coords_attrs.")
    except (KeyError, FileNotFoundError, ValueError):
        return trident_legacy_patcher(wsi, coords_path), "legacy"
    patcher = TridentWSIPatcher(
        wsi, patch_size, src_mag=level0_magnification, dst_mag=target_magnification,
        custom_coords=coords,
    )  # fmt: skip
    return patcher, "trident"


def trident_legacy_patcher(wsi, coords_path):
    # WSIPatcher.py:267-270, as dump_patches calls it (WSI.py:854)
    patch_size, patch_level, custom_downsample, coords = trident_read_coords_legacy(coords_path)
    return TridentWSIPatcher.from_legacy_coords(
        wsi, patch_size, patch_level, custom_downsample, coords
    )


def trident_save_h5(save_path, assets, attributes=None, mode="w"):
    # IO.py:490-517
    with h5py.File(save_path, mode) as file:
        for key, val in assets.items():
            data_shape = val.shape
            data_type = val.dtype
            chunk_shape = (1,) + data_shape[1:]  # noqa: RUF005 (verbatim)
            maxshape = (None,) + data_shape[1:]  # noqa: RUF005 (verbatim)
            dset = file.create_dataset(
                key, shape=data_shape, maxshape=maxshape, chunks=chunk_shape, dtype=data_type
            )
            dset[:] = val
            if attributes is not None and key in attributes:
                for attr_key, attr_val in attributes[key].items():
                    if attr_val is None:
                        attr_val = "None"
                    dset.attrs[attr_key] = attr_val


def trident_coords_file(path, wsi, patch_size, target_mag, overlap=0):
    """A coords file as TRIDENT's extract_tissue_coords writes it (no tissue mask)."""
    # WSIPatcher.py:139-150 and :160-174: the row-major grid of the patcher
    downsample = (10 / target_mag) / (10 / wsi.mag)
    patch_size_src = round(patch_size * downsample)
    overlap_src = round(overlap * downsample)
    step = patch_size_src - overlap_src
    cols = int(np.ceil(wsi.width / step))
    rows = int(np.ceil(wsi.height / step))
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    coords = np.stack([cc.ravel() * step, rr.ravel() * step], axis=1).astype(np.int64)
    # IO.py:659-688
    attributes = {
        "patch_size": patch_size,
        "patch_size_level0": patch_size * wsi.mag // target_mag,
        "level0_magnification": wsi.mag,
        "target_magnification": target_mag,
        "overlap": overlap,
        "name": "synthetic",
        "savetodir": str(path.parent),
        "level0_width": wsi.width,
        "level0_height": wsi.height,
    }
    trident_save_h5(path, assets={"coords": coords}, attributes={"coords": attributes})
    return path


# --- CLAM, transcribed -------------------------------------------------------------------------


class ClamWholeSlideBagFP:
    """dataset_h5.py:48-89, without the torchvision transform."""

    def __init__(self, file_path, wsi):
        self.wsi = wsi
        self.file_path = file_path
        with h5py.File(self.file_path, "r") as f:
            dset = f["coords"]
            self.patch_level = f["coords"].attrs["patch_level"]
            self.patch_size = f["coords"].attrs["patch_size"]
            self.length = len(dset)

    def __getitem__(self, idx):
        with h5py.File(self.file_path, "r") as hdf5_file:
            coord = hdf5_file["coords"][idx]
        img = self.wsi.read_region(coord, self.patch_level, (self.patch_size, self.patch_size))
        return np.asarray(img.convert("RGB")), coord


def clam_level_downsamples(wsi):
    # WholeSlideImage.py:361-369
    level_downsamples = []
    dim_0 = wsi.level_dimensions[0]
    for downsample, dim in zip(wsi.level_downsamples, wsi.level_dimensions, strict=True):
        estimated_downsample = (dim_0[0] / float(dim[0]), dim_0[1] / float(dim[1]))
        if estimated_downsample != (downsample, downsample):
            level_downsamples.append(estimated_downsample)
        else:
            level_downsamples.append((downsample, downsample))
    return level_downsamples


def clam_save_hdf5(output_path, asset_dict, attr_dict=None, mode="a", chunk_size=32):
    # file_utils.py:16-34
    with h5py.File(output_path, mode) as file:
        for key, val in asset_dict.items():
            data_shape = val.shape
            data_type = val.dtype
            chunk_shape = (chunk_size,) + data_shape[1:]  # noqa: RUF005 (verbatim)
            maxshape = (None,) + data_shape[1:]  # noqa: RUF005 (verbatim)
            dset = file.create_dataset(
                key, shape=data_shape, maxshape=maxshape, chunks=chunk_shape, dtype=data_type
            )
            dset[:] = val
            if attr_dict is not None and key in attr_dict:
                for attr_key, attr_val in attr_dict[key].items():
                    dset.attrs[attr_key] = attr_val
    return output_path


def clam_coords_file(path, wsi, patch_level, patch_size, step_size):
    """create_patches_fp.py's file for one 'contour' covering the slide (no contour check)."""
    level_downsamples = clam_level_downsamples(wsi)
    level_dim = wsi.level_dimensions
    # WholeSlideImage.py:396 with cont=None (CLAM takes the patch level's size as the box)
    start_x, start_y, w, h = (0, 0, level_dim[patch_level][0], level_dim[patch_level][1])
    patch_downsample = (
        int(level_downsamples[patch_level][0]),
        int(level_downsamples[patch_level][1]),
    )
    stop_y, stop_x = start_y + h, start_x + w  # :402-404, use_padding=True
    # :443-449
    step_size_x = step_size * patch_downsample[0]
    step_size_y = step_size * patch_downsample[1]
    x_range = np.arange(start_x, stop_x, step=step_size_x)
    y_range = np.arange(start_y, stop_y, step=step_size_y)
    x_coords, y_coords = np.meshgrid(x_range, y_range, indexing="ij")
    results = np.array([x_coords.flatten(), y_coords.flatten()]).transpose()
    # :463-474
    attr = {
        "patch_size": patch_size,
        "patch_level": patch_level,
        "downsample": level_downsamples[patch_level],
        "downsampled_level_dim": tuple(np.array(level_dim[patch_level])),
        "level_dim": level_dim[patch_level],
        "name": "synthetic",
        "save_path": str(path.parent),
    }
    clam_save_hdf5(path, {"coords": results}, {"coords": attr}, mode="w")
    return path


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    """A synthetic 4000 x 3000 px slide at 0.25 µm/px, levels downsampled 1 and 4."""
    path = tmp_path_factory.mktemp("peers") / "synthetic.tiff"
    return make_synthetic_slide(path, 4000, 3000, mpp=0.25, seed=3).path


@pytest.fixture(scope="module")
def resampled(slide_path, tmp_path_factory):
    """Our coords file at 0.5 µm/px, 224 px: each tile is 448 level-0 px, resized."""
    with open_slide(slide_path) as slide:
        tiles = tile(slide, mpp=0.5, patch_size=224, min_tissue=0.5)
    assert tiles.patch_size_level0 == 448 and tiles.read_size == 448 and len(tiles) >= 8
    return write_coords(tmp_path_factory.mktemp("ours") / "resampled.h5", tiles)


def _our_tiles(slide_path, tiles) -> np.ndarray:
    with open_slide(slide_path) as slide:
        return np.stack([rgb for _, rgb in read_tiles(slide, tiles)])


def _inside(coords: np.ndarray, size_level0: int, dimensions) -> np.ndarray:
    coords = np.asarray(coords)
    return (coords[:, 0] + size_level0 <= dimensions[0]) & (
        coords[:, 1] + size_level0 <= dimensions[1]
    )


def _assert_same_regions(patcher, tiles, ours: np.ndarray, inside: np.ndarray) -> None:
    """TRIDENT reads the regions we read: resized our way, they give our tiles exactly."""
    regions = [r for r, keep in zip(patcher.regions(), inside, strict=True) if keep]
    resized = np.stack([resize_tile(region, tiles.patch_size) for region in regions])
    assert np.array_equal(resized, ours[inside])


def _mean_differences(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Mean absolute difference (grey levels) per tile."""
    return np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).mean(axis=(1, 2, 3))


# --- our files, their readers ------------------------------------------------------------------


def test_trident_takes_its_own_route_on_our_file_and_reads_our_tiles(slide_path, resampled):
    tiles = read_coords(resampled)
    patcher, route = trident_patcher(TridentOpenSlideWSI(slide_path), resampled)
    assert route == "trident"
    assert np.array_equal(patcher.valid_coords, tiles.coords)
    assert patcher.patch_size_src == tiles.patch_size_level0
    inside = _inside(tiles.coords, tiles.patch_size_level0, tiles.slide_dimensions)
    ours = _our_tiles(slide_path, tiles)
    _assert_same_regions(patcher, tiles, ours, inside)
    differences = _mean_differences(ours[inside], np.stack(patcher.tiles())[inside])
    assert differences.max() < 2.0, differences  # bicubic (theirs) vs bilinear (ours)


def test_tridents_legacy_route_reads_our_tiles(slide_path, resampled):
    tiles = read_coords(resampled)
    patcher = trident_legacy_patcher(TridentOpenSlideWSI(slide_path), resampled)
    assert patcher.patch_size_src == tiles.patch_size_level0 == 448
    inside = _inside(tiles.coords, tiles.patch_size_level0, tiles.slide_dimensions)
    ours = _our_tiles(slide_path, tiles)
    _assert_same_regions(patcher, tiles, ours, inside)
    differences = _mean_differences(ours[inside], np.stack(patcher.tiles())[inside])
    assert differences.max() < 2.0, differences


def test_without_custom_downsample_the_legacy_route_reads_half_the_field(
    slide_path, resampled, tmp_path
):
    # What the issue measured on format-1 files: 224 level-0 px per tile instead of 448.
    copy = tmp_path / "old.h5"
    copy.write_bytes(resampled.read_bytes())
    with h5py.File(copy, "a") as h5:
        del h5["coords"].attrs["custom_downsample"]
    tiles = read_coords(resampled)
    patcher = trident_legacy_patcher(TridentOpenSlideWSI(slide_path), copy)
    assert patcher.patch_size_src == 224
    inside = _inside(tiles.coords, tiles.patch_size_level0, tiles.slide_dimensions)
    theirs = np.stack(patcher.tiles())[inside]
    assert _mean_differences(_our_tiles(slide_path, tiles)[inside], theirs).mean() > 10


def test_clam_cannot_express_resampled_tiles_and_the_file_says_so(slide_path, resampled):
    tiles = read_coords(resampled)
    with h5py.File(resampled, "r") as h5:
        assert h5["coords"].attrs["custom_downsample"] == pytest.approx(2.0)
    bag = ClamWholeSlideBagFP(resampled, openslide.OpenSlide(str(slide_path)))
    image, _ = bag[0]
    assert image.shape == (224, 224, 3)  # 224 level-0 px: half our tile's field of view
    assert custom_downsample(tiles) == pytest.approx(2.0)


@pytest.fixture(scope="module")
def native(slide_path, tmp_path_factory):
    """Our coords file tiled with native_level=True near 1 µm/px: level 1, no resizing."""
    with open_slide(slide_path) as slide:
        tiles = tile(slide, mpp=1.0, patch_size=128, min_tissue=0.25, native_level=True)
        assert tiles.level == 1 and tiles.mpp == pytest.approx(slide.mpp * 4)
    assert tiles.read_size == tiles.patch_size == 128 and custom_downsample(tiles) == 1.0
    return write_coords(tmp_path_factory.mktemp("native") / "native.h5", tiles)


def test_clam_reads_native_level_tiles_exactly(slide_path, native):
    tiles = read_coords(native)
    ours = _our_tiles(slide_path, tiles)
    bag = ClamWholeSlideBagFP(native, openslide.OpenSlide(str(slide_path)))
    inside = _inside(tiles.coords, tiles.patch_size_level0, tiles.slide_dimensions)
    for index in np.flatnonzero(inside):
        image, coord = bag[index]
        assert np.array_equal(coord, tiles.coords[index])
        assert np.array_equal(image, ours[index])


def test_trident_reads_native_level_tiles_exactly_on_both_routes(slide_path, native):
    tiles = read_coords(native)
    wsi = TridentOpenSlideWSI(slide_path)
    inside = _inside(tiles.coords, tiles.patch_size_level0, tiles.slide_dimensions)
    ours = _our_tiles(slide_path, tiles)[inside]
    for patcher in (trident_patcher(wsi, native)[0], trident_legacy_patcher(wsi, native)):
        assert patcher.level == 1 and patcher.patch_size_level == 128
        assert np.array_equal(np.stack(patcher.tiles())[inside], ours)


def test_the_cli_tiles_at_a_native_level(slide_path, tmp_path):
    assert main(["tile", str(slide_path), "--out", str(tmp_path), "--mpp", "0.9",
                 "--patch-size", "128", "--native-level"]) == 0  # fmt: skip
    with h5py.File(tmp_path / "coords" / "synthetic.h5", "r") as h5:
        attrs = h5["coords"].attrs
        assert attrs["patch_level"] == 1 and attrs["custom_downsample"] == 1.0
        assert attrs["target_mpp"] == pytest.approx(1.0)  # the level's true 0.25 x 4 µm/px
        assert attrs["patch_size_level0"] == 512


# --- their files, our reader -------------------------------------------------------------------


def test_a_trident_file_reads_into_the_tiles_trident_reads(slide_path, tmp_path):
    wsi = TridentOpenSlideWSI(slide_path)
    path = trident_coords_file(tmp_path / "trident.h5", wsi, patch_size=224, target_mag=20)
    with open_slide(slide_path) as slide:
        tiles = read_coords(path, slide=slide)
    assert tiles.mpp == 0.5 and tiles.slide_mpp == 0.25 and tiles.patch_size_level0 == 448
    patcher, route = trident_patcher(wsi, path)
    assert route == "trident" and np.array_equal(tiles.coords, patcher.valid_coords)
    inside = _inside(tiles.coords, 448, tiles.slide_dimensions)
    theirs = np.stack([np.asarray(patcher.get_tile_xy(x, y)[0]) for x, y in tiles.coords[inside]])
    subset = dataclasses.replace(
        tiles, coords=tiles.coords[inside], tissue_fraction=tiles.tissue_fraction[inside]
    )
    assert _mean_differences(_our_tiles(slide_path, subset), theirs).max() < 2.0


@pytest.mark.parametrize(("patch_level", "patch_size"), [(0, 256), (1, 128)])
def test_a_clam_file_reads_into_exactly_the_tiles_clam_reads(
    slide_path, tmp_path, patch_level, patch_size
):
    reader = openslide.OpenSlide(str(slide_path))
    path = clam_coords_file(tmp_path / "clam.h5", reader, patch_level, patch_size, patch_size)
    with open_slide(slide_path) as slide:
        tiles = read_coords(path, slide=slide)
    assert tiles.level == patch_level and tiles.read_size == tiles.patch_size == patch_size
    assert tiles.mpp == pytest.approx(0.25 * reader.level_downsamples[patch_level])
    ours = _our_tiles(slide_path, tiles)
    bag = ClamWholeSlideBagFP(path, reader)
    inside = _inside(tiles.coords, tiles.patch_size_level0, tiles.slide_dimensions)
    assert inside.sum() >= 4
    for index in np.flatnonzero(inside):
        image, coord = bag[index]
        assert np.array_equal(coord, tiles.coords[index])
        assert np.array_equal(image, ours[index])


def test_a_clam_file_needs_the_slide_for_its_resolution(slide_path, tmp_path):
    reader = openslide.OpenSlide(str(slide_path))
    path = clam_coords_file(tmp_path / "clam.h5", reader, 0, 256, 256)
    with pytest.raises(MissingResolutionError, match=r"clam\.h5: a CLAM coordinates file"):
        read_coords(path)


# --- a real slide --------------------------------------------------------------------------


def test_trident_reads_our_tiles_of_a_real_slide(shared_slides, tmp_path):
    slide_path = shared_slides / "CMU-1-Small-Region.svs"
    with open_slide(slide_path) as slide:
        tiles = tile(slide, mpp=1.0, patch_size=224, min_tissue=0.5)
    path = write_coords(tmp_path / "cmu.h5", tiles)
    patcher, route = trident_patcher(TridentOpenSlideWSI(slide_path), path)
    assert route == "trident" and patcher.patch_size_src == tiles.patch_size_level0
    inside = _inside(tiles.coords, tiles.patch_size_level0, tiles.slide_dimensions)
    assert inside.sum() >= 4
    ours = _our_tiles(slide_path, tiles)
    _assert_same_regions(patcher, tiles, ours, inside)
    # Real tissue has more fine detail than the synthetic slide: the filters differ more.
    differences = _mean_differences(ours[inside], np.stack(patcher.tiles())[inside])
    assert differences.max() < 5.0, differences


def test_pil_resizes_with_bicubic_by_default():
    # TRIDENT's get_tile_xy relies on PIL's default filter; the 2-grey-level bound assumes it.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    assert np.array_equal(
        np.asarray(image.resize((32, 32))),
        np.asarray(image.resize((32, 32), Image.Resampling.BICUBIC)),
    )
