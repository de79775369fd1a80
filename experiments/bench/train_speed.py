"""Training steps/s of I-CFM and OT-CFM beside a bare Adam step of the same MLP on the same batch.

    python experiments/bench/train_speed.py [--batch 256] [--steps-per-call 100] [--seconds 5] [--out results/train_speed.json]

All variants run `steps_per_call` steps per jitted `lax.scan`, with the toy2d config's
MLP (3 x 64 SELU) and Adam. "bare": regression of the network on a fixed (t, x, target)
batch, no sampling, path or coupling: the floor any flow-matching step pays. "icfm" and
"otcfm" draw N(0, I) and moons inside the step, as `fm-jax train` does. OT-CFM is timed with
both exact solvers. Ratios are measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import optax

from fm_jax.data import toy2d
from fm_jax.train import build_loss, load_config
from fm_jax.train.loop import build_model

CONFIG = pathlib.Path(__file__).parent.parent / "configs" / "toy2d.py"


def steps_per_second(step_fn, params, steps_per_call: int, seconds: float) -> float:
    opt = optax.adam(1e-3)

    @jax.jit
    def run(carry):
        def body(carry, _):
            params, state, i = carry
            grads = step_fn(params, i)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state, i + 1), None

        return jax.lax.scan(body, carry, length=steps_per_call)[0]

    carry = jax.block_until_ready(run((params, opt.init(params), jnp.zeros((), jnp.int32))))
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        carry = run(carry)
        calls += 1
    jax.block_until_ready(carry)
    return calls * steps_per_call / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps-per-call", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", default="results/train_speed.json")
    args = parser.parse_args()

    config = load_config(CONFIG)
    apply, params = build_model(config)
    n = args.batch
    key = jax.random.key(0)
    t = jax.random.uniform(key, (n,))
    x = jax.random.normal(jax.random.fold_in(key, 1), (n, 2))
    y = toy2d.sample("moons", jax.random.fold_in(key, 2), n)

    def bare(params, i):
        return jax.grad(lambda p: jnp.mean((apply(p, t, x, None) - y) ** 2))(params)

    def cfm(method, ot_solver="network_simplex"):
        loss = build_loss(method, config.sigma, ot_solver=ot_solver)

        def step(params, i):
            k = jax.random.fold_in(key, i)
            batch = {"x1": toy2d.sample("moons", jax.random.fold_in(k, 0), n)}
            return jax.grad(lambda p: loss(apply, p, jax.random.fold_in(k, 1), batch)[0])(params)

        return step

    variants = {"bare": bare, "icfm": cfm("icfm"), "otcfm_network_simplex": cfm("otcfm"),
                "otcfm_hungarian": cfm("otcfm", "hungarian")}
    rates = {}
    for name, fn in variants.items():
        rates[name] = steps_per_second(fn, params, args.steps_per_call, args.seconds)
        print(f"{name:<24} {rates[name]:>9.1f} steps/s", flush=True)
    ratios = {
        "icfm_over_bare_time": rates["bare"] / rates["icfm"],
        "otcfm_network_simplex_over_icfm_time": rates["icfm"] / rates["otcfm_network_simplex"],
        "otcfm_hungarian_over_icfm_time": rates["icfm"] / rates["otcfm_hungarian"],
    }
    for name, value in ratios.items():
        print(f"{name:<40} {value:.2f}x")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} on {jax.default_backend()}"
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": machine, "batch": n, "steps_per_call": args.steps_per_call,
                   "steps_per_s": rates, "ratios": ratios}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
