"""Image conversions shared by the stages: files to arrays, arrays to diffusion tensors and back."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def to_8bit(img: Image.Image, background: str = "white") -> Image.Image:
    """An image in an 8-bit mode (L or RGB): 16- and 32-bit greys rescaled to 0..255 (not clipped), float images
    scaled by their range, and transparency (RGBA, LA, P with a transparent colour) flattened onto `background`."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            top = 1.0 if arr.max() <= 1.0 else arr.max()
        else:
            top = 65535.0 if img.mode.startswith("I;16") or arr.max() <= 65535 else arr.max()
        top = 255.0 if img.mode == "I" and arr.max() <= 255 else top
        return Image.fromarray(np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, background)
        return Image.alpha_composite(flat, rgba).convert("RGB")
    if img.mode not in ("L", "RGB"):
        return img.convert("RGB")
    return img


def to_array(img: Image.Image, resolution: int, channels: int, background: str = "white") -> np.ndarray:
    """Centre-crop to a square, resize to `resolution` (bicubic), convert to `channels`: uint8 (H, W, C)."""
    img = to_8bit(img, background).convert("L" if channels == 1 else "RGB")
    w, h = img.size
    side = min(w, h)
    if w != h:
        img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def images_to_tensor(images: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, 3, R, R) in [-1, 1], grey expanded to RGB, resized bicubically."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False).clamp(-1, 1)
    return x.contiguous()


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_chw(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) array -> uint8 (N, C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
