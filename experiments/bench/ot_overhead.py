"""OT-CFM's train step over I-CFM's on an image config, as `fm-jax train` runs them.

    python experiments/bench/ot_overhead.py [--target tfds:mnist5k] [--preset small] [--batch 128] \
        [--solvers auto auction] [--calls 20] [--out results/ot_overhead.json]

The images config (fm_jax/configs/images.py: a U-Net, Adam, EMA, one step per call) on
`--target`, built by the engine (`fm_jax.train.loop.build_engine`) once per method: I-CFM, and
OT-CFM with each of `--solvers` (`auto` resolves to POT's network simplex on the host on a
CPU, `fm_jax.couplings.AUTO_SOLVERS`). A timed call is what the driver does for one step:
read and prepare the batch (for a host solver: bring it to the host, solve the assignment,
send the pairs back) and run the jitted step, waiting for it. The methods' calls are
interleaved (`--calls` rounds of one call each, after two untimed ones) and the median is
reported, so each ratio OT-CFM / I-CFM is taken under the same machine load. The driver also
overlaps the next batch's solve with the running step; these timings do not, so they bound
the overhead from above.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import numpy as np

from fm_jax.train.loop import build_engine, check_config

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root, for `experiments`
from experiments import common


class Run:
    """One method's engine and the step it has reached: `call()` runs the next step, timed."""

    def __init__(self, overrides: dict):
        self.engine = build_engine(check_config(common.config_with(overrides, "images")))
        self.state, self.step = self.engine.state, 0

    def call(self) -> float:
        began = time.perf_counter()
        batches = self.engine.batches(self.engine.data_key, self.step)
        self.state = jax.block_until_ready(self.engine.steps(self.state, batches)[0])
        self.step += 1
        return time.perf_counter() - began


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="tfds:mnist5k")
    parser.add_argument("--preset", default="small", help="U-Net preset (the images config's)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--solvers", nargs="+", default=["auto", "auction"], help="OT-CFM's exact solvers")
    parser.add_argument("--calls", type=int, default=20, help="timed calls of each method")
    parser.add_argument("--data-dir", default="", help="TFDS data directory (default $TFDS_DATA_DIR)")
    parser.add_argument("--out", default="results/ot_overhead.json")
    args = parser.parse_args(argv)
    base = {
        "target": args.target,
        "model.preset": args.preset,
        "batch_size": args.batch,
        "steps_per_call": 1,
        "num_steps": args.calls + 2,
        "log_every": args.calls + 2,
        "checkpoint_every": 0,
        "data.dir": args.data_dir,
    }
    methods = {"icfm": {"method": "icfm"}} | {
        f"otcfm_{solver}": {"method": "otcfm", "ot_solver": solver} for solver in args.solvers
    }
    common.announce(
        f"OT-CFM over I-CFM on the images config ({args.target}, U-Net {args.preset}, batch {args.batch}): "
        f"{len(methods)} engines, {args.calls} interleaved timed steps each; writing {args.out}"
    )
    runs = {name: Run(base | fields) for name, fields in common.each(list(methods.items()), "building", "engine")}
    for run in runs.values():  # compile, and a call with placed outputs as inputs
        run.call(), run.call()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in common.each(range(args.calls), "timing", "round"):
        for name, run in runs.items():
            times[name].append(run.call())
    step_s = {name: float(np.median(t)) for name, t in times.items()}
    ratios = {f"{name}_over_icfm": step_s[name] / step_s["icfm"] for name in runs if name != "icfm"}
    resolved = {name: run.engine.batches.coupling.solver for name, run in runs.items() if name != "icfm"}
    common.row(
        ", ".join(f"{name} {1e3 * s:.1f} ms" for name, s in step_s.items())
        + "; "
        + ", ".join(f"{name} {r:.3f}" for name, r in ratios.items())
    )
    lines = [
        f"OT-CFM's step over I-CFM's on the images config ({args.target}, U-Net {args.preset}, batch "
        f"{args.batch}; {common.machine()}); median of {args.calls} interleaved steps, batch reading and "
        "host coupling included; `python experiments/bench/ot_overhead.py`.",
        "",
        "| method | solver | ms per step | over I-CFM |",
        "| --- | --- | ---: | ---: |",
        f"| I-CFM | – | {1e3 * step_s['icfm']:.1f} | 1.000 |",
    ] + [
        f"| OT-CFM | {name.removeprefix('otcfm_')} → {resolved[name]} | {1e3 * step_s[name]:.1f} "
        f"| {ratios[f'{name}_over_icfm']:.3f} |"
        for name in runs
        if name != "icfm"
    ]
    common.write_result(
        {"machine": common.machine(), "args": vars(args), "step_s": step_s, "ratios": ratios, "solvers": resolved},
        args.out,
        "\n".join(lines) + "\n",
    )


if __name__ == "__main__":
    main()
