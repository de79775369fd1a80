"""Training steps/s of I-CFM and OT-CFM beside a bare Adam step of the same MLP on the same batch.

    python experiments/bench/train_speed.py [--batch 256] [--steps-per-call 100] [--seconds 5] [--out results/train_speed.json]

All variants run `steps_per_call` steps per jitted `lax.scan`, with the toy2d config's
MLP (3 x 64 SELU) and Adam:

- "bare": regression of the network on a fixed (t, x, target) batch: no draws, path or coupling.
- "bare_drawn": the same regression on inputs drawn afresh each step, as many random numbers
  as the I-CFM loss draws (t, x0 and z): the floor of any Monte Carlo flow-matching step.
- "icfm": the I-CFM loss on a fixed data batch x1 (the loss draws x0, t and z itself).
- "icfm_driver", "otcfm_*": as `fm-jax train` runs them, moons drawn inside the step; OT-CFM
  with both exact solvers.
- "assignment_network_simplex": the exact 256-point assignment alone, calls/s.

Then, for an MLP on `--dims` dimensions (3 x 64 at 2, 3 x `--wide-width` above) in each of
`--precisions` (bf16 compute with f32 parameters, as the engine's `mixed_precision`): the
I-CFM loss on a fixed data batch beside the bare regression of the same network, and their
ratio ("models" in the JSON).

Ratios are measured in this one run: the loss's arithmetic (icfm / bare_drawn), its draws
(bare_drawn / bare), and OT-CFM over I-CFM beside the bound that the assignment's own time
sets, (1 / icfm + 1 / assignment) * icfm.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import optax

from fm_jax import couplings
from fm_jax.data import toy2d
from fm_jax.models import MLP, functional
from fm_jax.train import LossSpec, RunSpec, build_loss
from fm_jax.train.spec import resolve_defaults
from fm_jax.train.state import build_model
from fm_jax.train.step import mixed_precision

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root, for `experiments`
from experiments import common


def steps_per_second(step_fn, params, steps_per_call: int, seconds: float) -> float:
    """Adam steps/s on the gradients `step_fn(params, i)`, `steps_per_call` per jitted scan, calls queued."""
    opt = optax.adam(1e-3)
    run = common.scanned_steps(step_fn, opt, length=steps_per_call)
    carry = (params, opt.init(params), jnp.zeros((), jnp.int32))
    return steps_per_call * common.calls_per_second(run, carry, seconds, wait_each=False)


def assignments_per_second(x0, x1, calls: int, seconds: float) -> float:
    """Exact assignments of the (x0, x1) batch per second, by POT's network simplex on the host."""
    coupling = couplings.ExactOT(solver="network_simplex")

    @jax.jit
    def run(x0):
        def body(x0, _):
            perm = coupling.assignment(x0, x1)
            return x0[perm], None  # the next call depends on this one: nothing is skipped

        return jax.lax.scan(body, x0, length=calls)[0]

    return calls * common.calls_per_second(lambda _: run(x0), None, seconds)


