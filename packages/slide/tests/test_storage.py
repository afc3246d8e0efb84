"""Coordinates files: round trip, layout, atomic writes, and damaged or foreign files.

``read_coords`` on a damaged or foreign file raises ``CoordsFileError`` naming the file and the
field, never a raw exception.
"""

from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpfm.slide import CoordsFileError, SlideError, Tiles, read_coords, write_coords
from gpfm.slide.storage import atomic_path


def _tiles() -> Tiles:
    return Tiles(
        coords=np.array([[0, 0], [448, 0], [896, 448]], dtype=np.int64),
        tissue_fraction=np.array([0.5, 0.75, 1.0], dtype=np.float32),
        mpp=0.5,
        patch_size=224,
        patch_size_level0=448,
        level=1,
        level_downsample=4.0,
        slide_mpp=0.25,
        slide_dimensions=(4000, 3000),
        overlap=0.0,
        min_tissue=0.5,
        slide_path="/data/slide.svs",
    )


def test_coords_round_trip(tmp_path):
    tiles = _tiles()
    path = write_coords(tmp_path / "coords" / "slide.h5", tiles)
    again = read_coords(path)
    assert np.array_equal(again.coords, tiles.coords)
    assert np.array_equal(again.tissue_fraction, tiles.tissue_fraction)
    for name in ("mpp", "patch_size", "patch_size_level0", "level", "level_downsample"):
        assert getattr(again, name) == getattr(tiles, name), name
    assert again.slide_mpp == 0.25
    assert again.slide_dimensions == (4000, 3000)
    assert again.slide_path == "/data/slide.svs"


def test_coords_file_has_the_attributes_clam_and_trident_read(tmp_path):
    path = write_coords(tmp_path / "slide.h5", _tiles())
    with h5py.File(path, "r") as h5:
        coords = h5["coords"]
        assert coords.dtype == np.int64 and coords.shape == (3, 2)
        attrs = coords.attrs
        assert attrs["patch_size"] == 224
        assert attrs["patch_level"] == 1
        assert list(attrs["downsample"]) == [4.0, 4.0]
        assert list(attrs["level_dim"]) == [1000, 750]
        assert attrs["patch_size_level0"] == 448
        assert attrs["target_mpp"] == 0.5 and attrs["slide_mpp"] == 0.25
        assert attrs["overlap"] == 0.0 and attrs["min_tissue"] == 0.5
        assert "gpfm_version" in attrs
        assert h5["tissue_fraction"].shape == (3,)


def test_no_temporary_file_is_left_behind(tmp_path):
    write_coords(tmp_path / "slide.h5", _tiles())
    assert [p.name for p in tmp_path.iterdir()] == ["slide.h5"]


def _write_half_then_fail(target):
    with atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")


def test_an_interrupted_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        _write_half_then_fail(tmp_path / "out.txt")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("complete")
    with pytest.raises(RuntimeError):
        _write_half_then_fail(target)
    assert target.read_text() == "complete"


