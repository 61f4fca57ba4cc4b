"""Mixing Visual Concepts (MVC): diffusion-based dataset augmentation (Rahat and Venkateswara, WACV 2025)."""

import logging

from mvc import vocabulary  # noqa: F401  (the kit's datasets, sets and methods, declared before any config is read)
from mvc.config import StudyConfig, load_config

# bitsandbytes (8-bit AdamW) warns on import, on CPUs with AVX512-BF16, that an optional 4-bit matmul kernel
# package is absent; the kit never uses 4-bit matmuls
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__all__ = ["StudyConfig", "load_config"]
__version__ = "0.1.0"
