"""A U-Net over an image's pixels as tokens: the posterior network of a discrete flow on images.

`TokenUNet(image_shape=(H, W, C), num_states, vocab_size, ...)` is called like the
`Transformer`, `model(t, x_t, cond=None) -> logits (batch, H W C, vocab_size)`, on int tokens
x_t of shape (batch, H W C) in row-major (H, W, C) order (`fm_jax.data.images.to_tokens`) that
take `num_states` values (the K levels, and the mask K for a masked source). Each pixel's C
tokens enter one-hot, as C * num_states input channels of the ADM `UNet`, whose output has
C * vocab_size channels: the logits of each of the pixel's tokens. Convolutions see each
pixel's neighbourhood where the transformer sees every token: the inductive bias of an image.
The U-Net's output layer starts at zero, so the initial posterior is uniform, as the
transformer's. Every `UNet` keyword (a preset's, dropout, classes) goes through.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fm_jax.models.unet import UNet

__all__ = ["TokenUNet"]


class TokenUNet(nnx.Module):
    """`TokenUNet(image_shape, num_states, vocab_size, num_classes=0, **unet, rngs=...)` (the module docstring)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_states: int,
        vocab_size: int,
        num_classes: int = 0,
        *,
        rngs: nnx.Rngs,
        **unet,
    ):
        height, width, channels = (int(s) for s in image_shape)
        if not 2 <= vocab_size <= num_states:
            raise ValueError(f"vocab_size must be in [2, num_states], got {vocab_size} and num_states {num_states}.")
        self.image_shape = (height, width, channels)
        self.num_states, self.vocab_size = num_states, vocab_size
        self.length = height * width * channels
        self.unet = UNet(
            (height, width, channels * num_states),
            num_classes=num_classes,
            out_channels=channels * vocab_size,
            rngs=rngs,
            **unet,
        )

    def __call__(
        self, t: jax.Array, x: jax.Array, cond: jax.Array | None = None, *, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        if x.ndim != 2 or x.shape[1] != self.length or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(
                f"TokenUNet(image_shape={self.image_shape}) takes int tokens of shape (batch, {self.length}), "
                f"got {x.dtype} {x.shape}."
            )
        batch = x.shape[0]
        height, width, channels = self.image_shape
        # One-hot in [-1, 1], the range of the images the U-Net's initialization is made for.
        onehot = 2.0 * jax.nn.one_hot(x, self.num_states, dtype=jnp.float32) - 1.0
        h = onehot.reshape(batch, height, width, channels * self.num_states)
        logits = self.unet(t, h, cond, dropout_key=dropout_key)
        return logits.reshape(batch, self.length, self.vocab_size)