def test_reading_a_file_that_is_not_coords_names_it(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(SlideError, match=r"bad\.h5"):
        read_coords(bad)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as h5:
        h5.create_dataset("coords", data=np.zeros((2, 2), np.int64))
    with pytest.raises(SlideError, match="re-tile"):
        read_coords(foreign)


def _valid(folder: Path, name: str = "slide.h5") -> Path:
    return write_coords(folder / name, _tiles())


def _read_or_typed_error(path: Path) -> Tiles | None:
    """The tiles, or None when reading raised ``CoordsFileError`` naming the file."""
    try:
        return read_coords(path)
    except CoordsFileError as error:
        message = str(error)
    assert path.name in message
    return None


def _read_fails(path: Path, *fields: str) -> str:
    with pytest.raises(CoordsFileError) as caught:
        read_coords(path)
    message = str(caught.value)
    assert path.name in message
    for field in fields:
        assert f"`{field}`" in message, message
    return message


def test_missing_and_non_hdf5_files_name_the_file(tmp_path):
    _read_fails(tmp_path / "absent.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    _read_fails(tmp_path / "text.h5")
    (tmp_path / "folder.h5").mkdir()
    _read_fails(tmp_path / "folder.h5")


def test_a_group_where_the_coords_dataset_should_be(tmp_path):
    path = tmp_path / "group.h5"
    with h5py.File(path, "w") as h5:
        h5.create_group("coords").create_dataset("x", data=np.zeros((2, 2)))
    assert "found a group" in _read_fails(path, "coords")


def test_dangling_and_external_links_in_place_of_coords(tmp_path):
    with h5py.File(tmp_path / "soft.h5", "w") as h5:
        h5["coords"] = h5py.SoftLink("/nowhere")
    _read_fails(tmp_path / "soft.h5", "coords")
    with h5py.File(tmp_path / "external.h5", "w") as h5:
        h5["coords"] = h5py.ExternalLink("missing.h5", "/coords")
    _read_fails(tmp_path / "external.h5")


@pytest.mark.parametrize(
    "data",
    [
        np.zeros((4, 3), np.int64),  # (N, 3): reshaping it to (-1, 2) would invent tiles
        np.zeros((6,), np.int64),
        np.zeros((2, 4), np.int64),
        np.zeros((3, 2, 1), np.int64),
        np.int64(7),
    ],
    ids=["Nx3", "flat", "2xN", "3d", "scalar"],
)
def test_coords_of_the_wrong_shape(tmp_path, data):
    path = tmp_path / "shape.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("coords", data=data).attrs.update({"target_mpp": 0.5})
    assert "shape" in _read_fails(path, "coords")


@pytest.mark.parametrize(
    "data",
    [
        np.array([[b"a", b"b"]]),
        np.array([[0.5, 1.0]]),
        np.array([[np.nan, 0.0]]),
        np.array([[True, False]]),
        np.array([[-448, 0]], np.int64),
        np.array([[2**63, 0]], np.uint64),
        np.zeros((1,), dtype=[("x", "i8"), ("y", "i8")]),
    ],
    ids=["bytes", "fractional", "nan", "bool", "negative", "huge", "compound"],
)
def test_coords_of_the_wrong_type_or_value(tmp_path, data):
    path = tmp_path / "dtype.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("coords", data=data).attrs.update({"target_mpp": 0.5})
    _read_fails(path, "coords")


def test_whole_number_float_coords_are_read_as_trident_reads_them(tmp_path):
    path = _valid(tmp_path)
    with h5py.File(path, "a") as h5:
        attrs = dict(h5["coords"].attrs)
        del h5["coords"]
        h5.create_dataset("coords", data=_tiles().coords.astype(np.float32)).attrs.update(attrs)
    assert read_coords(path).coords.tolist() == _tiles().coords.tolist()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patch_size", "224"),
        ("patch_size", 224.5),
        ("patch_size", 0),
        ("patch_size", np.array([224, 224])),
        ("patch_size", 10**9),
        ("patch_size_level0", np.nan),
        ("target_mpp", "0.5"),
        ("target_mpp", 0.0),
        ("target_mpp", -0.5),
        ("slide_mpp", np.inf),
        ("patch_level", -1),
        ("patch_level", 1.5),
        ("downsample", "4"),
        ("downsample", np.array([1.0, 1.0, 1.0])),
        ("level0_dim", 4000),
        ("level0_dim", np.array([4000.5, 3000])),
        ("overlap_fraction", 1.0),
        ("min_tissue", 2.0),
        ("slide_path", 7),
        ("format_version", 99),
    ],
)
def test_attributes_of_the_wrong_type_or_value_name_the_field(tmp_path, field, value):
    path = _valid(tmp_path)
    with h5py.File(path, "a") as h5:
        h5["coords"].attrs[field] = value
    message = _read_fails(path)
    assert f"`{field}`" in message or (field == "format_version" and "newer" in message)


