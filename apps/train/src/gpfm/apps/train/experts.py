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
        encoder,
        encoder.embed_dim,
        forward=_zoo_tokens(encoder),
        input_size=encoder.input_size,
        mean=encoder.mean,
        std=encoder.std,
    )


def _zoo_tokens(encoder: Any) -> Any:
    """CLS target = the embedding the model's authors recommend; patch target = the final-norm
    patch tokens, when the model has them in the same space (a CNN, or CONCH whose embedding is
    projected to another size, gives the CLS term only)."""

    def forward(images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        embedding = encoder(images)
        patch = None
        if encoder.has_tokens:
            tokens = encoder.forward_tokens(images)
            if tokens["patch"].shape[-1] == embedding.shape[-1]:
                patch = tokens["patch"]
        return {"cls": embedding, "patch": patch}

    return forward
