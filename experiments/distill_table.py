"""Learned and distilled couplings on 2D densities: do they straighten the flow and win at few NFE?

    python experiments/distill_table.py [--tasks normal:8gaussians normal:moons] [--steps 20000] [--seeds 1] \
        [--etas 0.0 0.05 0.2] [--num 5000] [--out results/distill.json] [--plots DIR] [--keep DIR]
    python experiments/distill_table.py --tasks tfds:digits --steps 2000 --batch 128 --num 300 \
        --etas 0.0 0.05 --out results/distill_digits.json

Every model trains `--steps` steps at batch `--batch` with the toy2d config (MLP 3 x 64 SELU,
Adam 1e-3, sigma 0 on the paths so that every student regresses on straight lines):

- icfm, otcfm (Tong et al. 2024): independent and minibatch-OT pairs;
- fastode (Lee, Kim & Ye 2023): the encoder q(x0 | x1) trained with the field, KL weight `--beta`;
- flow (eta): the normalizing flow (RealNVP, `--flow-layers` layers) trained on x1 + eta eps,
  one per `--etas` value, and nfm (eta) its Normalized Flow Matching student (Berthelot et al. 2026);
- reflow (Liu et al. 2023): pairs from the I-CFM run's ODE integrated backward from the data
  (Dopri5, 1e-4), so reflow's training counts the I-CFM teacher's steps too (twice the budget).

Reported per method (mean ± std over seeds): W2 on `--num` samples with Euler at NFE 1, 2, 4,
8 and 16 and with Dopri5 (rtol = atol = 1e-4) and its NFE; the curvature (Lee et al. 2023) and
the normalized path energy along Dopri5's trajectories; KL(target || model) in nats from the
held-out log-likelihood (exact for the flow; the ODE's with the exact divergence otherwise). The
flow samples in one shot: its W2 stands in every NFE column and its "NFE" is its sequential
network passes. Writes the JSON and a markdown table (`.md`) with the claims checked, and with
`--plots DIR` each model's Dopri5 trajectories (`plot`). `--keep DIR` keeps every run and its
measurements there: the same command run again after a crash or a kill reuses the measured
models and resumes the interrupted one from its checkpoint.

Image tasks (`tfds:digits`, `tfds:mnist5k`) train with the images config (a `--preset` U-Net,
Adam with warmup, EMA, one step per call), the teacher flow is a TarFlow on 2x2 patches
(`--flow-layers` blocks) and fast-ode's encoder a tiny U-Net; reflow's teacher ODE runs inside
each step with `--reflow-steps` Euler steps (Dopri5 in every step is out of reach on a CPU),
forward from x0 ~ N(0, I); the image flows keep no EMA (see `run_task_seed`).
Quality is the pixel Fréchet distance (FD) between generated and held-out test images at
every NFE, with W2 (pixels in [-1, 1]) at one step and with Dopri5 beside it; the claims are
judged by FD there. The likelihood column is the held-out dequantized bits/dim (Hutchinson)
instead of the KL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import tempfile

import jax
import numpy as np

from fm_jax import data, solvers
from fm_jax.data import images
from fm_jax.plots import plot_flow, save_grid
from fm_jax.solvers import SolverSpec
from fm_jax.train.evaluate import evaluate, evaluate_flow, reference_w2_sq
from fm_jax.train.image_eval import image_nll
from fm_jax.train.nll import held_out_nll
from fm_jax.train.state import model_method
from fm_jax.train.workdir import load_run

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repository root, for `experiments`
from experiments import common

TASKS = ("normal:8gaussians", "normal:moons")
NFES = (1, 2, 4, 8, 16)
SOLVERS = ("dopri5",) + tuple(f"euler:{n}" for n in NFES)
DENSITY_TOL = 1e-4  # Dopri5's rtol = atol on the 2D tasks; the image tasks use the default (solvers.DEFAULT_TOL)
CELL = "distill_cell.json"  # a finished model's measurements, in its workdir under --keep
COLUMNS = [f"w2_euler:{n}" for n in NFES] + ["w2_dopri5", "nfe", "curvature", "npe", "kl"]
# Images: the pixel Frechet distance at every NFE (the quality the claims are judged by), the
# Inception FID at `--fid-solvers`, W2 at one step and with Dopri5, and bits/dim in "kl".
FID_SOLVERS = ("euler:1", "euler:2", "dopri5")


def image_columns(args) -> tuple[list[str], list[str]]:
    """The image tables' keys and headings (a table written before FID was measured has none)."""
    fid_solvers = getattr(args, "fid_solvers", [])
    head = lambda spec: "Dopri5" if spec == "dopri5" else f"NFE {spec.split(':')[1]}"
    keys = [f"fd_euler:{n}" for n in NFES] + ["fd_dopri5"] + [f"fid_{s}" for s in fid_solvers]
    keys += ["w2_euler:1", "w2_dopri5", "nfe", "curvature", "npe", "kl"]
    heads = [f"FD NFE {n}" for n in NFES] + ["FD Dopri5"] + [f"FID {head(s)}" for s in fid_solvers]
    heads += ["W2 NFE 1", "W2 Dopri5", "NFE", "curvature", "NPE", "bits/dim"]
    return keys, heads


