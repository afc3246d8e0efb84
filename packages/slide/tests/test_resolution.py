import logging

import pytest

from gpfm.slide.errors import MissingResolutionError
from gpfm.slide.resolution import (
    mpp_from_aperio_description,
    mpp_from_physical_size,
    mpp_from_resolution_tag,
    plausible_mpp,
    resolve_mpp,
)


def test_resolution_tag_units_convert_to_micrometres_per_pixel():
    assert mpp_from_resolution_tag(20_000.0, "centimeter") == pytest.approx(0.5)
    assert mpp_from_resolution_tag(101_600.0, "inch") == pytest.approx(0.25)
    assert mpp_from_resolution_tag(4.0, "micrometer") == pytest.approx(0.25)


def test_resolution_tag_without_unit_gives_nothing():
    assert mpp_from_resolution_tag(72.0, None) is None
    assert mpp_from_resolution_tag(72.0, "none") is None


def test_ome_physical_size_defaults_to_micrometres():
    assert mpp_from_physical_size(0.25, None) == pytest.approx(0.25)
    assert mpp_from_physical_size(250.0, "nm") == pytest.approx(0.25)


def test_aperio_description_mpp():
    assert mpp_from_aperio_description("Aperio Image|AppMag = 20|MPP = 0.4990|Left = 3") == 0.499
    assert mpp_from_aperio_description("no resolution here") is None


@pytest.mark.parametrize("mpp", [0.01, 25.0, 352.8, float("nan")])
def test_implausible_mpp_is_treated_as_missing_with_a_warning(mpp, caplog):
    with caplog.at_level(logging.WARNING):
        assert plausible_mpp(mpp, "test tag", "slide.tif") is None
    if mpp == mpp:  # NaN is dropped silently
        assert "slide.tif" in caplog.text


def test_override_wins_and_missing_resolution_explains_how_to_pass_it():
    assert resolve_mpp(0.5, 0.25, "a.tif") == 0.25
    with pytest.raises(MissingResolutionError, match=r"a\.tif.*mpp=") as info:
        resolve_mpp(None, None, "a.tif")
    assert "--slide-mpp" in str(info.value)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf")])
def test_bad_override_is_rejected(bad):
    with pytest.raises(ValueError, match="mpp"):
        resolve_mpp(None, bad, "a.tif")
