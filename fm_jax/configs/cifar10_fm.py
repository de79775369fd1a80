"""CIFAR-10 with the Flow Matching paper's recipe (Lipman et al. 2023, Table 3 and Sec. 6.1).

    fm-jax train --config cifar10_fm --workdir workdirs/cifar10_fm
    fm-jax train --config cifar10_fm --config.method=fm_vp --workdir workdirs/cifar10_fm_vp

Needs CIFAR-10 prepared once in ArrayRecord format under config.data.dir (`fm-jax prepare
--dataset cifar10` prints the command). The recipe: the paper's U-Net (preset fm_cifar10:
256 channels, multipliers 1-2-2-2, 2 residual blocks, 4 heads of 64 channels, attention at
16x16, no dropout), batch 256, learning rate 5e-4 with 45k warmup steps and polynomial
decay, 391k iterations, horizontal flips, dequantized pixels in [-1, 1].
Published (FM with the OT path): 2.99 bits/dim, FID 6.35, 142 NFE (Dopri5);
with the VP diffusion path: 3.10 bits/dim, FID 8.06, 183 NFE. Not run here (no GPU time).
"""

from fm_jax.configs import images


def get_config():
    config = images.get_config()
    config.method = "fm"
    config.sigma = 1e-4
    config.target = "tfds:cifar10"
    config.data.flip = True
    config.model.preset = "fm_cifar10"
    config.model.dropout = 0.0
    config.batch_size = 256
    config.learning_rate = 5e-4
    config.warmup_steps = 45_000
    config.lr_decay = "polynomial"
    config.grad_clip = 0.0
    config.ema_decay = 0.9999
    config.num_steps = 391_000
    config.steps_per_call = 1
    config.log_every = 1000
    config.eval_every = 10_000
    config.checkpoint_every = 10_000
    config.ot_solver = "auto"  # the auction on a GPU or TPU (fm_jax.couplings.AUTO_SOLVERS)
    return config
