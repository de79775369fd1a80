"""Log-likelihood throughput (points/s): exact and Hutchinson divergence beside the plain ODE solve.

    python experiments/bench/likelihood.py [--dims 2 64 784] [--batch 256] [--out results/likelihood.json]

For each dimension d: the MLP (`fm_jax.models.MLP`, width and depth by flag) at random
initialization, a batch of N(0, I) points, and `log_likelihood` from t = 1 to 0 with the
midpoint solver in `--steps` fixed steps (so that every variant makes the same NFE). Timed
after compilation as the median over repeats: the exact divergence (D forward-mode products
per evaluation, in chunks of `--chunk`), Hutchinson with 1 and 4 Rademacher probes, and
`encode` without any divergence (the floor). Ratios are against the plain solve, in one run.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
from flax import nnx

import fm_jax as fm
from fm_jax import likelihood

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root, for `experiments`
from experiments import common


def bench(d: int, batch: int, width: int, depth: int, steps: int, chunk: int, budget: float) -> dict:
    model = fm.models.MLP(d, width=width, depth=depth, rngs=nnx.Rngs(d))
    graph, params = nnx.split(model)
    vf = fm.velocity_field(lambda p, t, x, cond: nnx.merge(graph, p)(t, x), params)
    x = jax.random.normal(jax.random.key(0), (batch, d))
    solve = dict(solver="midpoint", steps=steps)
    variants = {
        "encode": jax.jit(lambda x: fm.encode(vf, x, **solve).x),
        "exact": jax.jit(lambda x: likelihood.log_likelihood(vf, x, chunk_size=chunk, **solve).log_prob),
        "hutchinson_1": jax.jit(
            lambda x: likelihood.log_likelihood(vf, x, divergence="hutchinson", key=jax.random.key(1), **solve).log_prob
        ),
        "hutchinson_4": jax.jit(
            lambda x: (
                likelihood.log_likelihood(
                    vf, x, divergence="hutchinson", key=jax.random.key(1), num_probes=4, **solve
                ).log_prob
            )
        ),
    }
    row = {"dim": d, "batch": batch, "nfe": 2 * steps, "points_per_s": {}, "compile_s": {}}
    for name, fn in variants.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(x))
        row["compile_s"][name] = time.perf_counter() - start
        row["points_per_s"][name] = batch / common.median_seconds(lambda: fn(x), budget, min_repeats=2)
    rate = row["points_per_s"]
    row["time_over_encode"] = {name: rate["encode"] / rate[name] for name in rate if name != "encode"}
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64, 784])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="midpoint steps (NFE = 2 x steps)")
    parser.add_argument("--chunk", type=int, default=64, help="basis vectors per forward-mode batch (exact)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per variant")
    parser.add_argument("--out", default="results/likelihood.json")
    args = parser.parse_args(argv)

    common.announce(
        f"likelihood bench: every divergence timed against encoding alone on dimensions {args.dims}, "
        f"{args.seconds:g} s each; writing {args.out}"
    )
    print(f"{'d':>5} {'variant':<14} {'points/s':>12} {'x encode':>9} {'compile s':>10}")
    rows = []
    for d in common.each(args.dims, "likelihood bench", "dimension"):
        row = bench(d, args.batch, args.width, args.depth, args.steps, args.chunk, args.seconds)
        rows.append(row)
        for name, rate in row["points_per_s"].items():
            ratio = row["time_over_encode"].get(name, 1.0)
            common.row(f"{d:>5} {name:<14} {rate:>12.1f} {ratio:>9.2f} {row['compile_s'][name]:>10.2f}")
    result = {
        "machine": common.machine_info(device=str(jax.devices()[0].device_kind)),
        "args": vars(args),
        "rows": rows,
    }
    common.write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
