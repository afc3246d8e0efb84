"""Tissue outlines: valid RFC 7946 GeoJSON that QuPath imports, for any mask."""

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gpfm.slide.tissue import TissueMask, _join_corner_contacts


def _signed_area(ring: list[list[float]]) -> float:
    """Shoelace area on the numbers as written (positive: counter-clockwise, RFC 7946 exterior)."""
    points = np.asarray(ring)
    x, y = points[:, 0], points[:, 1]
    return float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) / 2)


def _segments(ring: list[list[float]]) -> np.ndarray:
    points = np.asarray(ring)
    return np.stack([points[:-1], points[1:]], axis=1)  # (n, 2 ends, 2)


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (
        b[..., 0] - o[..., 0]
    )


def _touching(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(n, m) bool: segment i of ``first`` meets segment j of ``second`` (closed segments)."""
    p, q = first[:, None, 0], first[:, None, 1]
    r, s = second[None, :, 0], second[None, :, 1]
    d1, d2 = _cross(r, s, p), _cross(r, s, q)
    d3, d4 = _cross(p, q, r), _cross(p, q, s)
    proper = (d1 * d2 < 0) & (d3 * d4 < 0)

    def on(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
        low, high = np.minimum(a, b), np.maximum(a, b)
        inside = np.all((c >= low - 1e-9) & (c <= high + 1e-9), axis=-1)
        return (np.abs(d) < 1e-9) & inside

    return proper | on(r, s, p, d1) | on(r, s, q, d2) | on(p, q, r, d3) | on(p, q, s, d4)


def _inside(point: np.ndarray, ring: list[list[float]]) -> bool:
    segments = _segments(ring)
    (x0, y0), (x1, y1) = segments[:, 0].T, segments[:, 1].T
    crosses = (y0 > point[1]) != (y1 > point[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        at = x0 + (point[1] - y0) * (x1 - x0) / (y1 - y0)
    return bool(np.count_nonzero(crosses & (point[0] < at)) % 2)


def _assert_valid_ring(ring: list[list[float]]) -> None:
    assert len(ring) >= 4 and ring[0] == ring[-1]  # RFC 7946 3.1.6
    assert all(len(p) == 2 and all(np.isfinite(p)) for p in ring)
    segments = _segments(ring)
    n = len(segments)
    meets = _touching(segments, segments)
    neighbours = np.eye(n, dtype=bool) | np.eye(n, k=1, dtype=bool) | np.eye(n, k=-1, dtype=bool)
    neighbours[0, -1] = neighbours[-1, 0] = True
    assert not (meets & ~neighbours).any(), "the ring intersects itself"


def assert_valid_geojson(geojson: dict) -> None:
    """RFC 7946 FeatureCollection of (Multi)Polygons, OGC-valid, with QuPath's properties."""
    json.loads(json.dumps(geojson))  # plain JSON types only
    assert geojson["type"] == "FeatureCollection" and "crs" not in geojson
    for feature in geojson["features"]:
        assert feature["type"] == "Feature"
        assert feature["properties"]["objectType"] == "annotation"
        classification = feature["properties"]["classification"]
        assert isinstance(classification["name"], str) and len(classification["color"]) == 3
        geometry = feature["geometry"]
        assert geometry["type"] in ("Polygon", "MultiPolygon")
        polygons = (
            [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        )
        for exterior, *holes in polygons:
            _assert_valid_ring(exterior)
            assert _signed_area(exterior) > 0, "exterior rings are counter-clockwise"
            for hole in holes:
                _assert_valid_ring(hole)
                assert _signed_area(hole) < 0, "holes are clockwise"
                assert not _touching(_segments(exterior), _segments(hole)).any()
                assert _inside(np.asarray(hole[0]), exterior), "a hole lies in its exterior"


def _covered(geojson: dict, point: np.ndarray) -> bool:
    for feature in geojson["features"]:
        exterior, *holes = feature["geometry"]["coordinates"]
        if _inside(point, exterior) and not any(_inside(point, hole) for hole in holes):
            return True
    return False


def _square_with_hole() -> TissueMask:
    mask = np.zeros((100, 120), bool)
    mask[10:60, 20:80] = True
    mask[30:40, 40:50] = False
    return TissueMask(mask=mask, mpp=8.0, downsample=16.0, slide_dimensions=(1920, 1600))


def test_outlines_are_valid_geojson_with_the_properties_qupath_reads():
    geojson = _square_with_hole().to_geojson(name="Tissue", color=(0, 200, 0))
    assert_valid_geojson(geojson)
    (feature,) = geojson["features"]
    assert feature["properties"]["classification"] == {"name": "Tissue", "color": [0, 200, 0]}
    assert len(feature["geometry"]["coordinates"]) == 2  # exterior and one hole


def test_thin_strips_single_pixels_and_corner_contacts_give_valid_rings():
    mask = np.zeros((12, 12), bool)
    mask[1, 1:10] = True  # a one-pixel strip
    mask[4, 4] = True  # a lone pixel
    mask[6, 6] = mask[7, 7] = mask[8, 6] = True  # pixels touching only at corners
    mask[9:12, 9:12] = True
    mask[10, 10] = False  # a one-pixel hole in a one-pixel wall
    geojson = TissueMask(mask, 8.0, 4.0, (48, 48)).to_geojson()
    assert_valid_geojson(geojson)
    for row, col in zip(*np.nonzero(mask), strict=True):
        assert _covered(geojson, (np.array([col, row]) + 0.5) * 4.0)


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 14), st.integers(1, 14))))
def test_any_mask_gives_valid_outlines_that_cover_its_tissue(mask):
    geojson = TissueMask(mask, 8.0, 16.0, (mask.shape[1] * 16, mask.shape[0] * 16)).to_geojson()
    assert_valid_geojson(geojson)
    # The outline covers exactly the mask with its corner contacts joined.
    joined = _join_corner_contacts(mask).astype(bool)
    for row in range(mask.shape[0]):
        for col in range(mask.shape[1]):
            centre = (np.array([col, row]) + 0.5) * 16.0
            assert _covered(geojson, centre) == joined[row, col]


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 14), st.integers(1, 14))))
def test_joining_corner_contacts_only_adds_pixels_between_tissue(mask):
    joined = _join_corner_contacts(mask).astype(bool)
    assert (joined | ~mask).all()  # no tissue lost
    a, b, c, d = joined[:-1, :-1], joined[:-1, 1:], joined[1:, :-1], joined[1:, 1:]
    assert not ((a == d) & (b == c) & (a != b)).any()  # no corner-only contact left
    padded = np.pad(joined, 1)
    side_neighbours = (
        padded[:-2, 1:-1].astype(int) + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    )
    assert (side_neighbours[joined & ~mask] >= 2).all()  # each added pixel bridges two sides
