"""What the experiment scripts (experiments/*.py, experiments/bench/*.py) share.

- `machine`, `machine_info`: the machine a result was measured on, the "machine" of its JSON;
- `write_result`: the JSON result, and the markdown table beside it;
- `median_seconds`, `calls_per_second`: the timing loops;
- `optimizer_step`, `scanned_steps`: a bare optimizer step (no mesh, sharding, donation or EMA),
  the baseline the benchmarks compare the library's step with;
- `config_with`, `train_rate`: a packaged config (fm_jax/configs) with overrides, trained;
- `mean_std`: the mean and standard deviation over seeds;
- `announce`, `bar`, `each`, `row`: what a script is about to do (a line on stderr), a tqdm bar on
  stderr over its rows or runs (`each` iterates with one), and its result lines on stdout written
  above the bar.

The scripts run as files (`python experiments/bench/couplings.py`), and the tests import them by
module name with their folder on `sys.path`; either way a script puts the repository root on
`sys.path` and imports this module as `experiments.common`.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from fm_jax import progress
from fm_jax.train import apply_overrides, load_config, train


def machine(devices: bool = False) -> str:
    """The machine of a result, as one line.

    By default the CPU and JAX, for the CPU benchmarks: "x86_64, 2 CPUs, jax 0.10.2 on cpu".
    With `devices`, for the runs meant for an accelerator: the first device's kind and the device
    count, "x86_64 NVIDIA H200, 1 device(s)".
    """
    if devices:
        return f"{platform.machine()} {jax.devices()[0].device_kind}, {jax.device_count()} device(s)"
    return f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} on {jax.default_backend()}"


def machine_info(**extra: Any) -> dict[str, Any]:
    """The machine of a result as a JSON object: platform, processor, CPU count, then `extra`
    (library versions, the device) in the order given."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    } | extra


def write_result(
    result: Mapping[str, Any], out: str | os.PathLike | None, markdown: str | None = None
) -> pathlib.Path | None:
    """Write `result` as JSON (indent 1) to `out`, creating its folder, and `markdown`, when given,
    beside it (`out` with the suffix `.md`); print the markdown and the files written.

    Returns the JSON's path; nothing is written when `out` is empty.
    """
    if not out:
        return None
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    written = [out]
    if markdown is not None:
        written.append(out.with_suffix(".md"))
        written[-1].write_text(markdown)
        print(markdown)
    print("wrote " + " and ".join(str(path) for path in written))
    return out


def median_seconds(fn: Callable[[], Any], budget: float, min_repeats: int = 1, max_repeats: int | None = None) -> float:
    """Median wall seconds of `fn()`, its result waited for (`jax.block_until_ready`), over repeats
    until `budget` seconds are spent: at least `min_repeats` times, at most `max_repeats` (None: no cap)."""
    times: list[float] = []
    while len(times) < min_repeats or (sum(times) < budget and (max_repeats is None or len(times) < max_repeats)):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def calls_per_second(
    call: Callable[[Any], Any], carry: Any, seconds: float, *, min_calls: int = 1, wait_each: bool = True
) -> float:
    """Calls per second of `carry = call(carry)`, timed over about `seconds` (at least `min_calls`
    calls) after one untimed call that compiles and warms.

    `wait_each`: each call is waited for before the next is dispatched, one in flight, as the
    train loop runs (several queued multi-device calls can starve XLA:CPU's collectives of
    threads); otherwise the calls queue and only the last is waited for.
    """
    carry = jax.block_until_ready(call(carry))
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        carry = call(carry)
        if wait_each:
            carry = jax.block_until_ready(carry)
        calls += 1
    jax.block_until_ready(carry)
    return calls / (time.perf_counter() - start)


def optimizer_step(grad_fn: Callable[..., Any], optimizer: optax.GradientTransformation) -> Callable[..., Any]:
    """`step(params, opt_state, *args) -> (params, opt_state)`: one bare update of `optimizer` on
    the gradients `grad_fn(params, *args)` (not jitted)."""

    def step(params, opt_state, *args):
        grads = grad_fn(params, *args)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def scanned_steps(
    grad_fn: Callable[..., Any], optimizer: optax.GradientTransformation, length: int | None = None
) -> Callable[..., Any]:
    """A jitted `run((params, opt_state, i), xs=None) -> (params, opt_state, i + n)`: n bare
    optimizer steps in one `lax.scan`, step i on the gradients `grad_fn(params, i)`, or on
    `grad_fn(params, i, x)` for each x of `xs` along its leading axis (n = its length, else `length`)."""
    step = optimizer_step(grad_fn, optimizer)

    @jax.jit
    def run(carry, xs=None):
        def body(carry, x):
            params, opt_state, i = carry
            params, opt_state = step(params, opt_state, i) if x is None else step(params, opt_state, i, x)
            return (params, opt_state, i + 1), None

        return jax.lax.scan(body, carry, xs, length=length)[0]

    return run


