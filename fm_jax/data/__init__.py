"""Data for fm_jax: toy 2D densities sampled inside jit (`toy2d`)."""

from fm_jax.data import toy2d

__all__ = ["toy2d"]
