"""``Encoder``: a patch encoder with its name, embedding size, preprocessing and weights' hash.

    encoder = load_encoder("uni", weights="pytorch_model.bin")
    batch = torch.stack([encoder.transform(tile) for tile in tiles])  # uint8 RGB tiles
    features = encoder(batch)                                 # (B, encoder.embed_dim)
    tokens = encoder.forward_tokens(batch)                    # {"cls", "patch", "registers"}

The embedding is the one the model's authors recommend for downstream use (e.g. the final-norm
class token for GPFM and UNI, class token + mean patch token for Virchow2, CONCH's attention-pooled
embedding before its contrastive projection). ``forward_tokens`` gives the final-norm tokens of
models that have them: ``cls`` (B, D), ``patch`` (B, N, D) in row-major grid order, ``registers``
(B, R, D), R possibly 0.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from gpfm.backbone.weights import WeightsFile
from gpfm.backbone.zoo.preprocessing import Preprocessing

Tokens = dict[str, Tensor]
EmbedFn = Callable[[nn.Module, Tensor], Tensor]
"""``(model, batch) -> (B, embed_dim)``."""
TokensFn = Callable[[nn.Module, Tensor], Tokens]
"""``(model, batch) -> {"cls", "patch", "registers"}``."""


def call_model(model: nn.Module, batch: Tensor) -> Tensor:
    """The default embedding: the model's own ``forward``."""
    output = model(batch)
    if not isinstance(output, Tensor):
        raise TypeError(
            f"{type(model).__name__}.forward returned {type(output).__name__}, not a tensor; "
            "register the encoder with embedding= to say how to get the embedding"
        )
    return output


def model_tokens(model: nn.Module) -> TokensFn | None:
    """``model.forward_tokens`` as a ``TokensFn`` when the model has one."""
    if not callable(getattr(model, "forward_tokens", None)):
        return None

    def tokens(module: nn.Module, batch: Tensor) -> Tokens:
        network: Any = module
        result: Tokens = network.forward_tokens(batch)
        return result

    return tokens


class Encoder(nn.Module):
    """A patch encoder: ``encoder(batch) -> (B, embed_dim)`` on a batch made by ``transform``.

    Attributes:
        name: the zoo name (or the exported folder's name).
        embed_dim: size of the embedding ``__call__`` returns.
        preprocessing: the authors' resize / crop / normalisation, as data.
        model: the network, with its published parameter names.
        weights: the file the weights came from and its SHA-256; None for random weights.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        embed_dim: int,
        preprocessing: Preprocessing,
        *,
        embedding: EmbedFn | None = None,
        tokens: TokensFn | None = None,
        weights: WeightsFile | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.embed_dim = embed_dim
        self.preprocessing = preprocessing
        self.weights = weights
        self._embedding = embedding or call_model
        self._tokens = tokens if tokens is not None else model_tokens(model)
        self.train(model.training)  # an encoder built around an eval-mode network is in eval

    @cached_property
    def transform(self) -> v2.Compose:
        """torchvision v2 transform: uint8 RGB tile(s) -> normalised float32 model input."""
        return self.preprocessing.transform()

    @property
    def input_size(self) -> int:
        """Side of the square input the model expects, in pixels."""
        return self.preprocessing.input_size

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean the input is normalised with (RGB, in [0, 1] units)."""
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel standard deviation the input is normalised with."""
        return self.preprocessing.std

    @property
    def has_tokens(self) -> bool:
        """Whether ``forward_tokens`` is available (transformers: yes; the ResNet: no)."""
        return self._tokens is not None

    @property
    def weights_sha256(self) -> str | None:
        """SHA-256 of the weights file, for the provenance of feature files."""
        return self.weights.sha256 if self.weights is not None else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _prepare(self, batch: Tensor) -> Tensor:
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(
                f"{self.name} expects a (B, 3, H, W) batch made by encoder.transform, got "
                f"shape {tuple(batch.shape)}"
            )
        if not batch.is_floating_point():
            raise TypeError(
                f"{self.name} got a {batch.dtype} batch; pass the tiles through "
                "encoder.transform first (it scales uint8 to normalised float)"
            )
        return batch.to(device=self.device, dtype=self.dtype)

    def forward(self, batch: Tensor) -> Tensor:
        """Embeddings (B, embed_dim) of a float batch already passed through ``transform``."""
        embedding = self._embedding(self.model, self._prepare(batch))
        if embedding.shape != (batch.shape[0], self.embed_dim):
            raise RuntimeError(
                f"{self.name} produced embeddings of shape {tuple(embedding.shape)}, expected "
                f"({batch.shape[0]}, {self.embed_dim})"
            )
        return embedding

    def forward_tokens(self, batch: Tensor) -> Tokens:
        """Final-norm tokens ``{"cls": (B, D), "patch": (B, N, D), "registers": (B, R, D)}``.

        Raises:
            TypeError: the model has no tokens (a CNN).
        """
        if self._tokens is None:
            raise TypeError(f"{self.name} is not a transformer and has no tokens")
        return self._tokens(self.model, self._prepare(batch))

    def extra_repr(self) -> str:
        source = self.weights.source if self.weights is not None else "random weights"
        return f"name={self.name!r}, embed_dim={self.embed_dim}, weights={source!r}"
