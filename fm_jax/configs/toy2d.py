"""OT-CFM from a standard normal to two moons with torchcfm's 2D network.

    fm-jax train --config toy2d --workdir workdirs/moons
    fm-jax train --config toy2d --config.method=icfm --config.target=8gaussians --workdir W

Methods: icfm, otcfm, sbcfm, fm, fm_vp, si; fastode (a learned encoder coupling, `beta` and the
`encoder` section); flow (a normalizing-flow teacher, the `flow` section); nfm and reflow
(couplings from a trained teacher run, the `teacher` section):

    fm-jax train --config toy2d --config.method=flow --workdir workdirs/nf
    fm-jax train --config toy2d --config.method=nfm --config.teacher.workdir=workdirs/nf \
        --workdir workdirs/nfm

Densities: normal, 8gaussians, moons, scurve,
checkerboard, spirals, or file:PATH to your own (N, d) points in a .npy/.npz file:

    fm-jax train --config toy2d --config.target=file:points.npy --workdir W
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "otcfm"
    # The path's noise scale; NaN (unset) takes the method's default (fm_jax.train.methods):
    # 0.1, and 1 for sbcfm (its Sinkhorn epsilon is 2 sigma^2). A float, so --config.sigma=0.5 parses.
    config.sigma = float("nan")
    # OT-CFM's exact solver: "auto" takes POT's network simplex on the host on a CPU (13x faster
    # than the on-device auction at batch 256) and the auction on a GPU or TPU.
    config.ot_solver = "auto"
    # SB-CFM's Sinkhorn on large global batches: k > 0 recomputes the cost k rows at a time
    # (memory O(batch x k), no batch x batch array; ott-jax's online geometry); 0: dense.
    config.sinkhorn_online = 0
    config.source = "normal"
    config.target = "moons"
    config.model = ml_collections.ConfigDict({"width": 64, "depth": 3, "activation": "selu"})
    # fastode (Lee, Kim & Ye 2023): the KL weight and the encoder q(x0 | x1) (an MLP; a U-Net
    # preset for images), trained with the field.
    config.beta = 1.0
    config.encoder = ml_collections.ConfigDict({"width": 64, "depth": 3, "preset": "tiny"})
    # flow: a normalizing flow (fm_jax.models.flows) trained by maximum likelihood on x1 + noise eps.
    config.flow = ml_collections.ConfigDict(
        {
            "kind": "realnvp",
            "num_layers": 8,
            "width": 64,
            "depth": 2,
            "prior_std": 1.0,
            "noise": 0.0,
            "token_dim": 1,
            "patch": 2,
            "heads": 4,
            "layers": 2,
        }
    )
    # nfm / reflow: the workdir of the teacher run (a flow run for nfm, a flow-matching run for
    # reflow) and, for reflow, how its ODE is integrated ("backward": x0 from the data x1,
    # "forward": x1 from x0); steps = 0 integrates adaptively at rtol / atol. precompute = N maps
    # N pairs once before training and draws the batches from them (0: every batch in the step).
    config.teacher = ml_collections.ConfigDict(
        {
            "workdir": "",
            "direction": "backward",
            "solver": "dopri5",
            "steps": 0,
            "rtol": 1e-4,
            "atol": 1e-4,
            "precompute": 0,
        }
    )
    config.optimizer = "adam"
    config.learning_rate = 1e-3
    config.weight_decay = 0.0
    config.ema_decay = 0.0
    config.batch_size = 256
    config.num_steps = 5000
    config.steps_per_call = 100
    config.log_every = 500
    # W2 of 1000 samples to held-out target points in metrics.jsonl and TensorBoard every so many
    # steps (fm_jax.train.metrics_log; 0: off).
    config.eval_every = 1000
    # Checkpoints (fm_jax.train.checkpoints): every so many steps, at the end and on SIGTERM/SIGINT;
    # the same command resumes a killed run.
    config.checkpoint_every = 1000
    config.keep_checkpoints = 3
    # A train call is cut into parts of about this many seconds, so that SIGTERM is saved within
    # it plus one step whatever steps_per_call is (the same numbers, bit for bit; 0: never cut).
    config.max_call_s = 5.0
    config.seed = 0
    # Devices and layout (fm_jax.train.sharding, fm_jax.train.step): 0 devices = all visible;
    # params "replicated" (data parallel) or "fsdp"; couple the "global" batch or each "group"
    # of coupling_group examples on its device (0: the per-device batch); float32 or bfloat16 compute.
    config.mesh = ml_collections.ConfigDict({"num_devices": 0, "param_layout": "replicated"})
    config.coupling_scope = "global"
    config.coupling_group = 0
    config.precision = "float32"
    # Multi-process runs (fm_jax.train.distributed): "off", "auto" (TPU pods, SLURM) or "manual",
    # e.g. --config.distributed.mode=manual --config.distributed.coordinator=127.0.0.1:1234
    # --config.distributed.num_processes=2 --config.distributed.process_id=0 (and =1 in the other).
    config.distributed = ml_collections.ConfigDict(
        {
            "mode": "off",
            "coordinator": "",
            "num_processes": 1,
            "process_id": 0,
            "init_timeout_s": 300,
            "heartbeat_timeout_s": 100,
        }
    )
    return config
