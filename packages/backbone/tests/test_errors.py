"""Every gpfm-backbone exception derives from ``BackboneError``."""

from __future__ import annotations

import pytest

from gpfm.backbone import (
    BackboneError,
    CheckpointError,
    ChecksumMismatchError,
    MissingWeightsError,
    UnknownEncoderError,
    WeightsError,
    WeightsNotFoundError,
    load_encoder,
)


@pytest.mark.parametrize(
    "error",
    [
        CheckpointError,
        WeightsError,
        WeightsNotFoundError,
        ChecksumMismatchError,
        MissingWeightsError,
        UnknownEncoderError,
    ],
)
def test_every_error_has_the_package_root(error):
    assert issubclass(error, BackboneError)


def test_an_unknown_encoder_is_caught_by_the_root():
    with pytest.raises(BackboneError, match="no-such-encoder"):
        load_encoder("no-such-encoder")
