"""Mask-aligned augmentation of a square training image and its target (torchvision.transforms.v2).

The image and the mask go through the same random resized crop and flip (the mask resized bilinearly
as a 0..1 image, then split at 0.5, so its edge follows the image's); colour jitter and JPEG
re-compression touch the image only.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2


@dataclasses.dataclass
class Augment:
    scale_min: float = 0.35  # random resized crop: smallest crop area as a share of the image (1 = off)
    hflip: bool = True  # flip horizontally with probability 1/2
    color: float = 0.2  # brightness / contrast / saturation jitter strength (0 = off)
    jpeg_prob: float = 0.0  # probability of a JPEG re-compression (quality 60-95)

    def geometric(self, size: int) -> v2.Compose:
        """Applied to the image and the mask together."""
        steps: list[v2.Transform] = []
        if self.scale_min < 1.0:
            steps.append(v2.RandomResizedCrop(size, scale=(self.scale_min, 1.0), ratio=(3 / 4, 4 / 3), antialias=True))
        if self.hflip:
            steps.append(v2.RandomHorizontalFlip(0.5))
        return v2.Compose(steps or [v2.Identity()])

    def photometric(self) -> v2.Compose:
        """Applied to the image only."""
        steps: list[v2.Transform] = []
        if self.color > 0:
            steps.append(v2.ColorJitter(brightness=self.color, contrast=self.color, saturation=self.color))
        if self.jpeg_prob > 0:
            steps.append(v2.RandomApply([v2.JPEG(quality=(60, 95))], p=self.jpeg_prob))
        return v2.Compose(steps or [v2.Identity()])

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """SxSx3 uint8 image and SxS mask -> augmented copies; `rng` seeds the draw (same seed, same result)."""
        x = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float())
        y = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None] * 255.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(0, 2**31 - 1)))
            x, y = self.geometric(image.shape[0])(x, y)
            x = self.photometric()(tv_tensors.Image(x.round().clamp(0, 255).to(torch.uint8)))
        return x.permute(1, 2, 0).contiguous().numpy(), (y[0] >= 127.5).numpy()
