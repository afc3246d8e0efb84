"""Frozen experts from the configuration: zoo encoders, or random architectures for tests."""

from __future__ import annotations

from typing import Any

import torch

from gpfm.apps.train.config import ExpertConfig
from gpfm.backbone import VIT_ARCHITECTURES, create_vit
from gpfm.distill import FrozenExpert


def build_expert(config: ExpertConfig, seed: int) -> FrozenExpert:
    """A ``FrozenExpert`` for one configured expert.

    A ``create_vit`` architecture name with ``random_init: true`` gives a randomly initialised
    ViT (seeded; tests and demos). Anything else is loaded from gpfm.backbone's encoder zoo with
    its weights, preprocessing and tokens.
    """
    if config.encoder in VIT_ARCHITECTURES and config.random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_vit(config.encoder, **config.overrides)
        return FrozenExpert(model, model.embed_dim, input_size=model.img_size)
    from gpfm.backbone import load_encoder

    encoder = load_encoder(config.encoder, weights=config.weights, random_init=config.random_init)
    return FrozenExpert(
        encoder.model,
        encoder.embed_dim,
        forward=_zoo_tokens(encoder),
        input_size=encoder.input_size,
        mean=encoder.mean,
        std=encoder.std,
    )


def _zoo_tokens(encoder: Any) -> Any:
    def forward(images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        tokens = encoder.forward_tokens(images)
        return {"cls": encoder(images), "patch": tokens.get("patch") if tokens else None}

    return forward