def train_run(workdir: pathlib.Path, method: str, task: str, seed: int, args, **extra) -> float:
    """Train one model into `workdir`; its training steps/s."""
    source, target = task.split(":", 1) if not data.is_image_spec(task) else ("normal", task)
    calls = 1 if data.is_image_spec(task) else min(100, args.steps)  # steps per call
    overrides = {
        "method": method,
        "source": source,
        "target": target,
        "seed": seed,
        "sigma": 0.0,
        "num_steps": args.steps,
        "batch_size": args.batch,
        "steps_per_call": calls,
        "log_every": args.steps,
        # Kept runs resume from their last checkpoint, about a quarter of the steps at most behind.
        "checkpoint_every": max(args.steps // 4 // calls, 1) * calls if args.keep else args.steps,
        "beta": args.beta,
        "flow.num_layers": args.flow_layers,
        "teacher.rtol": 1e-4,
        "teacher.atol": 1e-4,
    }
    if data.is_image_spec(task):
        overrides |= {
            "model.preset": args.preset,
            "encoder.preset": "tiny",
            "flow.kind": "tarflow",
            "flow.patch": 2,
            "teacher.solver": "euler",
            "teacher.steps": args.reflow_steps,
            "data.dir": args.data_dir,
        }
    config = common.config_with(overrides | extra, "images" if data.is_image_spec(task) else "toy2d")
    return common.train_rate(config, workdir)


def measure_images(run, seed: int, args) -> dict:
    """FD and W2 at every solver, the Inception FID at `--fid-solvers` (a flow, which samples in
    one shot, at the first only: its FID stands for every solver), bits/dim and Dopri5's path."""
    fid_solvers = args.fid_solvers[:1] if run.spec.method.model == "flow" else args.fid_solvers
    report = common.image_reports(run, SOLVERS, fid_solvers, args.num, seed)
    nll = image_nll(run, args.num, divergence="hutchinson", seed=seed)
    dopri = report["dopri5"]
    fids = {f"fid_{spec}": row["fid"] for spec, row in report.items() if "fid" in row}
    if run.spec.method.model == "flow" and fids:
        fids = {f"fid_{spec}": next(iter(fids.values())) for spec in args.fid_solvers}
    return (
        {f"w2_{spec}": row["w2"] for spec, row in report.items()}
        | {f"fd_{spec}": row["fd_pixel"] for spec, row in report.items()}
        | fids
        | {
            "nfe": dopri["nfe"],
            "curvature": dopri["curvature"],
            "npe": dopri["normalized_path_energy"],
            "kl": nll["bits_per_dim"],
        }
    )


def measure(workdir: pathlib.Path, seed: int, w2_sq: float, args) -> dict:
    run = load_run(workdir)
    if run.spec.data.image is not None:
        return measure_images(run, seed, args)
    kl = held_out_nll(run, args.num_nll, "exact", SolverSpec(), seed=seed)["kl"]
    if run.spec.method.model == "flow":
        row = evaluate_flow(run, args.num, seed=1000 + seed)["solvers"]["flow"]
        cell = {f"w2_euler:{n}": row["w2"] for n in NFES}
        return cell | {
            "w2_dopri5": row["w2"],
            "nfe": row["passes"],
            "curvature": float("nan"),
            "npe": float("nan"),
            "kl": kl,
        }
    specs = [SolverSpec.parse(s, DENSITY_TOL, DENSITY_TOL) for s in SOLVERS]
    report = evaluate(run, specs, args.num, seed=1000 + seed, w2_sq_source_target=w2_sq)["solvers"]
    cell = {f"w2_{spec}": row["w2"] for spec, row in report.items()}
    dopri = report["dopri5"]
    return cell | {
        "nfe": dopri["nfe"],
        "curvature": dopri["curvature"],
        "npe": dopri["normalized_path_energy"],
        "kl": kl,
    }


def plot(workdir: pathlib.Path, png: pathlib.Path, seed: int) -> None:
    """Dopri5 (1e-4) trajectories of one run: 1,000 2D paths over the target's points, or 8 images
    (rows) at 9 equally spaced times from noise (left) to sample (right); a flow's one-shot samples."""
    run = load_run(workdir)
    key = jax.random.key(2000 + seed)
    title = f"{workdir.name}: {run.spec.data.target}"
    dopri = SolverSpec(rtol=DENSITY_TOL, atol=DENSITY_TOL)
    if run.spec.data.image is not None:
        if run.spec.method.model == "flow":
            x = model_method(run.spec.model, "sample")(run.params, key, 64)
            return save_grid(png, images.to_unit(x), 8)
        x0 = jax.random.normal(key, (8, *run.spec.data.shape))
        vf = solvers.velocity_field(run.apply, run.params)
        traj = jax.jit(lambda x: solvers.sample(vf, x, dopri, save_trajectory=9))(x0)
        return save_grid(
            png, images.to_unit(np.swapaxes(np.asarray(traj.trajectory), 0, 1).reshape(-1, *x0.shape[1:])), 9
        )
    source, target = run.spec.data.densities()
    k_src, k_tgt = jax.random.split(key)
    if run.spec.method.model == "flow":
        return plot_flow(
            png,
            model_method(run.spec.model, "sample")(run.params, k_src, 1000),
            target.sample(k_tgt, 2000),
            None,
            title,
        )
    vf = solvers.velocity_field(run.apply, run.params)
    sol = jax.jit(lambda x: solvers.sample(vf, x, dopri, save_trajectory=33))(source.sample(k_src, 1000))
    plot_flow(png, sol.x, target.sample(k_tgt, 2000), sol.trajectory, f"{title}, NFE {int(sol.nfe)}")


def models_per_task_seed(args) -> int:
    """The rows of one task and seed: I-CFM, OT-CFM, fast-ode, reflow, and a flow and an NFM per eta."""
    return 4 + 2 * len(args.etas)


def run_task_seed(task: str, seed: int, args, done=None) -> dict:
    """Every model of one task and seed: {row name: metrics}; `done()` after each (a bar's update)."""
    images = data.is_image_spec(task)
    w2_sq = None if images else reference_w2_sq(*task.split(":"), args.num, seed=1000 + seed)
    cells = {}
    with contextlib.ExitStack() as stack:
        if args.keep:
            root = pathlib.Path(args.keep) / "".join(c if c.isalnum() else "_" for c in task) / f"seed{seed}"
        else:
            root = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))

        advance = done or (lambda: None)

        def do(name, method, **extra):
            cells[name], before = common.kept_cell(
                root / name,
                lambda: train_run(root / name, method, task, seed, args, **extra),
                lambda: measure(root / name, seed, w2_sq, args),
                CELL,
            )
            if before:  # measured by an earlier, interrupted run of the table
                common.row(f"{task} seed {seed} {name} measured before: {root / name / CELL}")
                advance()
                return
            common.row(f"{task} seed {seed} {name} { ({k: round(v, 4) for k, v in cells[name].items()}) }")
            if args.plots:
                folder = pathlib.Path(args.plots)
                folder.mkdir(parents=True, exist_ok=True)
                tag = "".join(c if c.isalnum() or c in ".-" else "_" for c in f"{task}_{seed}_{name}")
                plot(root / name, folder / f"{tag}.png", seed)
            advance()

        do("icfm", "icfm")
        do("otcfm", "otcfm")
        do("fastode", "fastode")
        # On images the teacher's coarse Euler ODE generates the pairs forward from x0 ~ N(0, I)
        # (rectified flow's recipe), so the student's x0 are exactly Gaussian; run backward in
        # a few Euler steps, the data's x0 are not.
        do(
            "reflow",
            "reflow",
            **{"teacher.workdir": root / "icfm"} | ({"teacher.direction": "forward"} if images else {}),
        )
        for eta in args.etas:
            # Image flows keep no EMA: after 2,000 steps an EMA of 0.999 still holds 14 % of the
            # initial weights, and that average is a far worse flow (21.7 against 5.5 bits/dim).
            do(f"flow (eta={eta:g})", "flow", **{"flow.noise": eta} | ({"ema_decay": 0.0} if images else {}))
            do(f"nfm (eta={eta:g})", "nfm", **{"teacher.workdir": root / f"flow (eta={eta:g})"})
    return cells


