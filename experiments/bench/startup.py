"""Start-up cost: how long `import fm_jax`, a first submodule and `fm-jax --help` take in a fresh process.

    python experiments/bench/startup.py [--repeats 5] [--out results/startup.json]

Each case runs `--repeats` times in a new Python process (the first run also warms the file
cache and is dropped) and reports the median wall seconds, with the heavy packages the case
imported (JAX, Flax, orbax, TFDS, grain, matplotlib, ott, POT). `import fm_jax` loads its
submodules on first use (`fm_jax.lazy`), and the CLI imports what a command needs when it
runs, so `fm-jax --help` never loads JAX.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root, for `experiments`
from experiments import common

HEAVY = ("jax", "flax", "orbax", "tensorflow_datasets", "grain", "matplotlib", "ott", "ot", "diffrax")
REPORT = "import sys, json; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))"
CASES = {
    "import fm_jax": "import fm_jax",
    "fm_jax.paths": "import fm_jax; fm_jax.paths",
    "fm_jax.solvers": "import fm_jax; fm_jax.solvers",
    "fm-jax --help": "import sys; sys.argv = ['fm-jax', '--help']\nfrom fm_jax import cli\ntry: cli.main()\nexcept SystemExit: pass",
}


def measure(code: str, repeats: int) -> dict:
    """Median wall seconds of `python -c code` over `repeats` fresh processes, and what it imported."""
    script = f"{code}\n{REPORT.format(heavy=HEAVY)}"
    times, imported = [], []
    for i in range(repeats + 1):
        began = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        if i:  # the first run warms the file cache
            times.append(time.perf_counter() - began)
        imported = json.loads(out.strip().splitlines()[-1])
    return {"seconds": statistics.median(times), "imports": imported}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="results/startup.json")
    args = parser.parse_args(argv)
    print(f"start-up: {len(CASES)} cases, {args.repeats} fresh processes each", file=sys.stderr)
    rows = {name: measure(code, args.repeats) for name, code in CASES.items()}
    lines = ["| case | median s | heavy packages imported |", "| --- | ---: | --- |"]
    lines += [
        f"| `{name}` | {row['seconds']:.2f} | {', '.join(row['imports']) or 'none'} |" for name, row in rows.items()
    ]
    result = {"machine": common.machine_info(python=sys.version.split()[0]), "repeats": args.repeats, "cases": rows}
    common.write_result(result, args.out, "\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
