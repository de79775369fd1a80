"""U-Net train-step time with the flow-matching loss beside the bare network step, f32 and bf16.

    python experiments/bench/unet_step.py [--preset small] [--shape 32,32,3] [--batch 128] [--calls 10] [--out results/unet_step.json]
    python experiments/bench/unet_step.py --preset torchcfm_cifar10    # the CIFAR-10 net (a GPU job)

On synthetic 32x32x3 data (no dataset needed), one Adam step per jitted call:

- "bare": the network regressed on a fixed (t, x, target) batch: no draws, path or coupling;
- "loss": the FM loss (conditional-OT path) on a fixed data batch x1: it draws x0, t and z and
  builds x_t and u_t itself, as a training step does.

Both in float32 and with the bf16 compute of `fm_jax.train.step.mixed_precision`. The calls of
the variants of one precision are interleaved and the median call time is reported, so the
ratio loss / bare is taken under the same machine load. Also printed: compile times and,
from XLA's cost analysis, the step's FLOPs and the achieved FLOP/s.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fm_jax import paths
from fm_jax.losses import cfm_loss
from fm_jax.models import functional, unet
from fm_jax.train.step import mixed_precision

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root, for `experiments`
from experiments import common


def median_call_seconds(steps: dict, carries: dict, calls: int) -> dict[str, float]:
    """Median seconds of a call of each jitted step, their calls interleaved (`calls` rounds of one
    call each), so that every step is timed under the same machine load."""
    times = {name: [] for name in steps}
    for call in range(calls):
        for name, step in steps.items():
            began = time.perf_counter()
            carries[name] = jax.block_until_ready(step(*carries[name], call + 1))
            times[name].append(time.perf_counter() - began)
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(unet.PRESETS))
    parser.add_argument("--shape", default="32,32,3", help="H,W,C")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per variant (after one warm-up)")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--out", default="results/unet_step.json")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    model = unet.unet_preset(args.preset, shape, rngs=nnx.Rngs(0))
    apply, params = functional(model)
    n, key = args.batch, jax.random.key(0)
    t = jax.random.uniform(key, (n,))
    x = jax.random.normal(jax.random.fold_in(key, 1), (n, *shape))
    x1 = jnp.tanh(jax.random.normal(jax.random.fold_in(key, 2), (n, *shape)))
    loss = cfm_loss(paths.CondOT())
    optimizer = optax.adam(1e-4)
    result = {
        "preset": args.preset,
        "params": unet.count_params(model),
        "shape": shape,
        "batch": n,
        "machine": common.machine(devices=True),
        "precisions": {},
    }
    common.announce(
        f"U-Net step bench: preset {args.preset} on {shape} at batch {n}, the bare step against the loss's, "
        f"{args.calls} timed calls each, in {', '.join(args.precisions)}; writing {args.out}"
    )
    for precision in common.each(args.precisions, "U-Net step bench", "precision"):
        net = mixed_precision(apply, precision)
        variants = {
            "bare": lambda p, i: jax.grad(lambda p: jnp.mean((net(p, t, x, None) - x1) ** 2))(p),
            "loss": lambda p, i: jax.grad(lambda p: loss(net, p, jax.random.fold_in(key, i), {"x1": x1})[0])(p),
        }
        steps, carries, row = {}, {}, {}
        for name, fn in variants.items():
            steps[name] = jax.jit(common.optimizer_step(fn, optimizer))
            began = time.perf_counter()
            compiled = steps[name].lower(params, optimizer.init(params), 0).compile()
            row[f"{name}_compile_s"] = time.perf_counter() - began
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            row[f"{name}_gflop"] = float(cost.get("flops", float("nan"))) / 1e9
            carries[name] = jax.block_until_ready(steps[name](params, optimizer.init(params), 0))
        for name, seconds in median_call_seconds(steps, carries, args.calls).items():
            row[f"{name}_step_s"] = seconds
            row[f"{name}_images_per_s"] = n / row[f"{name}_step_s"]
            row[f"{name}_tflop_per_s"] = row[f"{name}_gflop"] / row[f"{name}_step_s"] / 1e3
        row["loss_over_bare_time"] = row["loss_step_s"] / row["bare_step_s"]
        result["precisions"][precision] = row
        common.row(
            f"{precision}: bare {row['bare_step_s'] * 1e3:.1f} ms, loss {row['loss_step_s'] * 1e3:.1f} ms "
            f"({row['loss_over_bare_time']:.3f}x), {row['loss_images_per_s']:.0f} images/s, "
            f"{row['loss_gflop']:.0f} GFLOP/step, {row['loss_tflop_per_s']:.2f} TFLOP/s, "
            f"compile {row['loss_compile_s']:.1f} s"
        )
    common.write_result(result, args.out)


if __name__ == "__main__":
    main()
