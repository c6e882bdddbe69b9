"""Image augmentation of robot training examples (`augment:` of a training config).

openpi's π0 recipe: on the cameras that look at the scene, a random crop of `crop_scale` of the
side resized back and a rotation in ±`rotate_deg`; on every camera, random brightness, contrast
and saturation. A camera that rides on the arm (its name contains `colour_only_substring`, by
default "wrist") keeps its geometry: the gripper's place in its view is what the last
centimetres of a grasp are judged by. Only examples with actions are changed (VLM questions about
left/right and positions keep their images), masked-off camera slots stay as they are, and the
run time never augments. Draws from torch's global generator, which the trainer seeds and
checkpoints, so a resumed run sees the same images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights: the grey an image is desaturated toward
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class AugmentConfig:
    """All at their defaults: off. openpi's values: crop_scale 0.95, rotate_deg 5, brightness 0.3,
    contrast 0.4, saturation 0.5."""

    crop_scale: float = 1.0  # side of the random crop as a share of the image, resized back (1: none)
    rotate_deg: float = 0.0  # rotation uniform in ±rotate_deg about the crop centre
    brightness: float = 0.0  # added brightness uniform in ±brightness (share of the full range)
    contrast: float = 0.0  # contrast factor uniform in 1 ± contrast, about the image's mean grey
    saturation: float = 0.0  # saturation factor uniform in 1 ± saturation, toward/away from grey
    colour_only_substring: str = "wrist"  # cameras whose name contains it get colour changes only

    @property
    def geometric(self) -> bool:
        return self.crop_scale < 1.0 or self.rotate_deg > 0.0

    @property
    def colour(self) -> bool:
        return self.brightness > 0.0 or self.contrast > 0.0 or self.saturation > 0.0

    @property
    def enabled(self) -> bool:
        return self.geometric or self.colour

    def validate(self) -> None:
        if not 0.5 <= self.crop_scale <= 1.0:
            raise ValueError(f"crop_scale: expected 0.5 <= x <= 1 (1: no crop), got {self.crop_scale}")
        if not 0.0 <= self.rotate_deg <= 45.0:
            raise ValueError(f"rotate_deg: expected 0 <= x <= 45, got {self.rotate_deg}")
        for key in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key}: expected 0 <= x < 1, got {getattr(self, key)}")

    def geometric_cameras(self, camera_names: list[str]) -> list[bool]:
        sub = self.colour_only_substring
        return [not (sub and sub in name) for name in camera_names]


def _uniform(n: int, half_width: float) -> torch.Tensor:
    return (torch.rand(n) * 2.0 - 1.0) * half_width


def augment_images(images: torch.Tensor, image_mask: torch.Tensor, apply: torch.Tensor, geometric: list[bool],
                   cfg: AugmentConfig) -> torch.Tensor:
    """images [B, V, 3, S, S] in [-1, 1], image_mask [B, V] bool, apply [B] bool (the examples to
    augment), geometric [V] (cameras that may be cropped and rotated) -> a new tensor, same shape.
    Every image draws its own parameters; the others are returned unchanged, bit for bit."""
    b, v, c, s, _ = images.shape
    n = b * v
    x = images.reshape(n, c, s, s).float()
    sel = (image_mask & apply[:, None]).reshape(n)
    out = x
    if cfg.geometric:
        geo = sel & torch.tensor(geometric, dtype=torch.bool).repeat(b)
        scale = cfg.crop_scale
        angle = _uniform(n, math.radians(cfg.rotate_deg))
        shift = _uniform(2 * n, 1.0 - scale).reshape(n, 2)  # crop centre, normalised coordinates
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        # affine_grid maps output coordinates to input ones: in = scale·R(angle)·out + shift
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, [n, c, s, s], align_corners=False)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = torch.where(geo[:, None, None, None], warped, out)
    if cfg.colour:
        y = (out + 1.0) * 0.5  # [0, 1]
        luma = torch.tensor(_LUMA).reshape(1, 3, 1, 1)
        y = y + _uniform(n, cfg.brightness).reshape(n, 1, 1, 1)
        grey_mean = (y * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        y = grey_mean + (y - grey_mean) * (1.0 + _uniform(n, cfg.contrast)).reshape(n, 1, 1, 1)
        grey = (y * luma).sum(1, keepdim=True)
        y = grey + (y - grey) * (1.0 + _uniform(n, cfg.saturation)).reshape(n, 1, 1, 1)
        coloured = y.clamp(0.0, 1.0) * 2.0 - 1.0
        out = torch.where(sel[:, None, None, None], coloured, out)
    return out.to(images.dtype).reshape(b, v, c, s, s)
