"""Gaussian encoders q_phi(x0 | x1) and the velocity field that trains jointly with one.

The curvature-minimizing coupling (Lee, Kim & Ye 2023, "fast-ode") draws the source point of
each data point from a learned Gaussian, x0 = mu_phi(x1) + sigma_phi(x1) eps, instead of
independently of it; `fm_jax.losses.fast_ode_loss` trains phi with the velocity field.

- `GaussianEncoder(dim, width, depth)`: an MLP from x1 (batch, dim) to (mu, log sigma).
- `ImageEncoder(shape, preset)`: a U-Net (`fm_jax.models.unet`) from x1 (batch, H, W, C) to
  2C channels, split into mu and log sigma; it reads no time (t = 0 throughout).
- `CoupledField(field, encoder)`: one module holding both, so that both live in the train
  state's params, are optimized, averaged and checkpointed together. Called as the field,
  `model(t, x, cond)`; `model.encode(x1, cond) -> (mu, log_sigma)`.

Both encoders start at the prior (their output layers are zero): mu = 0, sigma = 1, i.e.
I-CFM's independent coupling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fm_jax.models.mlp import ACTIVATIONS
from fm_jax.models.unet import PRESETS, UNet

__all__ = ["CoupledField", "GaussianEncoder", "ImageEncoder"]


class GaussianEncoder(nnx.Module):
    """`GaussianEncoder(dim, width=64, depth=3)`: x1 (batch, dim) -> (mu, log_sigma), each (batch, dim)."""

    def __init__(self, dim: int, width: int = 64, depth: int = 3, activation: str = "selu", *, rngs: nnx.Rngs):
        ACTIVATIONS[activation]  # a known name, or the error that lists them
        sizes = [dim] + [width] * depth
        self.activation = activation
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.out = nnx.Linear(width, 2 * dim, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x1: jax.Array, cond=None) -> tuple[jax.Array, jax.Array]:
        h = x1
        for layer in self.hidden:
            h = ACTIVATIONS[self.activation](layer(h))
        mu, log_sigma = jnp.split(self.out(h), 2, axis=-1)
        return mu, log_sigma


class ImageEncoder(nnx.Module):
    """`ImageEncoder(image_shape, preset="tiny")`: images (batch, H, W, C) -> (mu, log_sigma), each image-shaped."""

    def __init__(
        self, image_shape: tuple[int, int, int], preset: str = "tiny", num_classes: int = 0, *, rngs: nnx.Rngs
    ):
        if preset not in PRESETS:
            raise ValueError(f"Unknown U-Net preset {preset!r} for the encoder; choose one of {sorted(PRESETS)}.")
        settings = PRESETS[preset] | {"dropout": 0.0}
        self.net = UNet(image_shape, num_classes=num_classes, out_channels=2 * image_shape[-1], **settings, rngs=rngs)

    def __call__(self, x1: jax.Array, cond=None) -> tuple[jax.Array, jax.Array]:
        out = self.net(jnp.zeros(x1.shape[:1], x1.dtype), x1, cond)
        mu, log_sigma = jnp.split(out, 2, axis=-1)
        return mu, log_sigma


class CoupledField(nnx.Module):
    """A velocity field and its encoder in one module: `model(t, x, cond, **kw)` is the field, `model.encode(x1, cond)` the encoder."""

    def __init__(self, field: nnx.Module, encoder: nnx.Module):
        self.field, self.encoder = field, encoder

    def __call__(self, t, x, cond=None, **kwargs):
        return self.field(t, x, cond, **kwargs)

    def encode(self, x1, cond=None):
        return self.encoder(x1, cond)
