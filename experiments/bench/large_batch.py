"""Global OT over large batches: memory per device and time per solve, exact and entropic.

    python experiments/bench/large_batch.py [--sizes 4096 16384] [--dims 2 3072] [--devices 8] [--out results/large_batch.json]

For each batch size n and dimension d (x0 ~ N(0, I), x1 ~ N(3 e1, 0.25 I), as in couplings.py),
on one device of this machine:

- `auction`: the exact assignment (ExactOT(solver="auction")), where n <= --exact-max;
- `sinkhorn_dense`: SinkhornOT (epsilon = 0.05 x mean cost) with the n x n cost in memory,
  where n <= --dense-max;
- `sinkhorn_online`: the same solve with ott-jax's online geometry, --chunk rows at a time.

Memory is XLA's compiled figure for the call (arguments, outputs and temporaries), the memory
a device needs for it. A global batch sharded over D devices is gathered on each for the
auction and the online solve (`fm_jax.train.step.couple_global`), so each device holds this
much; the dense solve keeps x0 split by rows (`Coupling.layout`), and `sinkhorn_rows_mb` is
its memory per device over --devices devices (fake CPU devices here; compiled, not run).
Time is one call after compiling. A solve expected to take longer than --budget seconds runs a capped number of
Sinkhorn iterations instead, and its time per solve is that per-iteration time times the
iterations the dense solve (the same iterates) needed, marked `estimated`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

import fm_jax as fm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root, for `experiments`
from experiments import common


def memory_mb(compiled) -> float:
    """The compiled call's argument, output and temporary bytes, in MiB."""
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes) / 2**20


def timed_call(coupling, key, x0, x1) -> tuple[float, float, object]:
    """(MiB, seconds of one call after compiling, the call's output)."""
    compiled = jax.jit(coupling.call_with_stats).lower(key, x0, x1).compile()
    began = time.perf_counter()
    out = jax.block_until_ready(compiled(key, x0, x1))
    return memory_mb(compiled), time.perf_counter() - began, out


def use_devices(count: int) -> int:
    """The devices the split dense solve is compiled for: `count` fake CPU devices where the
    backend has not started yet (a script run), else those there are, at most `count`."""
    try:
        jax.config.update("jax_num_cpu_devices", count)  # only before the CPU backend starts
    except RuntimeError:
        pass
    return min(count, jax.device_count())


def rows_memory_mb(coupling, key, n: int, d: int, devices: int) -> float:
    """Memory per device of `couple_global` for `coupling` on a batch of n split over `devices`."""
    mesh = fm.train.sharding.make_mesh(devices)
    split = fm.train.sharding.batch_sharding(mesh)
    batch = {name: jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=split) for name in ("x0", "x1")}
    program = jax.jit(lambda b: fm.train.step.couple_global(coupling, key, b, mesh))
    return memory_mb(program.lower(batch).compile())


def bench(n: int, d: int, args) -> dict:
    kx, ky, kc = jax.random.split(jax.random.key(n * 7919 + d), 3)
    x0 = jax.random.normal(kx, (n, d))
    x1 = 0.5 * jax.random.normal(ky, (n, d)) + jnp.zeros(d).at[0].set(3.0)
    row: dict = {"n": n, "d": d, "points_mb": 2 * n * d * 4 / 2**20}
    if n <= args.exact_max:
        row["auction_mb"], row["auction_s"], (_, stats) = timed_call(fm.couplings.ExactOT(solver="auction"), kc, x0, x1)
        row["auction_rounds"] = float(stats["auction_rounds"])
    iterations = None
    if n <= args.dense_max:
        dense = fm.couplings.SinkhornOT(epsilon=0.05)
        row["sinkhorn_dense_mb"], row["sinkhorn_dense_s"], (_, stats) = timed_call(dense, kc, x0, x1)
        iterations = row["sinkhorn_iterations"] = float(stats["sinkhorn_iterations"])
        if args.devices > 1:
            row["sinkhorn_rows_mb"] = rows_memory_mb(dense, kc, n, d, args.devices)
    online = fm.couplings.SinkhornOT(epsilon=0.05, online=args.chunk)
    # One pass of the online kernel is about two cost evaluations of n^2 d multiply-adds each.
    expected = (iterations or 100) * 2 * n * n * d * 2 / args.flops
    if expected <= args.budget:
        row["sinkhorn_online_mb"], row["sinkhorn_online_s"], (_, stats) = timed_call(online, kc, x0, x1)
        row["sinkhorn_online_iterations"] = float(stats["sinkhorn_iterations"])
    else:
        capped = fm.couplings.SinkhornOT(epsilon=0.05, online=args.chunk, max_iterations=10)
        row["sinkhorn_online_mb"], seconds, _ = timed_call(capped, kc, x0, x1)
        row["sinkhorn_online_s"] = seconds / 10 * (iterations or 100)
        row["sinkhorn_online_estimated"] = True
    return row


def markdown(rows: list[dict], machine: str, chunk: int, devices: int) -> str:
    lines = [
        f"Global OT on one device ({machine}); memory in MiB (XLA's figure for the call), time per solve in s; "
        f"online chunk {chunk} rows; the dense solve split by rows over {devices} devices: its MiB per device; "
        "`python experiments/bench/large_batch.py`.",
        "",
        f"| n | d | points | auction: MiB, s | Sinkhorn dense: MiB, s (iterations) | dense over {devices}: MiB/device "
        "| Sinkhorn online: MiB, s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def pair(row, name):
        if f"{name}_s" not in row:
            return "–"
        mark = " (est.)" if row.get(f"{name}_estimated") else ""
        return f"{row[f'{name}_mb']:,.0f}, {row[f'{name}_s']:,.2f}{mark}"

    for r in rows:
        dense = pair(r, "sinkhorn_dense") + (f" ({r['sinkhorn_iterations']:.0f})" if "sinkhorn_iterations" in r else "")
        split = f"{r['sinkhorn_rows_mb']:,.0f}" if "sinkhorn_rows_mb" in r else "–"
        lines.append(
            f"| {r['n']:,} | {r['d']} | {r['points_mb']:,.1f} | {pair(r, 'auction')} | {dense} | {split} "
            f"| {pair(r, 'sinkhorn_online')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3072])
    parser.add_argument("--chunk", type=int, default=1024, help="rows per chunk of the online geometry")
    parser.add_argument("--exact-max", type=int, default=4096, help="the largest n solved exactly")
    parser.add_argument("--dense-max", type=int, default=16384, help="the largest n with the dense cost")
    parser.add_argument(
        "--budget", type=float, default=300.0, help="seconds an online solve may take before estimating"
    )
    parser.add_argument("--flops", type=float, default=5e10, help="this machine's FLOP/s, for the budget's estimate")
    parser.add_argument(
        "--devices", type=int, default=8, help="devices the dense solve is split over for its memory per device"
    )
    parser.add_argument("--out", default="results/large_batch.json")
    args = parser.parse_args(argv)
    args.devices = use_devices(args.devices)
    machine = common.machine()
    sizes = [(d, n) for d in args.dims for n in args.sizes]
    common.announce(f"large-batch OT bench: {len(sizes)} size(s) (n x d) on one device; writing {args.out}")
    rows = []
    for d, n in common.each(sizes, "large-batch OT bench", "size"):
        rows.append(bench(n, d, args))
        common.row(str(rows[-1]))
    common.write_result(
        {"machine": machine, "args": vars(args), "rows": rows},
        args.out,
        markdown(rows, machine, args.chunk, args.devices),
    )


if __name__ == "__main__":
    main()
