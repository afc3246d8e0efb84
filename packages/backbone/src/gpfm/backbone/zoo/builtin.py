"""Importing this module registers every built-in zoo entry (one module per model family)."""

from gpfm.backbone.zoo import (  # noqa: F401
    conch,
    ctranspath,
    gigapath,
    gpfm_vit,
    hoptimus,
    phikon,
    plip,
    resnet,
    uni,
    virchow,
)