def test_tissue_fraction_must_match_the_coords(tmp_path):
    path = _valid(tmp_path)
    with h5py.File(path, "a") as h5:
        del h5["tissue_fraction"]
        h5.create_group("tissue_fraction")
    _read_fails(path, "tissue_fraction")
    with h5py.File(path, "a") as h5:
        del h5["tissue_fraction"]
        h5["tissue_fraction"] = np.ones(5, np.float32)
    _read_fails(path, "tissue_fraction")


def test_tiles_outside_the_recorded_slide_are_refused(tmp_path):
    path = _valid(tmp_path)
    with h5py.File(path, "a") as h5:
        h5["coords"][0] = (4000, 0)
    assert "outside the 4000 x 3000" in _read_fails(path, "coords")


def test_a_coords_dataset_declaring_a_huge_size_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("coords", shape=(10**9, 2), dtype=np.int64, chunks=(1024, 2))
    _read_fails(path, "coords")


_ORIGINAL = {}


def _original_bytes(folder: Path) -> bytes:
    if "bytes" not in _ORIGINAL:
        _ORIGINAL["bytes"] = _valid(folder, "original.h5").read_bytes()
    return _ORIGINAL["bytes"]


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cut=st.floats(0.0, 0.999))
def test_truncated_files_give_the_typed_error(tmp_path, cut):
    original = _original_bytes(tmp_path)
    path = tmp_path / "truncated.h5"
    path.write_bytes(original[: int(len(original) * cut)])
    _read_fails(path)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_corrupted_bytes_read_correctly_or_give_the_typed_error(tmp_path, data):
    original = bytearray(_original_bytes(tmp_path))
    for _ in range(data.draw(st.integers(1, 8))):
        offset = data.draw(st.integers(0, len(original) - 1))
        original[offset] = data.draw(st.integers(0, 255))
    path = tmp_path / "corrupt.h5"
    path.write_bytes(bytes(original))
    tiles = _read_or_typed_error(path)
    if tiles is not None:
        assert tiles.coords.shape[1] == 2 and len(tiles.tissue_fraction) == len(tiles)


_HOSTILE = st.one_of(
    st.text(max_size=5),
    st.binary(max_size=5),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-5, 5000), min_size=0, max_size=4).map(np.array),
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=4).map(np.array),
)
_FIELDS = [
    "patch_size",
    "patch_size_level0",
    "patch_level",
    "downsample",
    "target_mpp",
    "slide_mpp",
    "overlap_fraction",
    "min_tissue",
    "level0_dim",
    "slide_path",
    "format_version",
    "level0_magnification",
    "custom_downsample",
]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(field=st.sampled_from(_FIELDS), value=_HOSTILE)
def test_any_attribute_value_reads_or_gives_the_typed_error(tmp_path, field, value):
    path = _valid(tmp_path, "hostile.h5")
    with h5py.File(path, "a") as h5:
        try:
            h5["coords"].attrs[field] = value
        except (TypeError, ValueError):  # h5py cannot store it: nothing to read
            return
    tiles = _read_or_typed_error(path)
    if tiles is not None:
        assert tiles.patch_size >= 1 and tiles.level_downsample > 0 and tiles.read_size >= 1
    # Every error is a SlideError, so callers that catch the package's root catch it.
    assert issubclass(CoordsFileError, SlideError)


@pytest.mark.parametrize("value", [5e-324, 0.0, -20, np.inf, "20", np.array([40, 20])])
def test_trident_magnifications_of_the_wrong_type_or_value(tmp_path, value):
    path = tmp_path / "trident.h5"
    with h5py.File(path, "w") as h5:
        coords = h5.create_dataset("coords", data=np.zeros((2, 2), np.int64))
        coords.attrs.update({"patch_size": 224, "level0_magnification": 40})
        coords.attrs["target_magnification"] = value
    _read_fails(path, "target_magnification")
