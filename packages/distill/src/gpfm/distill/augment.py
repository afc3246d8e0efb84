"""Multi-crop augmentation: 2 global and N local crops with DINOv2's colour augmentations and
pathology options (vertical flips, 90° rotations, HED stain jitter).

On the blur probabilities: DINOv2's ``GaussianBlur(p=…)`` wraps ``RandomApply`` with
probability ``1 − p``, so its "p=1.0" on the first global crop never blurs and its "p=0.1" on
the second blurs 90% of the time. We apply the probabilities as written in the DINO and BYOL
papers (first global crop always, second 10%, local crops 50%) and keep DINOv2's behaviour
available as ``dinov2_blur_quirk=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in optical density.
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


class RandomRotate90(nn.Module):
    """Rotate by a uniformly drawn multiple of 90°."""

    def forward(self, image: Tensor) -> Tensor:
        k = int(torch.randint(0, 4, ()).item())
        return torch.rot90(image, k, dims=(-2, -1))


class HEDJitter(nn.Module):
    """Perturb haematoxylin, eosin and DAB concentrations: c ← c · (1 + α) + β per stain.

    α ~ U(−sigma, sigma) and β ~ U(−bias, bias), drawn per image; works on float RGB in [0, 1].
    """

    def __init__(self, sigma: float = 0.05, bias: float = 0.01) -> None:
        super().__init__()
        self.sigma = sigma
        self.bias = bias

    def forward(self, image: Tensor) -> Tensor:
        rgb = image.float().clamp(1e-6, 1.0)
        od = -torch.log(rgb).movedim(0, -1)  # (H, W, 3) optical density
        stains = od @ _HED_FROM_RGB.to(od.device)
        alpha = torch.empty(3, device=od.device).uniform_(-self.sigma, self.sigma)
        beta = torch.empty(3, device=od.device).uniform_(-self.bias, self.bias)
        stains = stains * (1 + alpha) + beta
        out = torch.exp(-(stains @ _RGB_FROM_HED.to(od.device))).movedim(-1, 0)
        return out.clamp(0.0, 1.0).to(image.dtype)


@dataclass(frozen=True)
class MultiCropConfig:
    """Crop sizes (px), scales (fraction of the image area) and augmentation strengths."""

    global_size: int = 224
    local_size: int = 98
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    horizontal_flip: bool = True
    vertical_flip: bool = False
    rotate90: bool = False
    color_jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global 1, global 2, local
    solarize_p: float = 0.2  # second global crop only
    dinov2_blur_quirk: bool = False
    hed_sigma: float = 0.0  # 0 turns HED jitter off
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class MultiCropAugmentation:
    """An image (PIL, uint8 HxWx3 array or uint8 CxHxW tensor) -> ``{"global_crops": [2 tensors],
    "local_crops": [n_local tensors]}``, each a normalised float tensor (3, size, size)."""

    def __init__(self, config: MultiCropConfig | None = None) -> None:
        self.config = config = config or MultiCropConfig()
        blur = list(config.blur_p)
        if config.dinov2_blur_quirk:
            blur = [1.0 - p for p in blur]

        def geometric(size: int, scale: tuple[float, float]) -> list[nn.Module]:
            ops: list[nn.Module] = [
                v2.RandomResizedCrop(
                    size, scale=scale, interpolation=InterpolationMode.BICUBIC, antialias=True
                )
            ]
            if config.horizontal_flip:
                ops.append(v2.RandomHorizontalFlip())
            if config.vertical_flip:
                ops.append(v2.RandomVerticalFlip())
            if config.rotate90:
                ops.append(RandomRotate90())
            return ops

        colour: list[nn.Module] = [
            v2.RandomApply(
                [v2.ColorJitter(config.brightness, config.contrast, config.saturation, config.hue)],
                p=config.color_jitter_p,
            ),
            v2.RandomGrayscale(p=config.grayscale_p),
        ]

        def blurred(p: float) -> nn.Module:
            return v2.RandomApply([v2.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=p)

        finish: list[nn.Module] = [v2.ToDtype(torch.float32, scale=True)]
        if config.hed_sigma > 0:
            finish.append(HEDJitter(config.hed_sigma))
        finish.append(v2.Normalize(config.mean, config.std))

        to_image: list[nn.Module] = [v2.ToImage()]
        self.global_1 = v2.Compose(
            [*to_image, *geometric(config.global_size, config.global_scale), *colour,
             blurred(blur[0]), *finish]
        )  # fmt: skip
        self.global_2 = v2.Compose(
            [*to_image, *geometric(config.global_size, config.global_scale), *colour,
             blurred(blur[1]), v2.RandomSolarize(128, p=config.solarize_p), *finish]
        )  # fmt: skip
        self.local = v2.Compose(
            [*to_image, *geometric(config.local_size, config.local_scale), *colour,
             blurred(blur[2]), *finish]
        )  # fmt: skip

    def __call__(self, image: Any) -> dict[str, list[Tensor]]:
        return {
            "global_crops": [self.global_1(image), self.global_2(image)],
            "local_crops": [self.local(image) for _ in range(self.config.n_local)],
        }
