"""fm_jax beside torchcfm on the same machine, in the same run: training steps/s and W2.

    pip install -e ".[bench]"          # torch 2.13.0 (CPU build) and torchcfm 1.0.7
    python experiments/bench/vs_torchcfm.py [--steps 20000] [--methods icfm otcfm sbcfm] \
        [--tasks normal:moons normal:8gaussians 8gaussians:moons] [--num 2000] [--seeds 3] [--out results/vs_torchcfm.json]

Both sides train the same network (3 hidden layers of 64 SELU units, time appended to the
input: torchcfm's `models.MLP(dim=2, time_varying=True, w=64)` and `fm_jax.models.MLP`), at
the same batch (256), Adam learning rate (1e-3), sigma (0.1; 1.0 for SB-CFM as in the OT-CFM
paper) and step budget, on the same densities (fm_jax's 8 Gaussians and moons follow
torchcfm's definitions). torchcfm runs its tutorial loop: draw x0 and x1, the matcher's
`sample_location_and_conditional_flow` (its OT-CFM and SB-CFM solve the minibatch plan with
POT on the host), forward, MSE, backward, Adam step, with torch on 1 thread (`--torch-threads`;
its fastest setting on 2 cores). fm_jax runs `fm_jax.train.train` with the toy2d config.
Steps/s excludes compilation and checkpoint writes (fm_jax), a 20-step warm-up (torch), and
a first short run of each side that warms the process and is not reported. W2 is exact,
between `--num` samples of each model's flow (Dopri5, rtol = atol = 1e-4: torchdiffeq's
`odeint` for torch, Diffrax for fm_jax) and fresh target samples.
Each (task, method) runs `--seeds` seeds; "summary" holds the mean and standard deviation
over seeds of both sides' steps/s, their ratio and W2.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

from fm_jax import data, metrics, solvers
from fm_jax.data import toy2d
from fm_jax.train import load_run

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root, for `experiments`
from experiments import common

SIGMA = {"icfm": 0.1, "otcfm": 0.1, "sbcfm": 1.0}
BATCH, LEARNING_RATE, WIDTH = 256, 1e-3, 64


def torch_samplers():
    import torch
    from torchcfm import utils

    return {
        "normal": lambda n: torch.randn(n, 2),
        "8gaussians": lambda n: utils.sample_8gaussians(n),
        "moons": lambda n: utils.sample_moons(n),
    }


def torch_matcher(method: str):
    from torchcfm import conditional_flow_matching as cfm

    sigma = SIGMA[method]
    if method == "icfm":
        return cfm.ConditionalFlowMatcher(sigma=sigma)
    if method == "otcfm":
        return cfm.ExactOptimalTransportConditionalFlowMatcher(sigma=sigma)
    return cfm.SchrodingerBridgeConditionalFlowMatcher(sigma=sigma, ot_method="exact")


def run_torch(method: str, source: str, target: str, steps: int, num: int, seed: int, threads: int = 1) -> dict:
    """torchcfm's training loop; steps/s after a warm-up, and its Dopri5 samples."""
    import torch
    import torchdiffeq
    from torchcfm.models.models import MLP

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)  # POT and torchcfm's samplers draw from numpy too
    samplers = torch_samplers()
    model = MLP(dim=2, time_varying=True, w=WIDTH)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    matcher = torch_matcher(method)

    def step():
        optimizer.zero_grad()
        x0, x1 = samplers[source](BATCH), samplers[target](BATCH)
        t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
        loss = torch.mean((model(torch.cat([xt, t[:, None]], dim=-1)) - ut) ** 2)
        loss.backward()
        optimizer.step()
        return loss

    warmup = min(20, steps)
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps - warmup):
        loss = step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        x0 = samplers[source](num)
        field = lambda t, x: model(torch.cat([x, t.expand(x.shape[0], 1)], dim=-1))
        x1 = torchdiffeq.odeint(field, x0, torch.tensor([0.0, 1.0]), method="dopri5", rtol=1e-4, atol=1e-4)[-1]
    return {
        "steps_per_s": (steps - warmup) / seconds,
        "samples": x1.numpy(),
        "final_loss": loss.item(),
        "threads": torch.get_num_threads(),
    }


def run_fm_jax(method: str, source: str, target: str, steps: int, num: int, seed: int) -> dict:
    config = common.config_with(
        {
            "method": method,
            "source": source,
            "target": target,
            "seed": seed,
            "sigma": SIGMA[method],
            "num_steps": steps,
            "batch_size": BATCH,
            "learning_rate": LEARNING_RATE,
            "steps_per_call": min(100, steps),
            "log_every": steps,
        }
    )
    with tempfile.TemporaryDirectory() as workdir:
        rate = common.train_rate(config, workdir)
        run = load_run(workdir)
    x0 = data.densities(source, target)[0].sample(jax.random.key(1000 + seed), num)
    vf = solvers.velocity_field(run.apply, run.params)
    x1 = jax.jit(lambda x: solvers.sample(vf, x, solver="dopri5", rtol=1e-4, atol=1e-4).x)(x0)
    return {"steps_per_s": rate, "samples": np.asarray(x1)}


