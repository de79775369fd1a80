"""Normalizing flows with exact log-likelihood and exact inverse: the teachers of Normalized Flow Matching.

A flow is a bijection f from data x to a latent z = f(x) with base density N(0, sigma_f^2 I)
(sigma_f = `prior_std`), so that

    log p(x) = log N(f(x); 0, sigma_f^2 I) + log |det df/dx|.

`Flow.forward(x) -> (z, logdet)` (data to latent), `Flow.inverse(z) -> x`, `Flow.log_prob(x)`
and `Flow.sample(key, n)`. Data of any shape: vectors (batch, d) or images (batch, H, W, C).
Every flow starts with an elementwise affine layer, so that a Gaussian with diagonal
covariance is one layer away.

Two families of layers, both invertible in closed form:

- `"realnvp"`: affine couplings (Dinh et al. 2017, RealNVP): the coordinates are split by a
  mask m alternating between layers, and y = m x + (1 - m)(x exp(s(m x)) + b(m x)) with s, b an
  MLP of the kept half; log |det| = sum (1 - m) s. On images the vector is the flattened image.
- `"tarflow"`: autoregressive affine blocks of causal transformers over tokens (Zhai et al.
  2025, TarFlow): z_i = (x_i - mu_i(x_<i)) exp(-alpha_i(x_<i)) for tokens i = 1..T, the token
  order reversed from one block to the next; log |det| = -sum alpha. The inverse runs the T
  tokens in order (T passes of the transformer per block). Tokens are `token_dim` coordinates
  of a vector, or `patch` x `patch` patches of an image.

Log-scales are soft-clamped, s = c tanh(s_raw / c), and the output layers start at zero, so a
new flow is the identity map.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["FLOWS", "FLOW_FIELDS", "Flow"]

FLOWS = ("realnvp", "tarflow")
# The keyword arguments of `Flow` besides the shape: the fields of a config's `flow` section.
FLOW_FIELDS = ("kind", "num_layers", "width", "depth", "prior_std", "token_dim", "patch", "heads", "layers")
LOG_SCALE_CLAMP = 3.0


def _clamp(s: jax.Array) -> jax.Array:
    return LOG_SCALE_CLAMP * jnp.tanh(s / LOG_SCALE_CLAMP)


def _zero_linear(a: int, b: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(a, b, kernel_init=nnx.initializers.zeros, bias_init=nnx.initializers.zeros, rngs=rngs)


class ElementwiseAffine(nnx.Module):
    """z = (x - shift) exp(-log_scale), one shift and scale per coordinate."""

    def __init__(self, dim: int):
        self.shift = nnx.Param(jnp.zeros((dim,)))
        self.log_scale = nnx.Param(jnp.zeros((dim,)))

    def forward(self, x):
        return (x - self.shift[...]) * jnp.exp(-self.log_scale[...]), -jnp.broadcast_to(
            jnp.sum(self.log_scale[...]), x.shape[:1]
        )

    def inverse(self, z):
        return z * jnp.exp(self.log_scale[...]) + self.shift[...]


class AffineCoupling(nnx.Module):
    """RealNVP affine coupling on flat vectors: the coordinates of index parity `parity` are kept (`mask`)."""

    def __init__(self, dim: int, parity: int, width: int, depth: int, *, rngs: nnx.Rngs):
        self.dim, self.parity = dim, parity  # static: the mask is rebuilt, never trained
        sizes = [dim] + [width] * depth
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.out = _zero_linear(width, 2 * dim, rngs)

    def mask(self) -> jax.Array:
        """1 on the coordinates kept, 0 on those moved; in one dimension the single coordinate is moved
        by a constant (learned) affine map."""
        if self.dim == 1:
            return jnp.zeros((1,))
        return (jnp.arange(self.dim) % 2 == self.parity).astype(jnp.float32)

    def _scale_shift(self, kept):
        h = kept
        for layer in self.hidden:
            h = nnx.gelu(layer(h))
        s, b = jnp.split(self.out(h), 2, axis=-1)
        free = 1.0 - self.mask()
        return _clamp(s) * free, b * free

    def forward(self, x):
        m = self.mask()
        s, b = self._scale_shift(x * m)
        return x * m + (1.0 - m) * (x * jnp.exp(s) + b), jnp.sum(s, axis=-1)

    def inverse(self, y):
        m = self.mask()
        s, b = self._scale_shift(y * m)
        return y * m + (1.0 - m) * ((y - b) * jnp.exp(-s))


class CausalTransformer(nnx.Module):
    """Pre-norm causal self-attention blocks over (batch, T, width)."""

    def __init__(self, tokens: int, width: int, heads: int, layers: int, *, rngs: nnx.Rngs):
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (tokens, width)))
        self.norms1 = nnx.List([nnx.LayerNorm(width, rngs=rngs) for _ in range(layers)])
        self.attn = nnx.List([nnx.MultiHeadAttention(heads, width, decode=False, rngs=rngs) for _ in range(layers)])
        self.norms2 = nnx.List([nnx.LayerNorm(width, rngs=rngs) for _ in range(layers)])
        self.mlp_in = nnx.List([nnx.Linear(width, 4 * width, rngs=rngs) for _ in range(layers)])
        self.mlp_out = nnx.List([nnx.Linear(4 * width, width, rngs=rngs) for _ in range(layers)])

    def __call__(self, h):
        h = h + self.pos[...]
        mask = nnx.make_causal_mask(h[..., 0])
        for norm1, attn, norm2, w_in, w_out in zip(self.norms1, self.attn, self.norms2, self.mlp_in, self.mlp_out):
            h = h + attn(norm1(h), mask=mask)
            h = h + w_out(nnx.gelu(w_in(norm2(h))))
        return h


class AutoregressiveBlock(nnx.Module):
    """One TarFlow block on tokens (batch, T, p): token i is moved by an affine map of tokens < i."""

    def __init__(
        self, tokens: int, token_dim: int, width: int, heads: int, layers: int, reverse: bool, *, rngs: nnx.Rngs
    ):
        self.reverse = reverse
        self.proj_in = nnx.Linear(token_dim, width, rngs=rngs)
        self.body = CausalTransformer(tokens, width, heads, layers, rngs=rngs)
        self.proj_out = _zero_linear(width, 2 * token_dim, rngs)

    def _mu_alpha(self, x):
        out = self.proj_out(self.body(self.proj_in(x)))
        # Output i sees tokens <= i; shifted by one, token i's map depends on tokens < i only.
        out = jnp.concatenate([jnp.zeros_like(out[:, :1]), out[:, :-1]], axis=1)
        mu, alpha = jnp.split(out, 2, axis=-1)
        return mu, _clamp(alpha)

    def _order(self, x):
        return x[:, ::-1] if self.reverse else x

    def forward(self, x):
        x = self._order(x)
        mu, alpha = self._mu_alpha(x)
        z = (x - mu) * jnp.exp(-alpha)
        return self._order(z), -jnp.sum(alpha, axis=(1, 2))

    def inverse(self, z):
        z = self._order(z)

        def token(i, x):
            mu, alpha = self._mu_alpha(x)
            return x.at[:, i].set(z[:, i] * jnp.exp(alpha[:, i]) + mu[:, i])

        # Hand-written loop: token i of the inverse needs tokens < i of the inverse itself.
        x = jax.lax.fori_loop(0, z.shape[1], token, jnp.zeros_like(z))
        return self._order(x)


class Flow(nnx.Module):
    """A normalizing flow on data of shape `shape` (without the batch axis); see the module docstring.

    `Flow(shape, kind="realnvp", num_layers=8, width=64, depth=2, prior_std=1.0, rngs=nnx.Rngs(0))`;
    TarFlow also takes `token_dim` (vectors) or `patch` (images), `heads` and `layers` (per block).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        kind: str = "realnvp",
        num_layers: int = 8,
        width: int = 64,
        depth: int = 2,
        prior_std: float = 1.0,
        token_dim: int = 1,
        patch: int = 2,
        heads: int = 4,
        layers: int = 2,
        *,
        rngs: nnx.Rngs,
    ):
        if kind not in FLOWS:
            raise ValueError(f"Unknown flow {kind!r}; choose one of {FLOWS}.")
        if num_layers < 1 or width < 1 or depth < 1 or not prior_std > 0:
            raise ValueError(
                f"num_layers, width, depth and prior_std must be positive, got {num_layers}, {width}, "
                f"{depth}, {prior_std}."
            )
        self.shape, self.kind, self.prior_std = tuple(shape), kind, float(prior_std)
        self.dim = math.prod(self.shape)
        self.patch = patch if len(self.shape) == 3 else 0
        self.affine = ElementwiseAffine(self.dim)
        if kind == "realnvp":
            self.layers = nnx.List(
                [AffineCoupling(self.dim, i % 2, width, depth, rngs=rngs) for i in range(num_layers)]
            )
            return
        if self.patch:
            h, w, c = self.shape
            if h % patch or w % patch:
                raise ValueError(
                    f"TarFlow patches of {patch} do not tile images of shape {self.shape}: choose a divisor."
                )
            token_dim = patch * patch * c
        elif self.dim % token_dim:
            raise ValueError(f"TarFlow tokens of {token_dim} coordinates do not split dimension {self.dim}.")
        if width % heads:
            raise ValueError(f"TarFlow width {width} must be a multiple of heads {heads}.")
        self.token_dim, tokens = token_dim, self.dim // token_dim
        self.layers = nnx.List(
            [
                AutoregressiveBlock(tokens, token_dim, width, heads, layers, reverse=bool(i % 2), rngs=rngs)
                for i in range(num_layers)
            ]
        )

    def _check(self, x):
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"This flow takes data of shape (batch, {', '.join(map(str, self.shape))}), got {x.shape}."
            )

    def _to_layers(self, x):
        """Flat vectors (RealNVP) or tokens (TarFlow) of data (batch, *shape)."""
        if self.kind == "realnvp":
            return x.reshape(x.shape[0], self.dim)
        if self.patch:
            b, (h, w, c), p = x.shape[0], self.shape, self.patch
            x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
            return x.reshape(b, -1, p * p * c)
        return x.reshape(x.shape[0], -1, self.token_dim)

    def _from_layers(self, y):
        if self.kind == "tarflow" and self.patch:
            b, (h, w, c), p = y.shape[0], self.shape, self.patch
            y = y.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return y.reshape(y.shape[0], *self.shape)

    def forward(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(z, log |det dz/dx|) per example: data to latent."""
        self._check(x)
        z, logdet = self.affine.forward(x.reshape(x.shape[0], self.dim))
        y = self._to_layers(z.reshape(x.shape))
        for layer in self.layers:
            y, ld = layer.forward(y)
            logdet = logdet + ld
        return self._from_layers(y), logdet

    def inverse(self, z: jax.Array) -> jax.Array:
        """x = f^{-1}(z): latent to data."""
        self._check(z)
        y = self._to_layers(z)
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        x = self.affine.inverse(self._from_layers(y).reshape(z.shape[0], self.dim))
        return x.reshape(z.shape)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """log p(x) per example, in nats."""
        z, logdet = self.forward(x)
        flat = z.reshape(z.shape[0], -1) / self.prior_std
        base = -0.5 * jnp.sum(flat**2, axis=1) - self.dim * (0.5 * math.log(2 * math.pi) + math.log(self.prior_std))
        return base + logdet

    def sample(self, key: jax.Array, num: int) -> jax.Array:
        """`num` samples x = f^{-1}(sigma_f eps), eps ~ N(0, I)."""
        return self.inverse(self.prior_std * jax.random.normal(key, (num, *self.shape)))
