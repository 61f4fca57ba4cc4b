"""Mixing Visual Concepts (MVC): diffusion-based dataset augmentation (Rahat and Venkateswara, WACV 2025)."""

from mvc.config import StudyConfig, load_config

__all__ = ["StudyConfig", "load_config"]
__version__ = "0.1.0"
