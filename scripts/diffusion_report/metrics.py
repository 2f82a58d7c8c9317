"""Generic image distances: MSE, PSNR and SSIM between images in [-1, 1].

Images are tensors of shape (C, H, W) or batches (N, C, H, W), values in [-1, 1] (the models'
range). They are clipped to [-1, 1] and mapped to [0, 1] first, so PSNR and SSIM use data range 1
and mean what they usually mean for 8-bit pictures.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def to_unit(img: torch.Tensor) -> np.ndarray:
    """(…, C, H, W) tensor in [-1, 1] -> float64 array in [0, 1], channels last (…, H, W, C)."""
    x = img.detach().to("cpu", torch.float64).clamp(-1.0, 1.0)
    x = (x + 1.0) / 2.0
    return x.movedim(-3, -1).numpy()


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error in [0, 1] units between two images (C, H, W)."""
    return float(np.mean((to_unit(a) - to_unit(b)) ** 2))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB (data range 1); +inf for identical images."""
    m = mse(a, b)
    return math.inf if m == 0 else 10.0 * math.log10(1.0 / m)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Structural similarity (Wang et al. 2004) via skimage, Gaussian-free 7x7 window, data range 1.

    The window shrinks (to an odd size) for images smaller than 7 pixels.
    """
    from skimage.metrics import structural_similarity

    x, y = to_unit(a), to_unit(b)
    win = min(7, x.shape[0], x.shape[1])
    win = win if win % 2 == 1 else win - 1
    return float(structural_similarity(x, y, data_range=1.0, channel_axis=-1, win_size=win))


def pairwise(a: torch.Tensor, b: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image MSE, PSNR and SSIM between batches a, b of shape (N, C, H, W). Arrays of shape (N,)."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return {
        "mse": np.array([mse(x, y) for x, y in zip(a, b)]),
        "psnr": np.array([psnr(x, y) for x, y in zip(a, b)]),
        "ssim": np.array([ssim(x, y) for x, y in zip(a, b)]),
    }
