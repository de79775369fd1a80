"""The prepared accelerator check: the CIFAR U-Net train step, every exact and entropic coupling
at 128-4096 points, and OT-CFM against I-CFM, in one JSON (under 8 minutes on one GPU).

    python experiments/bench/gpu_check.py [--out results/gpu_check.json]
    python experiments/bench/gpu_check.py --tiny --out /tmp/gpu_check.json    # the CPU smoke run of the tests

1. The train step of the U-Net preset torchcfm_cifar10 on 32x32x3 at batch 128 (the FM loss,
   conditional-OT path, Adam), float32 and bf16 compute: images/s, XLA's FLOPs per step, the
   achieved TFLOP/s and the model FLOP utilization against the device's dense bf16 peak
   (`PEAK_FLOPS`; null on a device not in the table).
2. Milliseconds per coupling of n points in d = 3072 (CIFAR's dimension), n = 128 ... 4096, the
   points on the device: ExactOT with optax's Hungarian algorithm (up to `--hungarian-max`,
   O(n^3)), with the auction (its rounds and cost gap to POT's optimum beside), and with POT's
   network simplex on the host, including the transfers to and from the host; SinkhornOT
   (epsilon = 0.05 x mean cost).
3. The OT-CFM train step (the auction and the host network simplex inside the step) against
   the I-CFM step, same network, batch 128, float32.
4. Inception features per second (`inception.py`): the FID extractor at batch 64 on 32x32x3
   images resized to 299x299.

Each time is the median over repeats after a compile; the JSON records the device, the
compile times and the arguments.
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

import fm_jax as fm
from fm_jax.models import functional, unet
from fm_jax.primitives import pairwise_sq_distances
from fm_jax.train.step import mixed_precision

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root, for `experiments`
import inception  # noqa: E402 (this folder, as the tests and the script's own path import it)
import unet_step  # noqa: E402

from experiments import common

# Dense bf16 tensor-core peak FLOP/s by device kind (the vendors' data sheets, SXM parts).
PEAK_FLOPS = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
}

FULL = {
    "preset": "torchcfm_cifar10",
    "shape": (32, 32, 3),
    "batch": 128,
    "sizes": [128, 256, 512, 1024, 2048, 4096],
    "inception_batch": 64,
}
TINY = {"preset": "tiny", "shape": (8, 8, 3), "batch": 8, "sizes": [8], "inception_batch": 2}


def compiled_step(fn, params, optimizer, row: dict, name: str):
    """Jit and compile one optimizer step of `fn`, recording its compile time and XLA's FLOPs."""
    step = jax.jit(common.optimizer_step(fn, optimizer))
    began = time.perf_counter()
    compiled = step.lower(params, optimizer.init(params), 0).compile()
    row[f"{name}_compile_s"] = time.perf_counter() - began
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    row[f"{name}_gflop"] = float(cost.get("flops", float("nan"))) / 1e9
    return step


def step_times(steps: dict, params, optimizer, calls: int) -> dict[str, float]:
    """Median seconds per call of each step, the calls interleaved (the same load for all)."""
    carries = {name: jax.block_until_ready(step(params, optimizer.init(params), 0)) for name, step in steps.items()}
    return unet_step.median_call_seconds(steps, carries, calls)


def train_steps(sizes: dict, calls: int, progress_desc: str) -> tuple[dict, dict]:
    """Parts 1 and 3: the U-Net step in f32 and bf16, and OT-CFM against I-CFM."""
    shape, n = sizes["shape"], sizes["batch"]
    model = unet.unet_preset(sizes["preset"], shape, rngs=nnx.Rngs(0))
    apply, params = functional(model)
    key = jax.random.key(0)
    x1 = jnp.tanh(jax.random.normal(jax.random.fold_in(key, 2), (n, *shape)))
    optimizer = optax.adam(1e-4)
    path = fm.paths.ICFM(sigma=0.0)
    losses = {
        "icfm": fm.cfm_loss(path),
        "otcfm_auction": fm.cfm_loss(path, fm.couplings.ExactOT(solver="auction")),
        "otcfm_network_simplex": fm.cfm_loss(path, fm.couplings.ExactOT(solver="network_simplex")),
    }

    def grad_of(loss, net):
        return lambda p, i: jax.grad(lambda p: loss(net, p, jax.random.fold_in(key, i), {"x1": x1})[0])(p)

    unet_rows, ot_row = {}, {}
    for precision in common.each(["float32", "bfloat16"], progress_desc, "precision"):
        net = mixed_precision(apply, precision)
        row: dict = {}
        names = ["icfm"] + ([*losses][1:] if precision == "float32" else [])
        steps = {name: compiled_step(grad_of(losses[name], net), params, optimizer, row, name) for name in names}
        for name, seconds in step_times(steps, params, optimizer, calls).items():
            row[f"{name}_step_ms"] = 1e3 * seconds
        row["images_per_s"] = n / (row["icfm_step_ms"] / 1e3)
        row["tflop_per_s"] = row["icfm_gflop"] / row["icfm_step_ms"]
        peak = PEAK_FLOPS.get(jax.devices()[0].device_kind)
        row["mfu_vs_bf16_peak"] = None if peak is None else row["tflop_per_s"] * 1e12 / peak
        unet_rows[precision] = {k: v for k, v in row.items() if k.startswith("icfm") or "_per_s" in k or "mfu" in k}
        common.row(
            f"U-Net {precision}: {row['icfm_step_ms']:.1f} ms/step, {row['images_per_s']:.0f} images/s, "
            f"{row['tflop_per_s']:.1f} TFLOP/s, MFU {row['mfu_vs_bf16_peak']}"
        )
        if precision == "float32":
            ot_row = {k: v for k, v in row.items() if k.startswith("otcfm") or k.startswith("icfm")}
            for name in [*losses][1:]:
                ot_row[f"{name}_over_icfm_time"] = row[f"{name}_step_ms"] / row["icfm_step_ms"]
            common.row(
                "OT-CFM / I-CFM step time: "
                + ", ".join(f"{name} {ot_row[f'{name}_over_icfm_time']:.3f}x" for name in [*losses][1:])
            )
    return unet_rows, ot_row


