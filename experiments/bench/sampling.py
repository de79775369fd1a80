"""Sampling cost: Euler through Diffrax beside a hand-written `lax.scan` loop, and adaptive NFE against tolerance.

    python experiments/bench/sampling.py [--steps 10 100] [--seconds 2] [--train-steps 3000] [--out results/sampling.json]

1. Euler with N fixed steps, `fm_jax.solvers.sample(vf, x0, "euler", steps=N)` (Diffrax), beside
   the same N steps written as `lax.scan` over x <- x + h v(t, x): seconds per solve, their
   ratio in this one run, and the largest difference between the two results. Fields: the 2D
   MLP (3 x 64 SELU) on 10,000 points and an MLP on 784 dimensions (3 x 512) on 1,000 points,
   both at their initial weights (the cost does not depend on them).
2. NFE against tolerance: an I-CFM field trained `--train-steps` steps on N(0, I) -> moons,
   sampled with Dopri5, Tsit5 and Bosh3 at rtol = atol = 1e-2 ... 1e-6: the NFE and the
   distance of the samples to a reference solve at 1e-8 (root mean square over points).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
from flax import nnx

from fm_jax import solvers
from fm_jax.models import MLP, functional
from fm_jax.train.workdir import load_run

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root, for `experiments`
from experiments import common

FIELDS = {"mlp_2d": (2, 64, 3, 10_000), "mlp_784": (784, 512, 3, 1_000)}  # dim, width, depth, points
TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
ADAPTIVE = ("dopri5", "tsit5", "bosh3")


def seconds_per_call(fn, x, seconds: float) -> float:
    """Mean seconds of fn(x) after a warm-up, the calls queued (at least 2, over about `seconds`)."""
    return 1.0 / common.calls_per_second(lambda _: fn(x), None, seconds, min_calls=2, wait_each=False)


def scan_euler(vf, x0, steps: int):
    """The baseline: N Euler steps as a `lax.scan`, no solver library."""
    h = 1.0 / steps

    def body(x, i):
        return x + h * vf(i * h, x), None

    return jax.lax.scan(body, x0, jnp.arange(steps, dtype=x0.dtype))[0]


def euler_rows(steps: list[int], seconds: float) -> list[dict]:
    rows = []
    with common.bar(len(FIELDS) * len(steps), "Diffrax Euler against a scan", "case") as done:
        for name, (dim, width, depth, points) in FIELDS.items():
            apply, params = functional(MLP(dim, width, depth, rngs=nnx.Rngs(0)))
            vf = solvers.velocity_field(apply, params)
            x0 = jax.random.normal(jax.random.key(0), (points, dim))
            for n in steps:
                diffrax_fn = jax.jit(lambda x, n=n: solvers.sample(vf, x, "euler", steps=n).x)
                scan_fn = jax.jit(lambda x, n=n: scan_euler(vf, x, n))
                t_diffrax = seconds_per_call(diffrax_fn, x0, seconds)
                t_scan = seconds_per_call(scan_fn, x0, seconds)
                gap = float(jnp.max(jnp.abs(diffrax_fn(x0) - scan_fn(x0))))
                rows.append(
                    {
                        "field": name,
                        "points": points,
                        "steps": n,
                        "diffrax_s": t_diffrax,
                        "scan_s": t_scan,
                        "diffrax_over_scan": t_diffrax / t_scan,
                        "max_abs_difference": gap,
                    }
                )
                common.row(str(rows[-1]))
                done.update()
    return rows


def tolerance_rows(train_steps: int) -> list[dict]:
    config = common.config_with(
        {
            "method": "icfm",
            "num_steps": train_steps,
            "steps_per_call": min(100, train_steps),
            "log_every": train_steps,
            "checkpoint_every": train_steps,
        }
    )
    with tempfile.TemporaryDirectory() as workdir:
        common.train_rate(config, workdir)
        run = load_run(workdir)
    vf = solvers.velocity_field(run.apply, run.params)
    x0 = jax.random.normal(jax.random.key(1), (2000, 2))
    reference = jax.jit(lambda x: solvers.sample(vf, x, "dopri5", rtol=1e-8, atol=1e-8, max_steps=100_000).x)(x0)
    rows = []
    cases = [(name, tol) for name in ADAPTIVE for tol in TOLERANCES]
    for name, tol in common.each(cases, "NFE per tolerance", "case"):
        sol = jax.jit(lambda x, name=name, tol=tol: solvers.sample(vf, x, name, rtol=tol, atol=tol))(x0)
        error = float(jnp.sqrt(jnp.mean(jnp.sum((sol.x - reference) ** 2, axis=1))))
        rows.append({"solver": name, "tol": tol, "nfe": int(sol.nfe), "rms_error": error})
        common.row(str(rows[-1]))
    return rows


def markdown(result: dict) -> str:
    lines = [
        f"Sampling ({result['machine']}); `python experiments/bench/sampling.py`.",
        "",
        "| field | points | Euler steps | Diffrax ms | lax.scan ms | Diffrax / scan | max difference |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["euler"]:
        lines.append(
            f"| {r['field']} | {r['points']:,} | {r['steps']} | {1e3 * r['diffrax_s']:.3g} | "
            f"{1e3 * r['scan_s']:.3g} | {r['diffrax_over_scan']:.2f} | {r['max_abs_difference']:.1e} |"
        )
    lines += [
        "",
        "| solver | " + " | ".join(f"tol {t:g}" for t in TOLERANCES) + " |",
        "| --- |" + " ---: |" * len(TOLERANCES),
    ]
    for name in ADAPTIVE:
        cells = [f"{r['nfe']} ({r['rms_error']:.1e})" for r in result["tolerance"] if r["solver"] == name]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "NFE (RMS distance to a Dopri5 solve at 1e-8), I-CFM on N(0, I) → moons, 2,000 points."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--out", default="results/sampling.json")
    args = parser.parse_args(argv)
    common.announce(
        f"sampling bench: Diffrax's Euler against a lax.scan loop ({len(FIELDS)} fields x steps {args.steps}), then an "
        f"I-CFM run of {args.train_steps} steps sampled by {', '.join(ADAPTIVE)} at {len(TOLERANCES)} tolerances; "
        f"writing {args.out}"
    )
    result = {
        "machine": common.machine(),
        "args": vars(args),
        "euler": euler_rows(args.steps, args.seconds),
        "tolerance": tolerance_rows(args.train_steps),
    }
    common.write_result(result, args.out, markdown(result))
    return result


if __name__ == "__main__":
    main()