def title(task: str) -> str:
    return task if data.is_image_spec(task) else task.replace(":", " → ")


def claims(table: dict, image_quality: str = "fd") -> list[str]:
    """The issue's claims, each stated as holding or not on every task, judged by W2 on
    densities and on images by `image_quality` ("fd": the pixel Frechet distance, or "fid")."""

    def holds(test) -> str:
        verdicts = {task: test(rows) for task, rows in table.items()}
        return (
            "holds on every task"
            if all(verdicts.values())
            else "does not hold on " + ", ".join(t for t, ok in verdicts.items() if not ok)
        )

    # The quality column: W2 on densities, FD or FID on images.
    on_image = lambda rows, name: "fd_dopri5" in rows[name]
    mean = lambda rows, name, col: rows[name][col.replace("w2_", f"{image_quality}_") if on_image(rows, name) else col][
        "mean"
    ]
    learned = lambda rows: [n for n in rows if n == "fastode" or n == "reflow" or n.startswith("nfm")]
    images = [data.is_image_spec(task) for task in table]
    Q = image_quality.upper()
    q = Q if all(images) else f"W2, {Q} on images," if any(images) else "W2"

    def few_nfe_wins(rows, baseline):  # every learned coupling below `baseline` at Euler NFE 1 and 2
        return all(
            mean(rows, n, f"w2_euler:{k}") < mean(rows, baseline, f"w2_euler:{k}")
            for n in learned(rows)
            for k in (1, 2)
        )

    out = [
        "- Learned and distilled couplings straighten trajectories (curvature below I-CFM's, every one): "
        + holds(lambda rows: all(mean(rows, n, "curvature") < mean(rows, "icfm", "curvature") for n in learned(rows))),
        f"- They win at few NFE against independent pairs ({q} at Euler NFE 1 and 2 below I-CFM's, every one): "
        + holds(lambda rows: few_nfe_wins(rows, "icfm")),
        f"- ... and against minibatch OT pairs ({q} at Euler NFE 1 and 2 below OT-CFM's, every one): "
        + holds(lambda rows: few_nfe_wins(rows, "otcfm")),
        f"- The NFM student beats its teacher flow ({q} with Dopri5 below the flow's, every eta): "
        + holds(
            lambda rows: all(
                mean(rows, n, "w2_dopri5") < mean(rows, n.replace("nfm", "flow"), "w2_dopri5")
                for n in rows
                if n.startswith("nfm")
            )
        ),
    ]
    for task, rows in table.items():
        etas = [n for n in rows if n.startswith("nfm")]
        out.append(
            f"- Effect of eta on {title(task)}: "
            + "; ".join(
                f"{n}: {Q if on_image(rows, n) else 'W2'} Euler-1 {mean(rows, n, 'w2_euler:1'):.3f}, "
                f"Dopri5 {mean(rows, n, 'w2_dopri5'):.3f}, "
                f"curvature {mean(rows, n, 'curvature'):.3f}"
                for n in etas
            )
        )
    return out


