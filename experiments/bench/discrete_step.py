"""Discrete flows: the train step against the bare network step, and sampling throughput against steps.

    python experiments/bench/discrete_step.py [--preset small] [--length 64] [--levels 17] [--batch 256] \
        [--calls 10] [--steps 10 100 1000] [--out results/discrete_step.json]

On random tokens (no dataset needed), one Adam step per jitted call, the Transformer preset
`--preset` over `--length` tokens of `--levels` values plus the mask:

- "bare": the network's cross-entropy on a fixed (t, x_t, x1) batch: no draws, no path;
- "loss": `dfm_loss` on the data batch x1 (the masked source): it draws t and x_t itself and
  carries the unmasked tokens over, as a training step does.

The calls of the two are interleaved and the median call time is reported (`unet_step.median_call_seconds`),
so the ratio loss / bare is taken under the same machine load; the target is <= 1.10 on a CPU.
Then the Euler jump sampler's sequences per second at each of `--steps` (NFE = steps) and the
exact unmasking sampler's (NFE = length), on `--batch` sequences, after a compile each.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import optax
from flax import nnx

import fm_jax as fm
from fm_jax.models import functional
from fm_jax.models.transformer import transformer_preset
from fm_jax.models.unet import count_params

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root, for `experiments`
import unet_step  # noqa: E402 (this folder, as the tests and the script's own path import it)

from experiments import common


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--levels", type=int, default=17)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per variant (after one warm-up)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100, 1000], help="Euler steps of the sampler")
    parser.add_argument("--out", default="results/discrete_step.json")
    args = parser.parse_args(argv)
    path = fm.discrete.MixturePath(args.levels, "mask")
    model = transformer_preset(args.preset, path.num_states, args.levels, args.length, rngs=nnx.Rngs(0))
    apply, params = functional(model)
    n, key = args.batch, jax.random.key(0)
    x1 = jax.random.randint(key, (n, args.length), 0, args.levels)
    t = jax.random.uniform(jax.random.fold_in(key, 1), (n,))
    x_t = path.sample(jax.random.fold_in(key, 2), path.draw_source(key, x1.shape), x1, t)
    loss = fm.discrete.dfm_loss(path)
    optimizer = optax.adam(1e-4)
    common.announce(
        f"discrete step bench: Transformer {args.preset} on {args.length} tokens of {args.levels} levels at batch {n}, "
        f"the bare step against dfm_loss's, then the samplers at {args.steps} steps; writing {args.out}"
    )

    def bare(p, i):
        return jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, t, x_t, None), x1).mean())(p)

    variants = {
        "bare": bare,
        "loss": lambda p, i: jax.grad(lambda p: loss(apply, p, jax.random.fold_in(key, i), {"x1": x1})[0])(p),
    }
    steps, carries, row = {}, {}, {"params": count_params(model)}
    for name, fn in variants.items():
        steps[name] = jax.jit(common.optimizer_step(fn, optimizer))
        began = time.perf_counter()
        steps[name].lower(params, optimizer.init(params), 0).compile()
        row[f"{name}_compile_s"] = time.perf_counter() - began
        carries[name] = jax.block_until_ready(steps[name](params, optimizer.init(params), 0))
    for name, seconds in unet_step.median_call_seconds(steps, carries, args.calls).items():
        row[f"{name}_step_s"] = seconds
        row[f"{name}_sequences_per_s"] = n / seconds
    row["loss_over_bare_time"] = row["loss_step_s"] / row["bare_step_s"]
    common.row(
        f"train step: bare {row['bare_step_s'] * 1e3:.1f} ms, loss {row['loss_step_s'] * 1e3:.1f} ms "
        f"({row['loss_over_bare_time']:.3f}x), {row['loss_sequences_per_s']:.0f} sequences/s"
    )
    posterior = lambda t, x: apply(params, t, x, None)
    x0 = path.draw_source(key, x1.shape)
    sampling = []
    samplers = [("euler", s) for s in args.steps] + [("unmask", args.length)]
    for method, count in common.each(samplers, "discrete sampling", "sampler"):
        run = jax.jit(
            lambda key, method=method, count=count: fm.discrete.sample(posterior, x0, path, key, count, method).x1
        )
        jax.block_until_ready(run(key))  # compile
        seconds = common.median_seconds(lambda: run(jax.random.fold_in(key, 7)), 0.0, min_repeats=3, max_repeats=3)
        sampling.append({"sampler": method, "nfe": count, "s": seconds, "sequences_per_s": n / seconds})
        common.row(f"{method} NFE {count}: {n / seconds:.0f} sequences/s ({seconds * 1e3 / count:.2f} ms per NFE)")
    result = {
        "machine": common.machine(devices=True),
        "args": vars(args),
        "train_step": row,
        "sampling": sampling,
    }
    common.write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
