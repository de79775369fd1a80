"""Time per minibatch coupling: fm_jax's couplings beside SciPy and POT on the same costs.

    python experiments/bench/couplings.py [--sizes 64 256 1024 4096] [--dims 2 3072] [--out results/couplings.json]

For each batch size n and dimension d, x0 is n points of N(0, I) and x1 n points of
N(3 e1, 0.25 I). Timed, after
compilation, as the median over repeats of one call including the cost matrix:
ExactOT with optax's Hungarian algorithm and with the auction of `fm_jax.assignment` (both
jitted), SinkhornOT (ε = 0.05 × mean cost) and, in 2D,
SchrodingerBridge(σ = 1) (ε = 2); and, on the cost matrix already computed in float64,
SciPy's `linear_sum_assignment`, POT's `emd`, and POT's `sinkhorn` at SinkhornOT's ε and
stopping threshold (1e-3 on the marginal error; POT measures it in the L2 norm, ott-jax in
L1) and iteration cap. `exact_gap` and `auction_gap` are the two ExactOT solvers' transport
costs relative to SciPy's optimum (0 when optimal); `sinkhorn_gap` and `pot_sinkhorn_gap` the
same for the cost of the two Sinkhorn plans, which solve the same entropic problem.

Sequential depth, what bounds a solver on a GPU or TPU: `auction_depth` is the auction's
bidding rounds plus phases (as `AuctionResult` reports them), `hungarian_depth` the trips of
optax's Hungarian loops (the row loop, each augmenting-path search step, the inner loop over
the remaining columns at each step, and the augmentation), counted by `hungarian_loop_trips`
on the same cost.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import ot
import scipy.optimize

import fm_jax as fm
from fm_jax.primitives import pairwise_sq_distances

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root, for `experiments`
from experiments import common

# The timed solvers, in the table's column order.
TIMED = (
    "exact_ot_s",
    "auction_s",
    "sinkhorn_ot_s",
    "schrodinger_bridge_s",
    "scipy_lsa_s",
    "pot_emd_s",
    "pot_sinkhorn_s",
)


def timed(fn) -> float:
    """Median seconds of fn() over repeats until 2 s are spent (at least once, at most 20 times)."""
    return common.median_seconds(fn, 2.0, max_repeats=20)


def hungarian_loop_trips(cost: np.ndarray) -> tuple[int, np.ndarray]:
    """(trips, perm): the loop trips of optax's Hungarian algorithm on `cost`, counted by
    running the same shortest-augmenting-path steps in NumPy, and the assignment it reaches
    (perm[j] = the row of column j; the benchmark checks it is optimal).

    optax runs, per row, a while loop over the columns its search adds (each trip an inner
    loop over the columns not yet added, one scalar update per trip) and an augmentation loop
    over the path. Each trip is one dependent step on a device.
    """
    n = cost.shape[0]
    u, v = np.zeros(n), np.zeros(n)
    row4col, col4row = np.full(n, -1), np.full(n, -1)
    trips = 0
    for start in range(n):
        trips += 1  # the row loop
        shortest, path = np.full(n, np.inf), np.full(n, -1)
        rows_seen, cols_seen = np.zeros(n, bool), np.zeros(n, bool)
        remaining = np.arange(n)[::-1].copy()
        left, low, i, sink = n, 0.0, start, -1
        while sink == -1:
            trips += 1 + left  # the search step and its inner loop over the remaining columns
            rows_seen[i] = True
            cols = remaining[:left]
            reduced = low + cost[i, cols] - u[i] - v[cols]
            better = reduced < shortest[cols]
            path[cols[better]] = i
            shortest[cols] = np.minimum(shortest[cols], reduced)
            at_min = np.flatnonzero(shortest[cols] == shortest[cols].min())
            free = at_min[row4col[cols[at_min]] == -1]
            index = free[-1] if free.size else at_min[0]  # ties: a free column, as optax prefers
            j = cols[index]
            low = shortest[j]
            if row4col[j] == -1:
                sink = j
            else:
                i = row4col[j]
            cols_seen[j] = True
            left -= 1
            remaining[index] = remaining[left]
        u[start] += low
        others = rows_seen & (np.arange(n) != start)
        u[others] += low - shortest[col4row[others]]
        v[cols_seen] += shortest[cols_seen] - low
        j = sink
        while True:
            trips += 1  # the augmentation loop
            i = path[j]
            row4col[j] = i
            col4row[i], j = j, col4row[i]
            if i == start:
                break
    return trips, row4col


def bench(n: int, d: int, skip_exact_above: int) -> dict:
    kx, ky, kc = jax.random.split(jax.random.key(n * 7919 + d), 3)
    x0 = jax.random.normal(kx, (n, d))
    x1 = 0.5 * jax.random.normal(ky, (n, d)) + jnp.zeros(d).at[0].set(3.0)
    cost = ot.dist(np.asarray(x0, np.float64), np.asarray(x1, np.float64))
    uniform = np.full(n, 1.0 / n)
    row = {"n": n, "d": d}

    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    optimum = cost[rows, cols].sum()
    row["scipy_lsa_s"] = timed(lambda: scipy.optimize.linear_sum_assignment(cost))
    row["pot_emd_s"] = timed(lambda: ot.emd(uniform, uniform, cost, numItermax=10_000_000))

    sinkhorn = fm.couplings.SinkhornOT(epsilon=0.05)
    eps = sinkhorn.epsilon * float(np.mean(cost))  # the same absolute ε as SinkhornOT's (relative to the mean cost)
    pot_sinkhorn = lambda: ot.sinkhorn(
        uniform, uniform, cost, eps, numItermax=sinkhorn.max_iterations, stopThr=sinkhorn.threshold
    )
    row["pot_sinkhorn_s"] = timed(pot_sinkhorn)
    row["pot_sinkhorn_gap"] = float((pot_sinkhorn() * cost).sum() * n / optimum - 1.0)

    couplings = {
        "exact_ot": fm.couplings.ExactOT(solver="hungarian"),
        "auction": fm.couplings.ExactOT(solver="auction"),
        "sinkhorn_ot": sinkhorn,
    }
    if d == 2:
        couplings["schrodinger_bridge"] = fm.couplings.SchrodingerBridge(sigma=1.0)
    for name, coupling in couplings.items():
        if name == "exact_ot" and n > skip_exact_above:
            continue
        start = time.perf_counter()
        fn = jax.jit(coupling).lower(kc, x0, x1).compile()
        row[f"{name}_compile_s"] = time.perf_counter() - start
        row[f"{name}_s"] = timed(lambda: fn(kc, x0, x1))
        if name in ("exact_ot", "auction"):
            # ExactOT keeps x1 in place and permutes x0: the cost of its pairs against the optimum.
            paired_x0 = np.asarray(fn(kc, x0, x1)[0], np.float64)
            gap = float(((paired_x0 - np.asarray(x1, np.float64)) ** 2).sum() / optimum - 1.0)
            row["exact_gap" if name == "exact_ot" else "auction_gap"] = gap
    result = jax.jit(lambda a, b: fm.assignment.auction(pairwise_sq_distances(a, b)))(x0, x1)
    row["auction_depth"] = int(result.rounds) + int(result.phases)
    if n <= skip_exact_above:
        trips, perm = hungarian_loop_trips(np.asarray(pairwise_sq_distances(x0, x1), np.float64))
        row["hungarian_depth"] = trips
        row["hungarian_replica_gap"] = float(cost[perm, np.arange(n)].sum() / optimum - 1.0)
    plan = np.asarray(jax.jit(sinkhorn.plan)(x0, x1), np.float64)
    row["sinkhorn_gap"] = float((plan * cost).sum() * n / optimum - 1.0)
    return row


def markdown(rows: list[dict], machine: str) -> str:
    """The timing table in milliseconds, as the README quotes it."""
    lines = [
        f"Time per coupling in ms ({machine}); `python experiments/bench/couplings.py`.",
        "",
        "| n | d | ExactOT Hungarian | ExactOT auction | SinkhornOT ε=0.05·mean | SchrodingerBridge σ=1 "
        "| SciPy lsa | POT emd | POT sinkhorn, same ε | exact gap: Hungarian, auction "
        "| depth: Hungarian, auction | Sinkhorn gap: SinkhornOT, POT |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def ms(row, key):
        if key not in row:
            return "–"
        value = 1e3 * row[key]
        return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"

    def gap(row, key):
        return f"{max(row[key], 0.0):.1e}" if key in row else "–"

    def depth(row, key):
        return f"{row[key]:,}" if key in row else "–"

    for r in rows:
        cells = [ms(r, k) for k in TIMED]
        lines.append(
            f"| {r['n']} | {r['d']} | "
            + " | ".join(cells)
            + f" | {gap(r, 'exact_gap')}, {gap(r, 'auction_gap')}"
            + f" | {depth(r, 'hungarian_depth')}, {depth(r, 'auction_depth')}"
            + f" | {r['sinkhorn_gap']:.3f}, {r['pot_sinkhorn_gap']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3072])
    parser.add_argument(
        "--skip-exact-above",
        type=int,
        default=4096,
        help="largest n timed for the Hungarian ExactOT (and its depth counted)",
    )
    parser.add_argument("--out", default="results/couplings.json", help="JSON; a markdown table is written beside it")
    args = parser.parse_args(argv)

    machine = common.machine()
    print(machine)
    cols = [*TIMED, "exact_gap", "auction_gap", "hungarian_depth", "auction_depth", "sinkhorn_gap", "pot_sinkhorn_gap"]
    print(f"{'n':>5} {'d':>5} " + " ".join(f"{c:>20}" for c in cols))
    rows = []
    sizes = [(d, n) for d in args.dims for n in args.sizes]
    common.announce(f"couplings bench: every coupling timed on {len(sizes)} size(s) (n x d); writing {args.out}")
    for d, n in common.each(sizes, "couplings bench", "size"):
        row = bench(n, d, args.skip_exact_above)
        rows.append(row)
        cells = [f"{row[c]:>20.4g}" if c in row else f"{'-':>20}" for c in cols]
        common.row(f"{n:>5} {d:>5} " + " ".join(cells))
    common.write_result(
        {"machine": machine, "command": "python experiments/bench/couplings.py", "rows": rows},
        args.out,
        markdown(rows, machine),
    )


if __name__ == "__main__":
    main()
