"""Features of ROI images (a folder, a list of files, or arrays) with an encoder's own transform.

    paths = image_files("pcam/tumor")                  # sorted; the rows' order
    features = encode_images(encoder, paths)           # (N, embed_dim) float32, on the CPU

Images are decoded and transformed in DataLoader workers (``num_workers``) and encoded in
batches without gradients (bf16 autocast on CUDA).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from gpfm.backbone.images import ImageReadError, image_files
from gpfm.backbone.zoo.encoder import Encoder

logger = logging.getLogger(__name__)

ImageSource = str | os.PathLike[str] | Sequence[str | os.PathLike[str] | np.ndarray | Image.Image]


class _Images(Dataset[Any]):
    def __init__(self, items: Sequence[Any], transform: Any) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        item = self.items[index]
        if isinstance(item, str | os.PathLike):
            try:
                with Image.open(item) as opened:
                    item = opened.convert("RGB")
            except OSError as error:
                raise ImageReadError(f"{item}: cannot read the image ({error})") from None
        elif isinstance(item, Image.Image):
            item = item.convert("RGB")
        return self.transform(item)


@torch.no_grad()
def encode_images(
    encoder: Encoder,
    images: ImageSource,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Embeddings (N, ``encoder.embed_dim``) float32 on the CPU, one row per image, in order.

    Args:
        encoder: a ``load_encoder`` result; its own ``transform`` prepares each image.
        images: a folder (its ``image_files``, sorted), or a sequence of image files, uint8
            (H, W, 3) RGB arrays or PIL images, of any size the transform accepts.
        batch_size: images per forward pass.
        num_workers: DataLoader processes decoding and transforming images (0: this one).
        progress: a progress bar over batches.

    Raises:
        ImageReadError: a folder without images, or a file that cannot be decoded.
    """
    items: Sequence[Any] = (
        image_files(images) if isinstance(images, str | os.PathLike) else list(images)
    )
    loader = DataLoader(
        _Images(items, encoder.transform),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=encoder.device.type == "cuda",
    )
    chunks = []
    cuda = encoder.device.type == "cuda"
    for batch in tqdm(
        loader, desc=f"encoding with {encoder.name}", unit="batch", disable=not progress
    ):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            chunks.append(encoder(batch.to(encoder.device, non_blocking=True)).float().cpu())
    logger.info("encoded %d images with %s", len(items), encoder.name)
    if not chunks:
        return torch.zeros(0, encoder.embed_dim)
    return torch.cat(chunks)
