"""ResNet-50 (ImageNet) truncated after its third stage, average-pooled: 1024-d (as CLAM does).

torchvision's ResNet-50 (``IMAGENET1K_V1``, the weights CLAM loads) keeps ``conv1`` through
``layer3``; ``layer4`` and the classifier are dropped, and the 1024-channel map is averaged.
Input: resize 224 (bilinear), center crop 224, ImageNet mean/std (UNI's ``resnet50_trunc``
evaluation transform). The converter reads torchvision's and timm's (``resnet50.tv_in1k``)
state dicts, which share parameter names, and drops ``layer4`` and ``fc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from torchvision.models import resnet50

from gpfm.backbone.zoo.layouts import drop, unwrap_tensors
from gpfm.backbone.zoo.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from gpfm.backbone.zoo.registry import register_encoder


class TruncatedResNet50(nn.Module):
    """ResNet-50 up to ``layer3`` + global average pooling, torchvision's parameter names."""

    def __init__(self) -> None:
        super().__init__()
        full = resnet50(weights=None)
        self.conv1 = full.conv1
        self.bn1 = full.bn1
        self.relu = full.relu
        self.maxpool = full.maxpool
        self.layer1 = full.layer1
        self.layer2 = full.layer2
        self.layer3 = full.layer3
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, images: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.pool(x).flatten(1)


def convert_resnet50(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """torchvision / timm ResNet-50 -> ``TruncatedResNet50``: drop ``layer4`` and ``fc``."""
    return drop(unwrap_tensors(checkpoint), "layer4.", "fc.")


@register_encoder(
    "resnet50-imagenet",
    embed_dim=1024,
    preprocessing=Preprocessing(224, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
    convert=convert_resnet50,
    hub_id="timm/resnet50.tv_in1k",
    hub_filename="model.safetensors",
    published_params=8_543_296,
    params_source="torchvision's ResNet-50 (25,557,032 params in its model table) without "
    "layer4 (14,964,736) and fc (2,049,000)",
    description="ResNet-50 ImageNet, truncated after layer3 (CLAM's baseline)",
)
def resnet50_imagenet() -> TruncatedResNet50:
    """CLAM's truncated ResNet-50."""
    return TruncatedResNet50()