def config_with(overrides: Mapping[str, Any] | None = None, name: str = "toy2d") -> ml_collections.ConfigDict:
    """The packaged config `name` (fm_jax/configs/`name`.py) with `overrides` ({"model.width": 32, ...}) applied as
    `--config.KEY=VALUE` flags would be (each value passed as its `str`). The periodic evaluation
    is off (`eval_every` 0) unless an override sets it: the scripts evaluate once, at the end."""
    return apply_overrides(load_config(name), {"eval_every": "0"} | {k: str(v) for k, v in (overrides or {}).items()})


def train_rate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> float:
    """Train `config` into `workdir` (no progress bar); its training steps/s from `summary.json`
    (compilation and checkpoint writes left out)."""
    train(config, workdir, progress=False)
    return json.loads((pathlib.Path(workdir) / "summary.json").read_text())["steps_per_s"]


@functools.cache
def inception():
    """The one Inception FID of a table script (the cached standard weights, converted on first use)."""
    from fm_jax.train.inception_fid import InceptionFID, default_weights

    return InceptionFID(default_weights(progress=True))


def image_reports(run, solvers: Sequence[str], fid_solvers: Sequence[str], num: int, seed: int = 0) -> dict:
    """`evaluate_images`'s row per solver of an image run, with the Inception FID at `fid_solvers`
    only: those are evaluated first with the Inception, the rest without (the same seed gives
    the same samples of a solver in either call)."""
    from fm_jax.solvers import SolverSpec
    from fm_jax.train.image_eval import evaluate_images

    with_fid = [s for s in solvers if s in fid_solvers]
    report = {}
    for names, scorer in (
        (with_fid, inception() if with_fid else None),
        ([s for s in solvers if s not in with_fid], None),
    ):
        if names:
            specs = [SolverSpec.parse(s) for s in names]
            report |= evaluate_images(run, specs, num, seed=seed, inception=scorer)["solvers"]
    return report


CELL = "cell.json"  # a finished model's measurements, in its workdir


def kept_cell(
    workdir: pathlib.Path, train_run: Callable[[], float], measure: Callable[[], dict], cell_file: str = CELL
) -> tuple[dict, bool]:
    """A table cell kept in `workdir` across crashes and kills: (the cell, whether it was measured
    before). A cell measured before is read back; a finished run (`summary.json`) is measured
    again; an interrupted one resumes from its last checkpoint (`train_run()`, which returns its
    steps/s). The measurements and the steps/s are written to `workdir/cell_file`."""
    done = workdir / cell_file
    if done.is_file():
        return json.loads(done.read_text()), True
    summary = workdir / "summary.json"  # written when a run finishes
    rate = json.loads(summary.read_text())["steps_per_s"] if summary.is_file() else train_run()
    cell = measure() | {"steps_per_s": rate}
    done.write_text(json.dumps(cell))
    return cell, False


def mean_std(cells: Sequence[Mapping[str, float]], keys: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """{key: {"mean": ..., "std": ...}} over `cells` (one per seed, say) for each of `keys` (by
    default the first cell's); the standard deviation is the population one (numpy's default)."""
    return {
        k: {"mean": float(np.mean([c[k] for c in cells])), "std": float(np.std([c[k] for c in cells]))}
        for k in (cells[0] if keys is None else keys)
    }


def announce(line: str) -> None:
    """What the script is about to do, one line on stderr (above a live bar)."""
    progress.announce(line, True)


def bar(total: int, desc: str, unit: str = "run") -> tqdm:
    """A tqdm bar on stderr over the script's `total` rows or runs (a context manager)."""
    return progress.bar(total, desc, True, unit)


def each(items: Sequence[Any], desc: str, unit: str = "run") -> Iterator[Any]:
    """The `items` one by one, with a bar on stderr that advances when the work on each is done."""
    with bar(len(items), desc, unit) as done:
        for item in items:
            yield item
            done.update()


def row(line: str) -> None:
    """A result line on stdout, written above the bar (a bare print would cut through it), flushed."""
    tqdm.write(line)
    sys.stdout.flush()