def coupling_times(sizes: list[int], d: int, hungarian_max: int, progress_desc: str) -> list[dict]:
    """Part 2: ms per coupling call at each n, the points on the device."""
    import ot

    rows = []
    for n in common.each(sizes, progress_desc, "size"):
        kx, ky, kc = jax.random.split(jax.random.key(n), 3)
        x0 = jax.random.normal(kx, (n, d))
        x1 = 0.5 * jax.random.normal(ky, (n, d)) + jnp.zeros(d).at[0].set(3.0)
        couplings = {
            "auction": fm.couplings.ExactOT(solver="auction"),
            "network_simplex": fm.couplings.ExactOT(solver="network_simplex"),
            "sinkhorn": fm.couplings.SinkhornOT(epsilon=0.05),
        }
        if n <= hungarian_max:
            couplings["hungarian"] = fm.couplings.ExactOT(solver="hungarian")
        row: dict = {"n": n, "d": d}
        for name, coupling in couplings.items():
            began = time.perf_counter()
            fn = jax.jit(coupling).lower(kc, x0, x1).compile()
            row[f"{name}_compile_s"] = time.perf_counter() - began
            row[f"{name}_ms"] = 1e3 * common.median_seconds(lambda fn=fn: fn(kc, x0, x1), 1.0, max_repeats=20)
        cost = np.asarray(pairwise_sq_distances(x0, x1), np.float64)
        optimum = ot.emd2(np.full(n, 1.0 / n), np.full(n, 1.0 / n), cost, numItermax=10_000_000) * n
        result = jax.jit(lambda a, b: fm.assignment.auction(pairwise_sq_distances(a, b)))(x0, x1)
        row["auction_depth"] = int(result.rounds) + int(result.phases)
        row["auction_gap_to_pot"] = float(cost[np.asarray(result.perm), np.arange(n)].sum() / optimum - 1.0)
        rows.append(row)
        common.row(
            f"n = {n}: "
            + ", ".join(f"{name} {row[f'{name}_ms']:.2f} ms" for name in couplings)
            + f"; auction depth {row['auction_depth']}, gap {row['auction_gap_to_pot']:.1e}"
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the CPU smoke run of the tests")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per train step")
    parser.add_argument("--dim", type=int, default=3072, help="the dimension of the coupled points")
    parser.add_argument("--hungarian-max", type=int, default=1024, help="the largest n solved by Hungarian")
    parser.add_argument("--out", default="results/gpu_check.json")
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else FULL
    dim = 12 if args.tiny else args.dim
    began = time.perf_counter()
    common.announce(
        f"GPU check on {common.machine(devices=True)}: the {sizes['preset']} U-Net step at batch {sizes['batch']} "
        f"(f32, bf16), couplings at n = {sizes['sizes']} in d = {dim}, OT-CFM vs I-CFM, Inception features/s; "
        f"writing {args.out}"
    )
    unet_rows, ot_row = train_steps(sizes, args.calls, "GPU check: train steps")
    rows = coupling_times(sizes["sizes"], dim, args.hungarian_max, "GPU check: couplings")
    features = inception.features_per_second(sizes["inception_batch"], sizes["shape"], calls=3 if args.tiny else 10)
    common.row(f"FID Inception: {features['images_per_s']:.0f} images/s at batch {features['batch']}")
    result = {
        "machine": common.machine(devices=True),
        "jax": jax.__version__,
        "args": vars(args),
        "unet": {"preset": sizes["preset"], "batch": sizes["batch"], "precisions": unet_rows},
        "couplings": rows,
        "otcfm_vs_icfm": ot_row,
        "inception": features,
        "seconds": time.perf_counter() - began,
    }
    common.write_result(result, args.out)


if __name__ == "__main__":
    main()