def markdown(table: dict, machine: str, args) -> str:
    heads = [f"W2 NFE {n}" for n in NFES] + ["W2 Dopri5", "NFE", "curvature", "NPE", "KL (nats)", "steps/s"]
    image_keys, image_heads = image_columns(args)
    on_images = any(data.is_image_spec(task) for task in table)
    measured = (
        f"pixel Fréchet distance (FD) and W2 against {args.num} held-out images, held-out bits/dim (Hutchinson), `{args.preset}` U-Net, TarFlow "
        f"teacher of {args.flow_layers} blocks, reflow teacher in {args.reflow_steps} Euler steps"
        + (
            f", Inception FID of the {args.num} samples against the training split"
            if getattr(args, "fid_solvers", [])
            else ""
        )
        if on_images
        else f"W2 on {args.num} samples, KL on {args.num_nll} held-out points"
    )
    command = (
        f"python experiments/distill_table.py --tasks {' '.join(table)} --steps {args.steps} --batch "
        f"{args.batch} --seeds {args.seeds} --num {args.num} --etas {' '.join(f'{e:g}' for e in args.etas)}"
        + (
            f" --preset {args.preset} --flow-layers {args.flow_layers} --reflow-steps {args.reflow_steps}"
            + (f" --fid-solvers {' '.join(args.fid_solvers)}" if hasattr(args, "fid_solvers") else "")
            if on_images
            else ""
        )
    )
    lines = [
        f"Learned and distilled couplings, {args.steps} steps at batch {args.batch} each, {args.seeds} seed(s), "
        f"{measured} ({machine}); mean ± std over seeds; `{command}`.",
        "",
    ]
    for task, rows in table.items():
        shown = image_heads + ["steps/s"] if data.is_image_spec(task) else heads
        lines += [
            f"**{title(task)}**",
            "",
            "| method | " + " | ".join(shown) + " |",
            "| --- |" + " ---: |" * len(shown),
        ]
        columns = image_keys if data.is_image_spec(task) else COLUMNS
        for name, stats in rows.items():
            cells = [f"{stats[c]['mean']:.3g} ± {stats[c]['std']:.2g}" for c in columns + ["steps_per_s"]]
            lines.append(f"| {name} | " + " | ".join(cells).replace("nan ± nan", "–") + " |")
        lines.append("")
    lines += ["Claims (Lee et al. 2023; Berthelot et al. 2026), checked on the means above:", ""] + claims(table)
    if on_images and set(FID_SOLVERS) <= set(getattr(args, "fid_solvers", [])):
        lines += ["", "The same claims judged by the Inception FID:", ""] + claims(table, "fid")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="SOURCE:TARGET (the source must be normal)")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.05, 0.2], help="the NFM teachers' noise")
    parser.add_argument("--beta", type=float, default=1.0, help="fast-ode's KL weight")
    parser.add_argument("--flow-layers", type=int, default=8)
    parser.add_argument("--preset", default="small", help="U-Net preset of image tasks")
    parser.add_argument("--reflow-steps", type=int, default=8, help="Euler steps of reflow's teacher on images")
    parser.add_argument("--data-dir", default="", help="TFDS data directory of image tasks")
    parser.add_argument("--num", type=int, default=5000, help="samples for W2")
    parser.add_argument(
        "--fid-solvers",
        nargs="*",
        default=list(FID_SOLVERS),
        choices=SOLVERS,
        help="image tasks: the solvers whose samples get an Inception FID (none: no FID)",
    )
    parser.add_argument("--num-nll", type=int, default=2000, help="held-out points for the KL")
    parser.add_argument("--out", default="results/distill.json")
    parser.add_argument("--plots", default="", help="a folder for each model's trajectory plot (PNG)")
    parser.add_argument("--keep", default="", help="keep the runs in this folder; a rerun resumes from it")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md of an existing --out JSON")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    if args.markdown_only:
        saved = json.loads(out.read_text())
        text = markdown(saved["table"], saved["machine"], argparse.Namespace(**saved["args"]))
        out.with_suffix(".md").write_text(text)
        print(text)
        return saved["table"]
    total = len(args.tasks) * args.seeds * models_per_task_seed(args)
    common.announce(
        f"distillation table: {total} models ({models_per_task_seed(args)} per task and seed: I-CFM, OT-CFM, "
        f"fast-ode, reflow, a flow and an NFM per eta {args.etas}) on {', '.join(args.tasks)}, {args.seeds} seed(s), "
        f"each {args.steps} training steps, then measured; writing {out}"
    )
    with common.bar(total, "distill table", "model") as models_done:
        by_seed = {
            task: [run_task_seed(task, seed, args, models_done.update) for seed in range(args.seeds)]
            for task in args.tasks
        }
    table = {
        task: {name: common.mean_std([c[name] for c in cells]) for name in cells[0]} for task, cells in by_seed.items()
    }
    machine = common.machine()
    common.write_result({"machine": machine, "args": vars(args), "table": table}, out, markdown(table, machine, args))
    return table


if __name__ == "__main__":
    main()
