"""The OT-CFM paper's 2D experiment (Tong et al. 2024, Table 2), reproduced with fm_jax.

    python experiments/toy2d_table.py [--steps 20000] [--seeds 3] [--num 10000] [--workers 1] [--out results/toy2d.json]

Methods I-CFM, OT-CFM, SB-CFM, FM and SI on N -> 8gaussians, moons -> 8gaussians,
N -> moons and N -> scurve (FM needs a Gaussian source: "n/a" on moons -> 8gaussians).
Each cell trains `--steps` steps at batch `--batch` with the toy2d config (MLP 3 x 64 SELU,
Adam 1e-3, sigma 0.1 for I-CFM/OT-CFM/FM, sigma 1 for SB-CFM as in the paper) and reports,
as mean ± std over seeds: W2 on `--num` samples with Dopri5 (rtol = atol = 1e-4) and with
Euler at 100, 10 and 2 steps, Dopri5's NFE, the normalized path energy and training steps/s.
Writes the JSON and a markdown table beside it (`.md`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import pathlib
import sys
import tempfile

from fm_jax.solvers import SolverSpec
from fm_jax.train import train
from fm_jax.train.evaluate import evaluate, reference_w2_sq
from fm_jax.train.methods import METHODS
from fm_jax.train.workdir import load_run

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repository root, for `experiments`
from experiments import common

TASKS = ("normal:8gaussians", "moons:8gaussians", "normal:moons", "normal:scurve")
SOLVERS = ("dopri5", "euler:100", "euler:10", "euler:2")
TOL = 1e-4  # Dopri5's rtol = atol, as torchdiffeq's comparisons use
SIGMA = {"sbcfm": 1.0}
PAPER_METHODS = ("icfm", "otcfm", "sbcfm", "fm", "si")  # the OT-CFM paper's 2D methods


def run_cell(method: str, source: str, target: str, seed: int, w2_sq: float, args) -> dict:
    config = common.config_with(
        {
            "method": method,
            "source": source,
            "target": target,
            "seed": seed,
            "sigma": SIGMA.get(method, 0.1),
            "num_steps": args.steps,
            "batch_size": args.batch,
            "steps_per_call": min(100, args.steps),
            "log_every": args.steps,
        }
    )
    with tempfile.TemporaryDirectory() as workdir:
        train(config, workdir, progress=False)
        # The rate of the last log line (at the end: log_every is the whole run), as the table was made.
        rate = json.loads(pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()[-1])["steps_per_s"]
        specs = [SolverSpec.parse(s, TOL, TOL) for s in SOLVERS]
        report = evaluate(load_run(workdir), specs, args.num, seed=1000 + seed, w2_sq_source_target=w2_sq)
    cell = {f"w2_{spec}": row["w2"] for spec, row in report["solvers"].items()}
    cell.update(
        nfe=report["solvers"]["dopri5"]["nfe"],
        npe=report["solvers"]["dopri5"]["normalized_path_energy"],
        steps_per_s=rate,
    )
    return cell


def methods_of(task: str, args) -> list[str]:
    """The methods with a cell on `task` (FM and others that need a Gaussian source skip the rest)."""
    source = task.split(":")[0]
    return [m for m in args.methods if source == "normal" or not METHODS[m].normal_source_only]


def run_task_seed(task: str, seed: int, args, done=None) -> dict:
    """Every method's cell for one task and seed, sharing the reference W2 of the task; `done()`
    after each cell (a progress bar's update)."""
    source, target = task.split(":")
    w2_sq = reference_w2_sq(source, target, args.num, seed=1000 + seed)
    cells = {}
    for method in methods_of(task, args):
        cells[method] = run_cell(method, source, target, seed, w2_sq, args)
        common.row(f"{task} {method} seed {seed} { ({k: round(v, 4) for k, v in cells[method].items()}) }")
        if done is not None:
            done()
    return cells


def markdown(table: dict, machine: str, args) -> str:
    cols = [f"w2_{s}" for s in SOLVERS] + ["nfe", "npe", "steps_per_s"]
    heads = ["W2 dopri5", "W2 euler 100", "W2 euler 10", "W2 euler 2", "NFE", "NPE", "steps/s"]
    shared = f", {args.workers} runs at a time sharing the CPU" if args.workers > 1 else ""
    lines = [
        f"2D flows, {args.steps} steps at batch {args.batch}, {args.seeds} seeds, W2 on {args.num} samples "
        f"({machine}{shared}); mean ± std over seeds; NPE = normalized path energy (Dopri5); "
        f"`python experiments/toy2d_table.py --steps {args.steps} --seeds {args.seeds} --num {args.num} "
        f"--workers {args.workers}`.",
        "",
    ]
    for task, rows in table.items():
        lines += [
            f"**{task.replace(':', ' → ')}**",
            "",
            "| method | " + " | ".join(heads) + " |",
            "| --- |" + " ---: |" * len(heads),
        ]
        for method, stats in rows.items():
            if stats is None:
                lines.append(f"| {method} | " + " | ".join(["n/a"] * len(heads)) + " |")
                continue
            cells = [f"{stats[c]['mean']:.3g} ± {stats[c]['std']:.2g}" for c in cols]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(PAPER_METHODS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="SOURCE:TARGET")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--num", type=int, default=10_000)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes running (task, seed) groups at once; >1 shares the CPU, so steps/s drops",
    )
    parser.add_argument("--out", default="results/toy2d.json")
    args = parser.parse_args(argv)

    groups = [(task, seed) for task in args.tasks for seed in range(args.seeds)]
    total = sum(len(methods_of(task, args)) for task, _ in groups)
    common.announce(
        f"toy2d table: {total} cells ({', '.join(args.methods)} on {', '.join(args.tasks)}, {args.seeds} seed(s)), "
        f"each {args.steps} training steps, then W2 on {args.num} samples with {', '.join(SOLVERS)}; "
        f"{args.workers} worker(s); writing {args.out}"
    )
    with common.bar(total, "toy2d table", "cell") as cells_done:
        if args.workers > 1:
            # Separate processes (spawned: JAX is not fork-safe), each training and evaluating whole cells.
            with concurrent.futures.ProcessPoolExecutor(
                args.workers, mp_context=multiprocessing.get_context("spawn")
            ) as pool:
                results = []
                for cells in pool.map(run_task_seed, *zip(*groups), [args] * len(groups)):
                    results.append(cells)
                    cells_done.update(len(cells))
        else:
            results = [run_task_seed(task, seed, args, cells_done.update) for task, seed in groups]
    by_group = dict(zip(groups, results))
    table = {}
    for task in args.tasks:
        table[task] = {}
        for method in args.methods:
            cells = [by_group[task, seed][method] for seed in range(args.seeds) if method in by_group[task, seed]]
            table[task][method] = common.mean_std(cells) if cells else None
    machine = common.machine()
    common.write_result(
        {"machine": machine, "args": vars(args), "table": table}, args.out, markdown(table, machine, args)
    )
    return table


if __name__ == "__main__":
    main()
