"""Inception features per second: the FID extractor's throughput at batch 64.

    python experiments/bench/inception.py [--batch 64] [--shape 32,32,3] [--calls 5] [--out results/inception.json]

The FID InceptionV3 (`fm_jax.models.inception`) with the reference input stage (8-bit pixels,
TF1-style resize to 299x299) on random images of `--shape` in [-1, 1], one jitted call per
batch: the compile time, the median seconds per batch over `--calls` timed calls, images/s,
and XLA's GFLOP per batch with the achieved TFLOP/s. The weights are random (He-normal): the
time of the network does not depend on their values, and no weights file is needed, so the
same figure comes from any machine (`gpu_check.py` reports it on the accelerator).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from fm_jax.models import inception

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root, for `experiments`
from experiments import common


def features_per_second(batch: int, shape: tuple[int, ...], calls: int) -> dict:
    """Compile time, seconds per batch, images/s and FLOPs of the FID Inception at `batch`."""
    model = inception.InceptionV3(rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))  # the weights as arguments, as FID passes them
    images = jnp.tanh(jax.random.normal(jax.random.key(0), (batch, *shape)))
    began = time.perf_counter()
    compiled = forward.lower(state, images).compile()
    compile_s = time.perf_counter() - began
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    gflop = float(cost.get("flops", float("nan"))) / 1e9
    jax.block_until_ready(compiled(state, images))  # warm-up
    seconds = common.median_seconds(lambda: compiled(state, images), 0.0, min_repeats=calls, max_repeats=calls)
    return {
        "batch": batch,
        "shape": list(shape),
        "compile_s": compile_s,
        "batch_s": seconds,
        "images_per_s": batch / seconds,
        "gflop_per_batch": gflop,
        "tflop_per_s": gflop / seconds / 1e3,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shape", default="32,32,3", help="H,W,C of the images before the resize to 299x299")
    parser.add_argument("--calls", type=int, default=5, help="timed calls (after one warm-up)")
    parser.add_argument("--out", default="results/inception.json")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    common.announce(
        f"Inception features bench: batch {args.batch} of {shape} images, resized to 299x299, "
        f"{args.calls} timed calls; writing {args.out}"
    )
    row = features_per_second(args.batch, shape, args.calls)
    common.row(
        f"FID Inception: {row['images_per_s']:.1f} images/s ({row['batch_s']:.2f} s per batch of {args.batch}), "
        f"{row['gflop_per_batch']:.0f} GFLOP/batch, {row['tflop_per_s']:.3f} TFLOP/s, compile {row['compile_s']:.1f} s"
    )
    common.write_result({"machine": common.machine(devices=True), "args": vars(args)} | row, args.out)
    return row


if __name__ == "__main__":
    main()
