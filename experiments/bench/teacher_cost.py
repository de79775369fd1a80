"""What a teacher costs: NFM and reflow with the teacher in every train step, or its pairs precomputed.

    python experiments/bench/teacher_cost.py [--steps 2000] [--batch 256] [--pairs 50000] \
        [--target moons] [--out results/teacher_cost.json]

Two teachers on N(0, I) -> `--target` (toy2d config, MLP 3 x 64): an I-CFM run for reflow
(Dopri5 at rtol = atol = 1e-4, backward from the data) and a RealNVP flow (8 couplings, eta =
0.05) for NFM, each trained `--steps` steps. Then each student trains `--steps` steps:

- "in step": the teacher maps every batch inside the jitted train step
  (`config.teacher.precompute = 0`): its cost is paid on every step;
- "precomputed": `config.teacher.precompute = --pairs` maps that many pairs once before
  training (timed on its own, its compile included: the one-off cost a run pays), and the
  steps draw batches from them.

Per teacher it prints and writes: the student's steps/s both ways, the I-CFM step's beside them,
the one-off seconds for the pairs, and the break-even training length, the number of steps
after which precomputing has paid for itself: pairs_s / (1 / in_step - 1 / precomputed)
(null, "never", when the precomputed steps are not faster).
All figures come from this one run; writes the JSON and a markdown table (`.md`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

from fm_jax.train import RunSpec
from fm_jax.train.teachers import precompute_pairs, teacher_coupling

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root, for `experiments`
from experiments import common

steps_per_s = common.train_rate  # a run's training steps/s (the tests replace it)


def config_for(args, **fields):
    return common.config_with(
        {
            "source": "normal",
            "target": args.target,
            "num_steps": args.steps,
            "batch_size": args.batch,
            "steps_per_call": min(100, args.steps),
            "log_every": args.steps,
            "checkpoint_every": args.steps,
            "sigma": 0.0,
            "teacher.rtol": 1e-4,
            "teacher.atol": 1e-4,
        }
        | fields
    )


def pairs_seconds(config, num: int) -> float:
    """Seconds to precompute `num` pairs, as a run pays them once: compiling the teacher's map included."""
    spec = RunSpec.from_config(config)
    coupling = teacher_coupling(spec)
    start = time.perf_counter()
    precompute_pairs(spec, coupling, num)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=50_000)
    parser.add_argument("--target", default="moons")
    parser.add_argument("--out", default="results/teacher_cost.json")
    args = parser.parse_args(argv)
    rows = {}
    common.announce(
        f"teacher cost bench: two teachers (I-CFM, a RealNVP flow), then reflow and NFM students with the teacher in "
        f"the step and with {args.pairs} precomputed pairs, {args.steps} steps each (8 runs); writing {args.out}"
    )
    with tempfile.TemporaryDirectory() as root, common.bar(8, "teacher cost bench") as done:
        root = pathlib.Path(root)
        icfm = steps_per_s(config_for(args, method="icfm"), root / "icfm")
        done.update()
        steps_per_s(config_for(args, method="flow", **{"flow.noise": 0.05}), root / "flow")
        done.update()
        for name, method, teacher in (("reflow (Dopri5 1e-4)", "reflow", "icfm"), ("nfm (RealNVP)", "nfm", "flow")):
            fields = {"method": method, "teacher.workdir": root / teacher}
            in_step = steps_per_s(config_for(args, **fields), root / f"{method}_in_step")
            done.update()
            pre = config_for(args, **fields, **{"teacher.precompute": args.pairs})
            seconds = pairs_seconds(pre, args.pairs)
            done.update()
            precomputed = steps_per_s(pre, root / f"{method}_precomputed")
            done.update()
            saved = 1 / in_step - 1 / precomputed
            rows[name] = {
                "icfm_steps_per_s": icfm,
                "in_step_steps_per_s": in_step,
                "precomputed_steps_per_s": precomputed,
                "pairs": args.pairs,
                "pairs_seconds": seconds,
                "break_even_steps": seconds / saved if saved > 0 else None,
            }
            common.row(
                f"{name} { ({k: v if v is None else round(v, 3) for k, v in rows[name].items()}) }"
            )  # None: never
    machine = common.machine()
    common.write_result({"machine": machine, "args": vars(args), "rows": rows}, args.out, markdown(rows, machine, args))
    return rows


def markdown(rows: dict, machine: str, args) -> str:
    lines = [
        f"Teacher cost, N(0, I) -> {args.target}, {args.steps} steps at batch {args.batch} ({machine}); "
        f"`python experiments/bench/teacher_cost.py --steps {args.steps} --batch {args.batch} --pairs {args.pairs}`.",
        "",
        "| student | I-CFM steps/s | in step: steps/s | precomputed: steps/s | pairs | seconds for the pairs "
        "| break-even steps |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['icfm_steps_per_s']:,.0f} | {r['in_step_steps_per_s']:,.0f} | "
            f"{r['precomputed_steps_per_s']:,.0f} | {r['pairs']:,} | {r['pairs_seconds']:.2f} | "
            + ("never" if r["break_even_steps"] is None else f"{r['break_even_steps']:,.0f}")
            + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
