"""iBOT's block masking and the multi-crop collate function."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class BlockMaskingGenerator:
    """Masks of roughly ``num_masking_patches`` patches made of random rectangular blocks.

    Blocks cover at least ``min_num_patches`` patches, with aspect ratios between
    ``min_aspect`` and 1 / ``min_aspect`` (log-uniform), as in BEiT / iBOT / DINOv2.
    """

    def __init__(
        self,
        grid: tuple[int, int],
        max_num_patches: float | None = None,
        min_num_patches: int = 4,
        min_aspect: float = 0.3,
    ) -> None:
        self.height, self.width = grid
        self.num_patches = self.height * self.width
        self.max_num_patches = max_num_patches or 0.5 * self.num_patches
        self.min_num_patches = min_num_patches
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def _block(self, mask: np.ndarray, budget: int, rng: random.Random) -> int:
        for _ in range(10):
            area = rng.uniform(self.min_num_patches, max(self.min_num_patches, budget))
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if 0 < h < self.height and 0 < w < self.width:
                top = rng.randint(0, self.height - h)
                left = rng.randint(0, self.width - w)
                window = mask[top : top + h, left : left + w]
                added = h * w - int(window.sum())
                if 0 < added <= budget:
                    window[:] = True
                    return added
        return 0

    def __call__(self, num_masking_patches: int, rng: random.Random | None = None) -> np.ndarray:
        """A (height, width) bool mask with about ``num_masking_patches`` True."""
        rng = rng or random.Random()
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, int(self.max_num_patches))
            added = self._block(mask, budget, rng)
            if added == 0:
                break
            count += added
        return mask


def collate_multicrop(
    samples: Sequence[dict[str, Any]],
    mask_generator: BlockMaskingGenerator,
    mask_ratio: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """Batch multi-crop samples and draw iBOT masks for a fraction of the global crops.

    ``samples``: dicts with ``global_crops`` (list of 2 tensors) and ``local_crops`` (list).
    Returns ``global_crops`` (2B, 3, H, W: all first crops, then all second crops),
    ``local_crops`` (n_local·B, 3, h, w), ``masks`` (2B, N) bool, ``mask_weights`` (M,) with
    1 / (masked patches of that image) for each of the M masked patches, and ``n_global`` /
    ``n_local`` (crops per sample).

    A fraction ``mask_probability`` of the global crops is masked, with ratios spread evenly
    over ``mask_ratio`` so that every batch sees the whole range.
    """
    rng = rng or random.Random()
    n_global = len(samples[0]["global_crops"])
    n_local = len(samples[0]["local_crops"])
    global_crops = torch.stack([s["global_crops"][i] for i in range(n_global) for s in samples])
    local_crops = (
        torch.stack([s["local_crops"][i] for i in range(n_local) for s in samples])
        if n_local
        else torch.empty(0)
    )
    total = len(global_crops)
    n_masked = int(total * mask_probability)
    ratios = np.linspace(mask_ratio[0], mask_ratio[1], n_masked + 1)
    patches = mask_generator.num_patches
    masks = [
        torch.from_numpy(mask_generator(int(patches * rng.uniform(ratios[i], ratios[i + 1])), rng))
        for i in range(n_masked)
    ]
    masks += [torch.zeros(mask_generator.height, mask_generator.width, dtype=torch.bool)] * (
        total - n_masked
    )
    rng.shuffle(masks)
    mask_tensor = torch.stack(masks).flatten(1)
    per_image = mask_tensor.sum(-1, keepdim=True).clamp(min=1)
    weights = (1.0 / per_image).expand_as(mask_tensor)[mask_tensor]
    return {
        "global_crops": global_crops,
        "local_crops": local_crops,
        "masks": mask_tensor,
        "mask_weights": weights,
        "n_global": n_global,
        "n_local": n_local,
    }
