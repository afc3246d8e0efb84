"""Frozen expert models for distillation: eval mode, no gradients, GPFM's inputs and targets.

GPFM feeds every expert the student's unmasked 224 px ImageNet-normalised global crops as they
are (birkhoffkiki/GPFM ``pretrain/dinov2/train/ssl_meta_arch.py:210-221``), whatever the
expert's own preprocessing: ``preprocessing="shared"``, the default. ``preprocessing="own"``
re-normalises the crops to the expert's mean/std and resizes them to its input size (CONCH at
448 px with CLIP statistics), which the expert's authors would do but GPFM does not.

Targets (``expert_from_encoder``): the class token and final-norm patch tokens for ViT experts
(UNI and Phikon, as GPFM's ``fms.py:16-38``), and for CONCH its projected, L2-normalised image
embedding (``fms.py:48-58``: ``proj_contrast`` applied), not the zoo's CONCH embedding, which is
the unprojected one its authors recommend for downstream tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpfm.distill.augment import IMAGENET_MEAN, IMAGENET_STD
from gpfm.distill.errors import DistillConfigError
from gpfm.distill.precision import fp32_or_wider

if TYPE_CHECKING:
    from gpfm.backbone import Encoder

ExpertOutput = dict[str, Tensor | None]
ExpertPreprocessing = Literal["shared", "own"]


def _as_tokens(output: Any) -> ExpertOutput:
    if isinstance(output, Tensor):
        return {"cls": output, "patch": None}
    if isinstance(output, Mapping):
        return {"cls": output["cls"], "patch": output.get("patch")}
    raise TypeError(f"an expert must return a tensor or a dict with 'cls', got {type(output)}")


class FrozenExpert(nn.Module):
    """A frozen model that maps the student's global crops to its own tokens.

    The crops arrive normalised with ``source_mean`` / ``source_std`` (ImageNet's). With the
    defaults (``mean``/``std`` equal to the source's, no ``input_size``) they reach the model as
    they are, as in GPFM; otherwise they are re-normalised to the expert's ``mean`` / ``std``
    and resized to its ``input_size``. ``forward`` runs without gradients, in eval mode
    whatever ``train()`` says, under bf16 autocast on CUDA, and returns
    ``{"cls": (B, D_e), "patch": (B, N_e, D_e) or None}``.

    Args:
        model: the expert network.
        dim: its embedding size.
        forward: how to get tokens from it (default: ``model(x)``); may return a (B, D_e)
            tensor (CLS only) or a dict with ``cls`` and optionally ``patch``.
    """

    scale: Tensor
    shift: Tensor

    def __init__(
        self,
        model: nn.Module,
        dim: int,
        forward: Callable[[Tensor], Any] | None = None,
        input_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        source_mean: Sequence[float] = IMAGENET_MEAN,
        source_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.dim = dim
        self.token_fn = forward  # a plain attribute: not a second registration of ``model``
        self.input_size = input_size
        # x_expert = (x_source · s_std + s_mean − mean) / std = x_source · scale + shift
        scale = torch.tensor(source_std) / torch.tensor(std)
        shift = (torch.tensor(source_mean) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FrozenExpert:
        super().train(mode)
        self.model.eval()  # experts stay in eval mode (dropout, batch norm statistics)
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> ExpertOutput:
        x = images * self.scale + self.shift
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False
            )
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            tokens = _as_tokens(self.token_fn(x) if self.token_fn else self.model(x))
        return {k: (fp32_or_wider(v) if v is not None else None) for k, v in tokens.items()}


def expert_from_encoder(
    encoder: Encoder,
    preprocessing: ExpertPreprocessing = "shared",
    target: Literal["gpfm", "embedding"] = "gpfm",
) -> FrozenExpert:
    """A frozen expert from a ``gpfm.backbone`` zoo encoder.

    Args:
        encoder: e.g. ``load_encoder("uni", weights=...)``.
        preprocessing: ``"shared"`` (GPFM: the student's global crops as they are) or
            ``"own"`` (the encoder's own input size and mean/std).
        target: ``"gpfm"``, what GPFM distils from (CONCH: the projected, L2-normalised
            embedding), or ``"embedding"``, the zoo's recommended embedding.

    The CLS target is ``(B, D_e)``; patch targets are the final-norm patch tokens when they
    live in the same space as the CLS target (a CNN or CONCH gives the CLS term only).
    """
    if preprocessing not in ("shared", "own"):
        raise DistillConfigError(
            f"expert {encoder.name!r}: preprocessing must be 'shared' or 'own', "
            f"got {preprocessing!r}"
        )
    if target not in ("gpfm", "embedding"):
        raise DistillConfigError(
            f"expert {encoder.name!r}: target must be 'gpfm' or 'embedding', got {target!r}"
        )
    projected = target == "gpfm" and encoder.name == "conch"
    cls_target: Callable[[Tensor], Tensor] = encoder
    if projected:
        visual: Any = encoder.model

        def cls_target(images: Tensor) -> Tensor:
            embedding: Tensor = visual.encode_image(images, proj_contrast=True, normalize=True)
            return embedding

    def tokens(images: Tensor) -> ExpertOutput:
        embedding = cls_target(images)
        patch = None
        if encoder.has_tokens and not projected:
            patch_tokens = encoder.forward_tokens(images)["patch"]
            if patch_tokens.shape[-1] == embedding.shape[-1]:
                patch = patch_tokens
        return {"cls": embedding, "patch": patch}

    own = preprocessing == "own"
    return FrozenExpert(
        encoder,
        encoder.embed_dim,
        forward=tokens,
        input_size=encoder.input_size if own else None,
        mean=encoder.mean if own else IMAGENET_MEAN,
        std=encoder.std if own else IMAGENET_STD,
    )


def random_vit_expert(
    architecture: str,
    seed: int,
    preprocessing: ExpertPreprocessing = "shared",
    **overrides: Any,
) -> FrozenExpert:
    """A randomly initialised ``gpfm.backbone.create_vit`` expert, seeded (tests and demos)."""
    from gpfm.backbone import create_vit

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_vit(architecture, **overrides)
    return FrozenExpert(
        model,
        model.embed_dim,
        input_size=model.img_size if preprocessing == "own" else None,
    )
