"""CIFAR-10 with torchcfm's recipe (Tong et al. 2024; torchcfm's examples/images/cifar10).

    fm-jax train --config cifar10_torchcfm --workdir workdirs/cifar10_otcfm
    fm-jax train --config cifar10_torchcfm --config.method=icfm --workdir workdirs/cifar10_icfm

Needs CIFAR-10 prepared once in ArrayRecord format under config.data.dir (`fm-jax prepare
--dataset cifar10` prints the command). The recipe: torchcfm's U-Net (preset
torchcfm_cifar10: 128 channels, multipliers 1-2-2-2, 2 residual blocks, 4 heads of 64
channels, attention at 16x16, dropout 0.1), OT-CFM with sigma = 0, batch 128, Adam at 2e-4
after 5,000 linear warmup steps, gradient clipping at norm 1, EMA 0.9999, 400k steps,
horizontal flips. Published: FID 3.5 for OT-CFM with Dopri5 at 400k steps (torchcfm's
README). Not run here (no GPU time).
"""

from fm_jax.configs import images


def get_config():
    config = images.get_config()
    config.method = "otcfm"
    config.sigma = 0.0
    config.target = "tfds:cifar10"
    config.data.flip = True
    config.model.preset = "torchcfm_cifar10"
    config.model.dropout = 0.1
    config.batch_size = 128
    config.learning_rate = 2e-4
    config.warmup_steps = 5000
    config.grad_clip = 1.0
    config.ema_decay = 0.9999
    config.num_steps = 400_000
    config.steps_per_call = 1
    config.log_every = 1000
    config.eval_every = 10_000
    config.checkpoint_every = 20_000
    config.ot_solver = "auto"  # the auction on a GPU or TPU (fm_jax.couplings.AUTO_SOLVERS)
    return config
