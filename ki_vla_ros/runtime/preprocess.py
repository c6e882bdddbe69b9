"""Camera images to model input: resize with padding (bilinear, centred black bars) to the
model's square size, then scale to [-1, 1] (π0.5 convention). A missing camera is an all −1
image with its mask off."""

from __future__ import annotations

import cv2
import numpy as np


def resize_with_pad(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3], aspect ratio kept, black bars centred."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def images_to_model(images: dict[str, np.ndarray], camera_names: list[str], size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-camera images -> (float32 [V, 3, size, size] in [-1, 1], bool mask [V]), in the order
    of `camera_names`. Cameras absent from `images` get an all −1 image and mask False."""
    pixels = np.full((len(camera_names), 3, size, size), -1.0, np.float32)
    mask = np.zeros(len(camera_names), bool)
    for i, name in enumerate(camera_names):
        image = images.get(name)
        if image is None:
            continue
        square = resize_with_pad(image, size)
        pixels[i] = square.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
        mask[i] = True
    return pixels, mask
