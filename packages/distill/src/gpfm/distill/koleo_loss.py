"""KoLeo regulariser: spread the batch's features by pushing each from its nearest neighbour."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpfm.distill.errors import DistillDataError
from gpfm.distill.precision import fp32_or_wider


class KoLeoLoss(nn.Module):
    """−mean log(distance to the nearest neighbour) of L2-normalised features, in fp32.

    (Sablayrolles et al., "Spreading vectors for similarity search".) Applied per global crop
    to the student's class tokens, within each process's batch.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: Tensor) -> Tensor:
        """``features``: (B, D) with B >= 2."""
        if features.shape[0] < 2:
            raise DistillDataError("KoLeo needs at least two samples per batch")
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = F.normalize(fp32_or_wider(features), dim=-1, eps=self.eps)
            with torch.no_grad():
                similarity = x @ x.t()
                similarity.fill_diagonal_(-2.0)
                nearest = similarity.argmax(dim=1)
            distances = F.pairwise_distance(x, x[nearest], eps=self.eps)
            return -torch.log(distances + self.eps).mean()
