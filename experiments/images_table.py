"""Flow matching on small images at CPU scale: digits (8x8) and MNIST-5k (28x28).

    python experiments/images_table.py [--datasets digits mnist5k] [--steps 2000] [--out results/images.json] \
        [--fid-solvers dopri5 euler:10 euler:2] [--keep DIR]

Methods I-CFM, OT-CFM, FM with the conditional-OT path and FM with the VP diffusion path
(Lipman et al. 2023), each trained `--steps` steps at batch `--batch` with the images config
(a U-Net preset, Adam, EMA) on the train split. Reported on the held-out test split: dequantized
bits/dim (`--divergence`, Dopri5 1e-5), the pixel-space Fréchet distance and W2 of `--num`
samples with Dopri5 (rtol = atol = 1e-5) and with Euler at 10 and 2 steps, Dopri5's NFE, the
normalized path energy and curvature, and training steps/s; the Inception FID of the samples
of `--fid-solvers` (default: every solver) against the training split (`fm_jax.train.inception_fid`:
the standard weights and the split's statistics, made once and cached). The claim checked
(Lipman et al. 2023, Table 1): the OT path gives better likelihood and fewer NFE than the
diffusion path. Writes the JSON and a markdown table beside it (`.md`); with `--grids DIR`, a
PNG grid of 64 samples per cell (`DIR/DATASET_METHOD.png`, Dopri5 at 1e-5). `--keep DIR` keeps
every run there, checkpointed every quarter of its steps: the same command run again after a
crash or a kill reuses the measured cells and resumes the interrupted one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import tempfile

from fm_jax.data import images
from fm_jax.plots import save_grid
from fm_jax.solvers import SolverSpec
from fm_jax.train.image_eval import image_nll, sample_images
from fm_jax.train.workdir import load_run

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repository root, for `experiments`
from experiments import common

METHODS = ("icfm", "otcfm", "fm", "fm_vp")
SOLVERS = ("dopri5", "euler:10", "euler:2")


def run_cell(dataset: str, method: str, args) -> dict:
    """Train one cell and measure it; with `--keep`, reuse or resume what an earlier run left."""
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = pathlib.Path(args.keep) / f"{dataset}_{method}"
        else:
            workdir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))
        cell, before = common.kept_cell(
            workdir, lambda: train_cell(dataset, method, args, workdir), lambda: measure(workdir, dataset, method, args)
        )
        if before:
            common.row(f"{dataset} {method} measured before: {workdir / common.CELL}")
        return cell


def train_cell(dataset: str, method: str, args, workdir: pathlib.Path) -> float:
    config = common.config_with(
        {
            "method": method,
            "target": f"tfds:{dataset}",
            "num_steps": args.steps,
            "batch_size": args.batch,
            "steps_per_call": 1,
            "log_every": args.steps,
            # Kept runs resume from their last checkpoint, a quarter of the steps at most behind.
            "checkpoint_every": max(args.steps // 4, 1) if args.keep else args.steps,
            "model.preset": args.preset,
            "data.dir": args.data_dir,
        },
        "images",
    )
    return common.train_rate(config, workdir)


def measure(workdir: pathlib.Path, dataset: str, method: str, args) -> dict:
    run = load_run(workdir)
    report = common.image_reports(run, args.solvers, args.fid_solvers, args.num)
    first = SolverSpec.parse(args.solvers[0])
    nll = image_nll(run, args.num, divergence=args.divergence, solver=first)
    if args.grids:
        pathlib.Path(args.grids).mkdir(parents=True, exist_ok=True)
        x = sample_images(run, 64, first)["x1"]
        save_grid(pathlib.Path(args.grids) / f"{dataset}_{method}.png", images.to_unit(x), 8)
    cell = {f"fd_{spec}": row["fd_pixel"] for spec, row in report.items()}
    cell |= {f"w2_{spec}": row["w2"] for spec, row in report.items()}
    cell |= {f"fid_{spec}": row["fid"] for spec, row in report.items() if "fid" in row}
    dopri = report[args.solvers[0]]
    cell |= {
        "nfe": dopri["nfe"],
        "npe": dopri["normalized_path_energy"],
        "curvature": dopri["curvature"],
        "bits_per_dim": nll["bits_per_dim"],
        "bits_per_dim_se": nll["bits_per_dim_se"],
    }
    return cell


def solver_name(spec: str) -> str:
    """dopri5 -> Dopri5, euler:10 -> Euler-10."""
    name, _, steps = spec.partition(":")
    return name.capitalize() + (f"-{steps}" if steps else "")


def markdown(table: dict, machine: str, args) -> str:
    fid_solvers = [s for s in args.solvers if s in getattr(args, "fid_solvers", [])]
    heads = ["bits/dim", f"NFE ({solver_name(args.solvers[0])})"]
    heads += [f"FID {solver_name(s)}" for s in fid_solvers] + [f"FD {solver_name(s)}" for s in args.solvers]
    heads += [f"W2 {solver_name(args.solvers[0])}", "NPE", "curvature", "steps/s"]
    lines = [
        f"Images: {args.steps} steps at batch {args.batch}, U-Net preset {args.preset}; "
        f"{args.num} held-out test images"
        + (f" (FID: {args.num} samples against the training split)" if fid_solvers else "")
        + "; "
        f"bits/dim with the {args.divergence} divergence; {machine}.",
        "",
        "| dataset | method | " + " | ".join(heads) + " |",
        "| --- | --- |" + " --- |" * len(heads),
    ]
    for dataset, rows in table.items():
        for method, c in rows.items():
            cells = [f"{c['bits_per_dim']:.3f} ± {c['bits_per_dim_se']:.3f}", f"{c['nfe']:.0f}"]
            cells += [f"{c[f'fid_{s}']:.1f}" for s in fid_solvers] + [f"{c[f'fd_{s}']:.2f}" for s in args.solvers]
            cells += [f"{c[f'w2_{args.solvers[0]}']:.2f}", f"{c['npe']:.3f}", f"{c['curvature']:.2f}"]
            cells += [f"{c['steps_per_s']:.1f}"]
            lines.append(f"| {dataset} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist5k"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--preset", default="small", help="U-Net preset (fm_jax.models.unet.PRESETS)")
    parser.add_argument("--num", type=int, default=300, help="held-out images for every metric")
    parser.add_argument(
        "--solvers",
        nargs="+",
        default=list(SOLVERS),
        help="the first also integrates the likelihood and gives NFE, NPE and curvature",
    )
    parser.add_argument("--divergence", choices=("exact", "hutchinson"), default="hutchinson")
    parser.add_argument(
        "--data-dir", default="", help="TFDS data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    parser.add_argument(
        "--fid-solvers",
        nargs="*",
        default=None,
        help="the solvers whose samples get an Inception FID (default: every one; none: no FID)",
    )
    parser.add_argument("--grids", default="", help="a directory for a PNG grid of samples per cell")
    parser.add_argument("--keep", default="", help="keep the runs in this folder; a rerun resumes from it")
    parser.add_argument("--out", default="results/images.json")
    args = parser.parse_args(argv)
    args.fid_solvers = list(args.solvers) if args.fid_solvers is None else args.fid_solvers
    unknown = sorted(set(args.fid_solvers) - set(args.solvers))
    if unknown:
        parser.error(f"--fid-solvers {' '.join(unknown)} not among --solvers {' '.join(args.solvers)}")
    table = {dataset: {} for dataset in args.datasets}
    cells = [(dataset, method) for dataset in args.datasets for method in args.methods]
    common.announce(
        f"images table: {len(cells)} cells ({', '.join(args.methods)} on {', '.join(args.datasets)}), each "
        f"{args.steps} training steps of U-Net {args.preset}, then FD/W2 with {', '.join(args.solvers)}, "
        + (f"Inception FID with {', '.join(args.fid_solvers)}, " if args.fid_solvers else "")
        + f"bits/dim on {args.num} held-out images; writing {args.out}"
    )
    for dataset, method in common.each(cells, "images table", "cell"):
        table[dataset][method] = cell = run_cell(dataset, method, args)
        common.row(f"{dataset} {method} {json.dumps(cell)}")
    machine = common.machine(devices=True)
    common.write_result(
        {"machine": machine, "args": vars(args), "table": table}, args.out, markdown(table, machine, args)
    )


if __name__ == "__main__":
    main()