def summarize(rows: list[dict]) -> list[dict]:
    """Per (task, method): mean and standard deviation over seeds of each figure."""
    keys = ("torchcfm_steps_per_s", "fm_jax_steps_per_s", "speedup", "torchcfm_w2", "fm_jax_w2")
    groups = {}
    for row in rows:
        groups.setdefault((row["task"], row["method"]), []).append(row)
    return [
        {"task": task, "method": method, "seeds": len(group)} | common.mean_std(group, keys)
        for (task, method), group in groups.items()
    ]


def markdown(summary: list[dict], args) -> str:
    """The summary as the results README's table: mean ± std over seeds of each figure."""

    def cell(figure: dict, digits: int, suffix: str = "") -> str:
        return f"{figure['mean']:.{digits}f}{suffix} ± {figure['std']:.{digits}f}"

    lines = [
        f"fm_jax beside torchcfm, {args.steps} steps at batch {BATCH}, {args.seeds} seed(s), W2 on {args.num} "
        f"Dopri5 samples; mean ± std over seeds; `python experiments/bench/vs_torchcfm.py`.",
        "",
        "| task | method | torchcfm steps/s | fm_jax steps/s | speed-up | W2 torchcfm | W2 fm_jax |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in summary:
        task = row["task"].replace(":", " → ")
        lines.append(
            f"| {task} | {row['method']} | {cell(row['torchcfm_steps_per_s'], 0)} | {cell(row['fm_jax_steps_per_s'], 0)} "
            f"| {cell(row['speedup'], 1, '×')} | {cell(row['torchcfm_w2'], 3)} | {cell(row['fm_jax_w2'], 3)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--methods", nargs="+", default=["icfm", "otcfm", "sbcfm"], choices=sorted(SIGMA))
    parser.add_argument("--tasks", nargs="+", default=["normal:moons", "normal:8gaussians", "8gaussians:moons"])
    parser.add_argument("--num", type=int, default=2000, help="samples for W2")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch's intra-op threads; 1 is torchcfm's fastest here (OT-CFM: 90 steps/s, 25 with 2)",
    )
    parser.add_argument("--out", default="results/vs_torchcfm.json")
    args = parser.parse_args(argv)

    import torch
    import torchcfm

    # The first run in a process pays one-off costs (thread pools, allocations): one short,
    # unreported run of each side first, so that every reported row is a steady-state one.
    runs = [(task, method, seed) for task in args.tasks for method in args.methods for seed in range(args.seeds)]
    common.announce(
        f"fm_jax against torchcfm: {len(runs)} runs ({', '.join(args.methods)} on {', '.join(args.tasks)}, "
        f"{args.seeds} seed(s)), {args.steps} steps on each side, W2 on {args.num} samples; writing {args.out}"
    )
    source, target = args.tasks[0].split(":")
    run_fm_jax(args.methods[0], source, target, 200, 100, 0)
    run_torch(args.methods[0], source, target, 200, 100, 0, args.torch_threads)
    rows = []
    header = (
        f"{'task':<18} {'method':<6} {'torchcfm steps/s':>16} {'fm_jax steps/s':>14} {'speed-up':>8} "
        f"{'W2 torchcfm':>11} {'W2 fm_jax':>9}"
    )
    print(header)
    for task, method, seed in common.each(runs, "fm_jax against torchcfm"):
        source, target = task.split(":")
        reference = np.asarray(toy2d.sample(jax.random.key(2000 + seed), target, args.num))
        ours = run_fm_jax(method, source, target, args.steps, args.num, seed)
        theirs = run_torch(method, source, target, args.steps, args.num, seed, args.torch_threads)
        row = {
            "task": task,
            "method": method,
            "seed": seed,
            "steps": args.steps,
            "torchcfm_steps_per_s": theirs["steps_per_s"],
            "fm_jax_steps_per_s": ours["steps_per_s"],
            "speedup": ours["steps_per_s"] / theirs["steps_per_s"],
            "torchcfm_w2": metrics.w2(theirs["samples"], reference),
            "fm_jax_w2": metrics.w2(np.asarray(ours["samples"]), reference),
            "torch_threads": theirs["threads"],
        }
        rows.append(row)
        common.row(
            f"{task:<18} {method:<6} {row['torchcfm_steps_per_s']:>16.0f} {row['fm_jax_steps_per_s']:>14.0f} "
            f"{row['speedup']:>7.1f}x {row['torchcfm_w2']:>11.3f} {row['fm_jax_w2']:>9.3f}"
        )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": common.machine_info(
            jax=jax.__version__, torch=torch.__version__, torchcfm=getattr(torchcfm, "__version__", "1.0.7")
        ),
        "args": vars(args),
        "rows": rows,
        "summary": summarize(rows),
    }
    common.write_result(result, args.out, markdown(result["summary"], args))
    return result


if __name__ == "__main__":
    main()
