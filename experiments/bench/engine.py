"""Step time of the sharded engine beside a bare jitted step of the same model, loss and batches.

    python experiments/bench/engine.py [--devices 1 8] [--method icfm] [--batch 256] [--seconds 5] [--out results/engine.json]

"bare": `jax.jit` of a `lax.scan` over the same pre-drawn batches, plain Adam on the same loss:
no mesh, shardings, donation, EMA or per-step key folding. "engine": `fm_jax.train.step`'s
`steps(state, batches)` as `fm-jax train` compiles it on a mesh of `--devices` devices
(fake CPU devices where there are fewer), its batches drawn by `fm_jax.train.batches`.
Both run `steps_per_call` steps per call; the ratio engine / bare is measured in one run.
Each device count runs in its own process (the device count is fixed when JAX starts).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root, for `experiments`
from experiments import common


def measure(devices: int, method: str, batch: int, steps_per_call: int, seconds: float) -> dict:
    """In this process: steps/s of the bare step and of the engine on `devices` devices."""
    import jax

    if jax.default_backend() == "cpu" and jax.device_count() < devices:
        raise SystemExit(f"start this process with --xla_force_host_platform_device_count={devices}")
    import optax

    from fm_jax.train.loop import build_engine, check_config

    config = common.config_with(
        {
            "method": method,
            "batch_size": batch,
            "steps_per_call": steps_per_call,
            "num_steps": steps_per_call,
            "log_every": steps_per_call,
            "checkpoint_every": 0,
            "mesh.num_devices": devices,
        }
    )
    engine = build_engine(check_config(config))
    batches = engine.batches(engine.data_key, 0)
    loss = engine.loss  # the step's own loss: the bare step sees the same (already coupled) batches
    apply = engine.apply
    local = jax.device_put(jax.device_get(batches), jax.devices()[0])  # on one device, once
    optimizer = optax.adam(config.learning_rate)

    bare = common.scanned_steps(
        lambda p, i, batch: jax.grad(lambda p: loss(apply, p, jax.random.fold_in(jax.random.key(0), i), batch)[0])(p),
        optimizer,
    )

    def rate(call, carry):
        """(steps/s over `seconds`, time of the first call including its compile)."""
        start = time.perf_counter()
        carry = jax.block_until_ready(call(carry))
        first = time.perf_counter() - start
        # After a second, untimed call (outputs are typed/placed like later inputs from there on),
        # one call in flight, as the driver runs.
        return common.calls_per_second(call, carry, seconds) * steps_per_call, first

    params = jax.device_get(engine.state.params)
    bare_rate, bare_first = rate(lambda c: bare((*c, 0), local)[:2], (params, optimizer.init(params)))
    engine_rate, engine_first = rate(lambda state: engine.steps(state, batches)[0], engine.state)
    return {
        "devices": devices,
        "bare_steps_per_s": bare_rate,
        "engine_steps_per_s": engine_rate,
        "engine_over_bare_time": bare_rate / engine_rate,
        "examples_per_s": engine_rate * batch,
        "first_call_s": {"bare": bare_first, "engine": engine_first},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--method", default="icfm")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps-per-call", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", default="results/engine.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.devices[0], args.method, args.batch, args.steps_per_call, args.seconds)))
        return
    rows = []
    common.announce(
        f"engine bench: {args.method} at batch {args.batch}, the bare step against the engine's, "
        f"{args.seconds:g} s each, on {args.devices} device(s), one process per device count; writing {args.out}"
    )
    for devices in common.each(args.devices, "engine bench", "device count"):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--devices",
            str(devices),
            "--method",
            args.method,
            "--batch",
            str(args.batch),
            "--steps-per-call",
            str(args.steps_per_call),
            "--seconds",
            str(args.seconds),
        ]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        common.row(
            f"{devices} device(s): bare {r['bare_steps_per_s']:.0f} steps/s, engine {r['engine_steps_per_s']:.0f} "
            f"steps/s ({r['engine_over_bare_time']:.3f}x the bare step's time), {r['examples_per_s']:.0f} examples/s"
        )
    common.write_result(
        {
            "machine": common.machine(),
            "method": args.method,
            "batch": args.batch,
            "steps_per_call": args.steps_per_call,
            "rows": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