def loss_over_bare(dim: int, width: int, precision: str, n: int, steps_per_call: int, seconds: float) -> dict:
    """Steps/s of the bare regression and of the I-CFM loss for one MLP and precision."""
    from flax import nnx

    apply, params = functional(MLP(dim, width, 3, rngs=nnx.Rngs(0)))
    apply = mixed_precision(apply, precision)
    key = jax.random.key(0)
    t = jax.random.uniform(key, (n,))
    x = jax.random.normal(jax.random.fold_in(key, 1), (n, dim))
    y = jnp.tanh(jax.random.normal(jax.random.fold_in(key, 2), (n, dim)))
    loss = build_loss("icfm", LossSpec(sigma=0.1))

    def bare(params, i):
        return jax.grad(lambda p: jnp.mean((apply(p, t, x, None) - y) ** 2))(params)

    def icfm(params, i):
        return jax.grad(lambda p: loss(apply, p, jax.random.fold_in(key, i), {"x1": y})[0])(params)

    rates = {
        name: steps_per_second(fn, params, steps_per_call, seconds) for name, fn in (("bare", bare), ("icfm", icfm))
    }
    row = {
        "dim": dim,
        "width": width,
        "precision": precision,
        "steps_per_s": rates,
        "icfm_over_bare_time": rates["bare"] / rates["icfm"],
    }
    common.row(
        f"MLP {dim}-d x {width} {precision:<9} bare {rates['bare']:9.1f}  icfm {rates['icfm']:9.1f} steps/s  "
        f"ratio {row['icfm_over_bare_time']:.3f}x"
    )
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps-per-call", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 784])
    parser.add_argument("--wide-width", type=int, default=512)
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--out", default="results/train_speed.json")
    args = parser.parse_args(argv)

    config, _ = resolve_defaults(common.config_with())  # sigma: the method's default
    apply, params = build_model(RunSpec.from_config(config).model)
    n = args.batch
    key = jax.random.key(0)
    t = jax.random.uniform(key, (n,))
    x = jax.random.normal(jax.random.fold_in(key, 1), (n, 2))
    y = toy2d.sample(jax.random.fold_in(key, 2), "moons", n)

    def bare(params, i):
        return jax.grad(lambda p: jnp.mean((apply(p, t, x, None) - y) ** 2))(params)

    def bare_drawn(params, i):
        k_t, k_x0, k_z = jax.random.split(jax.random.fold_in(key, i), 3)
        t_i = jax.random.uniform(k_t, (n,))
        x_i = jax.random.normal(k_x0, (n, 2)) + 0.1 * jax.random.normal(k_z, (n, 2))
        return jax.grad(lambda p: jnp.mean((apply(p, t_i, x_i, None) - y) ** 2))(params)

    def icfm(params, i):
        loss = build_loss("icfm", LossSpec(sigma=config.sigma))
        return jax.grad(lambda p: loss(apply, p, jax.random.fold_in(key, i), {"x1": y})[0])(params)

    def driver(method, ot_solver="network_simplex"):
        loss = build_loss(method, LossSpec(sigma=config.sigma, ot_solver=ot_solver))

        def step(params, i):
            k = jax.random.fold_in(key, i)
            batch = {"x1": toy2d.sample(jax.random.fold_in(k, 0), "moons", n)}
            return jax.grad(lambda p: loss(apply, p, jax.random.fold_in(k, 1), batch)[0])(params)

        return step

    variants = {
        "bare": bare,
        "bare_drawn": bare_drawn,
        "icfm": icfm,
        "icfm_driver": driver("icfm"),
        "otcfm_network_simplex": driver("otcfm"),
        "otcfm_hungarian": driver("otcfm", "hungarian"),
    }
    rates = {}
    common.announce(
        f"train speed bench: {len(variants)} step variants and the host assignment, {args.seconds:g} s each, then "
        f"the loss against the bare step for {len(args.dims) * len(args.precisions)} models; writing {args.out}"
    )
    for name in common.each(list(variants), "step variants", "variant"):
        rates[name] = steps_per_second(variants[name], params, args.steps_per_call, args.seconds)
        common.row(f"{name:<28} {rates[name]:>9.1f} steps/s")
    rates["assignment_network_simplex"] = assignments_per_second(x, y, args.steps_per_call, args.seconds)
    print(f"{'assignment_network_simplex':<28} {rates['assignment_network_simplex']:>9.1f} calls/s", flush=True)
    ratios = {
        "icfm_over_bare_time": rates["bare"] / rates["icfm"],
        "icfm_over_bare_drawn_time": rates["bare_drawn"] / rates["icfm"],
        "bare_drawn_over_bare_time": rates["bare"] / rates["bare_drawn"],
        "otcfm_network_simplex_over_icfm_time": rates["icfm_driver"] / rates["otcfm_network_simplex"],
        "otcfm_bound_from_assignment_over_icfm_time": 1.0 + rates["icfm_driver"] / rates["assignment_network_simplex"],
        "otcfm_hungarian_over_icfm_time": rates["icfm_driver"] / rates["otcfm_hungarian"],
    }
    for name, value in ratios.items():
        print(f"{name:<44} {value:.2f}x")
    models = [
        loss_over_bare(dim, 64 if dim == 2 else args.wide_width, precision, n, args.steps_per_call, args.seconds)
        for dim, precision in common.each(
            [(dim, precision) for dim in args.dims for precision in args.precisions], "loss over bare", "model"
        )
    ]
    common.write_result(
        {
            "machine": common.machine(),
            "batch": n,
            "steps_per_call": args.steps_per_call,
            "steps_per_s": rates,
            "ratios": ratios,
            "models": models,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
