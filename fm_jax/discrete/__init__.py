"""Discrete flow matching: flows over sequences of tokens (Campbell et al. 2024; Gat et al. 2024;
Shaul et al. 2024; masked diffusion: Shi et al. 2024, Sahoo et al. 2024).

The family is split as the continuous side is (paths, losses, sampling, likelihood), one
module each, rather than one `discrete.py`: each part is read and tested on its own.

    import fm_jax as fm
    path = fm.discrete.MixturePath(vocab_size=17, source="mask")
    loss = fm.discrete.dfm_loss(path)                      # loss(apply, params, key, {"x1": tokens})
    out = fm.discrete.sample(posterior, path.draw_source(key, (64, 64)), path, key, steps=100)
    nats = fm.discrete.elbo(posterior, tokens, path, key)   # an upper bound on -log p(tokens)

- `paths`: schedulers kappa(t), sources, `MixturePath` (x_t, the probability velocity).
- `losses`: `dfm_loss`, cross-entropy or generalized KL.
- `sampling`: `sample`, the Euler jump sampler (with the corrector) and the exact unmasking sampler;
  `guided_posterior`, classifier-free guidance of a class-conditional network.
- `likelihood`: `elbo`, the masked source's continuous-time ELBO.
"""

from fm_jax.discrete.likelihood import bits_per_token, elbo
from fm_jax.discrete.losses import OBJECTIVES, DiscreteLoss, dfm_loss
from fm_jax.discrete.paths import (
    SCHEDULERS,
    SOURCES,
    Cosine,
    MixturePath,
    Polynomial,
    Scheduler,
    log_posterior,
    posterior_probs,
)
from fm_jax.discrete.sampling import METHODS, DiscreteSample, guided_posterior, sample

__all__ = [
    "METHODS",
    "OBJECTIVES",
    "SCHEDULERS",
    "SOURCES",
    "Cosine",
    "DiscreteLoss",
    "DiscreteSample",
    "MixturePath",
    "Polynomial",
    "Scheduler",
    "bits_per_token",
    "dfm_loss",
    "elbo",
    "guided_posterior",
    "log_posterior",
    "posterior_probs",
    "sample",
]
