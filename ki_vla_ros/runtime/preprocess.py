"""Camera images to model input, LeRobot's π0.5 rule: uint8 RGB as float in [0, 1], resized with
padding to the model's square size — scale = max(H, W) / size, resized size int(H / scale) x
int(W / scale), bilinear (half-pixel centres, no antialiasing) in float, clamped to [0, 1], black
bars centred (the odd pixel at the bottom / right) — then scaled to [-1, 1]. There is no uint8
round trip between the resize and the model. A missing camera is an all −1 image with its mask off.

`resize_with_pad_uint8` is the same resize rounded to uint8, for the training data's episode
cache (images stay small and memory-mapped there; the rounding is at most half a uint8 step).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _resized(image: np.ndarray, size: int) -> tuple[np.ndarray, int, int]:
    """uint8 [H, W, 3] -> (float32 [h, w, 3] in [0, 1]: the image resized to fit `size` with its aspect
    ratio, and the top / left offset of its place in the padded square)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
    pixels = image.astype(np.float32)
    pixels /= np.float32(255.0)
    h, w = image.shape[:2]
    ratio = max(w / size, h / size)
    nh, nw = int(h / ratio), int(w / ratio)
    if (nh, nw) != (h, w):
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None]  # [1, 3, H, W], channels last in memory
        pixels = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
        np.clip(pixels, 0.0, 1.0, out=pixels)
    return pixels, (size - nh) // 2, (size - nw) // 2


def resize_with_pad(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [size, size, 3] in [0, 1], aspect ratio kept, black bars centred."""
    pixels, top, left = _resized(image, size)
    out = np.zeros((size, size, 3), np.float32)
    out[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
    return out


def resize_with_pad_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """`resize_with_pad` rounded to uint8 [size, size, 3] (the training data's image cache)."""
    if image.shape[:2] == (size, size) and image.dtype == np.uint8 and image.ndim == 3:
        return image
    return np.round(resize_with_pad(image, size) * 255.0).astype(np.uint8)


def images_to_model(images: dict[str, np.ndarray], camera_names: list[str], size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-camera images -> (float32 [V, 3, size, size] in [-1, 1], bool mask [V]), in the order
    of `camera_names`. Cameras absent from `images` get an all −1 image and mask False (the bars'
    0 scaled to [-1, 1] is −1 too, so only the resized part is written)."""
    pixels = np.full((len(camera_names), 3, size, size), -1.0, np.float32)
    mask = np.zeros(len(camera_names), bool)
    for i, name in enumerate(camera_names):
        image = images.get(name)
        if image is None:
            continue
        resized, top, left = _resized(image, size)
        h, w = resized.shape[:2]
        pixels[i, :, top : top + h, left : left + w] = resized.transpose(2, 0, 1) * np.float32(2.0) - np.float32(1.0)
        mask[i] = True
    return pixels, mask
