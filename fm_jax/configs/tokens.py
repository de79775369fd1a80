"""Discrete flow matching on image pixels as tokens, with a transformer: digits' 64 pixels of
17 grey levels by default, or binarized MNIST-5k (784 tokens of 2 values).

    fm-jax train --config tokens --workdir workdirs/digits_dfm
    fm-jax train --config tokens --config.method=dfm_uniform --workdir workdirs/digits_dfm_uniform
    fm-jax train --config tokens --config.target=tfds:mnist5k --config.data.levels=2 \
        --config.model.preset=tiny --workdir workdirs/mnist5k_dfm

Methods (`fm_jax.train.methods`): dfm_mask (the masked source: masked diffusion's
continuous-time ELBO bounds its likelihood) and dfm_uniform (the uniform source). The
network (`fm_jax.models.Transformer`, presets tiny, small, base; or with
`--config.model.kind=unet` a `fm_jax.models.TokenUNet` of a U-Net preset over the pixel grid,
best at --config.steps_per_call=1) predicts the posterior p(x1 | x_t) of every pixel's level
(`fm_jax.discrete`); `config.dfm` sets the loss
("ce": cross-entropy, "kl": the generalized KL) and the scheduler kappa(t) = t^n.
"""

import ml_collections

from fm_jax.configs import images


def get_config() -> ml_collections.ConfigDict:
    config = images.get_config()
    config.method = "dfm_mask"
    config.data.levels = 17  # sklearn's digits: grey levels 0..16
    config.data.dequantize = False  # tokens are the levels themselves
    config.model = ml_collections.ConfigDict({"kind": "transformer", "preset": "small"})
    config.dfm = ml_collections.ConfigDict({"objective": "ce", "scheduler": "polynomial", "n": 1.0})
    config.learning_rate = 1e-3
    config.warmup_steps = 100
    config.ema_decay = 0.999
    config.batch_size = 128
    config.num_steps = 2000
    config.steps_per_call = 10  # no convolutions: a scanned call is as fast as single steps
    config.log_every = 100
    config.eval_every = 0
    config.checkpoint_every = 500
    return config
