"""Evaluating a trained image run against its held-out split: samples, distances, likelihood.

- `sample_images`: images from N(0, I) through the flow, in fixed-size batches (one compile),
  with the NFE, path energy and curvature of each solve; class-conditional runs take labels
  and a classifier-free guidance scale.
- `evaluate_images`: per solver, the Fréchet distance in pixel space (`fid.pixel_frechet_distance`)
  and the exact W2 between generated and held-out images (pixels in [-1, 1]), NFE, normalized
  path energy |PE - W2²(N(0, I), data)| / W2²(N(0, I), data) (Tong et al. 2024) and curvature
  (Lee et al. 2023). Conditional runs generate with the held-out images' labels.
- `image_nll`: dequantized bits/dim of the held-out images (`likelihood.dequantized_bits_per_dim`,
  uniform noise on each of the 256 levels, data in [-1, 1]): log p(x | label) for conditional runs.

A normalizing-flow run ("flow") samples in one shot (its NFE is its sequential network passes;
path energy and curvature are undefined, NaN) and its bits/dim use its exact log-likelihood.

Held-out images are the first `num` of `config.data.eval_split`; the noise comes from keys
that training never uses.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fm_jax import data, fid, likelihood, metrics, solvers
from fm_jax.train.evaluate import parse_solver, solve_kwargs
from fm_jax.train.workdir import Run

__all__ = ["evaluate_images", "held_out_images", "image_nll", "sample_images"]

HELD_OUT = 0x1A6E  # folded into the seed's key: a stream no training run draws from


def held_out_images(run: Run, num: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `num` images (uint8) and labels of the run's evaluation split."""
    from fm_jax.data import images

    config = run.config
    x, labels = images.load_split(data.image_name(config.target), config.data.dir or None, config.data.eval_split)
    if num < 2:
        raise ValueError(f"Evaluation needs at least 2 images, got num={num}.")
    return x[:num], labels[:num]


def _conditional(run: Run) -> int | None:
    """The null label of a class-conditional run (its number of classes), None for an unconditional one."""
    from fm_jax.train.state import num_classes

    return num_classes(run.config) or None


def _check_guidance(run: Run, guidance: float | None) -> None:
    if guidance is not None and _conditional(run) is None:
        raise ValueError(
            f"A guidance scale needs a class-conditional model; this run ({run.config.target}) was trained "
            "without labels (config.conditional = false)."
        )


def _chunks(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(batch_size, n - start)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    """x with copies of its last row appended up to `size` rows: one compile serves every chunk."""
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)]) if len(x) < size else x


def sample_images(
    run: Run,
    num: int,
    solver: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    labels: np.ndarray | None = None,
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 500,
    diffusion: float | None = None,
) -> dict:
    """{"x0", "x1" (float, [-1, 1]-ish), "nfe" (mean), "path_energy", "curvature"} of `num` samples.

    `labels` (int, (num,)) for a class-conditional run (default: classes in turn); `guidance`
    the classifier-free guidance scale w (None: the conditional field, w = 1). `diffusion=C`
    samples the SDE with g(t) = C s(t) instead (`solvers.sample_sde`, the score from the
    velocity of the run's path; `solver` then an SDE solver with fixed steps, "euler:100"); its
    path energy and curvature are not defined (NaN).
    """
    from fm_jax.train.state import image_info

    _check_guidance(run, guidance)
    null = _conditional(run)
    if labels is not None and null is None:
        raise ValueError("Labels were given, but the run is unconditional (config.conditional = false).")
    if null is not None:
        labels = np.arange(num) % null if labels is None else np.asarray(labels, np.int32)
        if labels.shape != (num,) or labels.min() < 0 or labels.max() >= null:
            raise ValueError(f"labels must be {num} integers in [0, {null - 1}], got shape {labels.shape}.")
    if diffusion is None:
        name, steps = parse_solver(solver)
    else:  # an SDE solver (`solvers.SDE_SOLVERS`): checked by `sample_sde`
        name, _, count = solver.partition(":")
        steps = int(count) if count.isdigit() else None
    kwargs = solve_kwargs(name, steps, rtol, atol)
    shape = image_info(run.config).shape
    size = min(batch_size, num)
    if run.config.method == "flow":
        return _sample_flow(run, num, size, seed)

    if diffusion is not None and steps is None:
        raise ValueError("SDE sampling runs in fixed steps: give the solver as NAME:STEPS, e.g. euler:100.")

    @jax.jit
    def solve(x0, cond, key):
        vf = solvers.velocity_field(run.apply, run.params, cond=cond, guidance=guidance,
                                    null_label=null if guidance is not None else None)
        if diffusion is None:
            return metrics.trajectory_metrics(vf, x0, **kwargs)
        from fm_jax.train.methods import build_loss

        path = build_loss(run.config.method, run.config.sigma, run.config.source).path
        sol = solvers.sample_sde(vf, x0, key, path, lambda t: diffusion * path.noise_scale(t)[0], solver=name,
                                 steps=steps)
        nan = jnp.full((), jnp.nan)
        return metrics.TrajectoryMetrics(x1=sol.x, path_energy=nan, curvature=nan, nfe=sol.nfe)

    key = jax.random.fold_in(jax.random.key(seed), HELD_OUT)
    x0 = np.asarray(jax.random.normal(key, (num, *shape)))
    out, nfe, energy, curvature = [], [], [], []
    for start, n in _chunks(num, size):
        cond = None if labels is None else jnp.asarray(_pad(labels[start:start + n], size))
        m = solve(jnp.asarray(_pad(x0[start:start + n], size)), cond, jax.random.fold_in(key, start))
        out.append(np.asarray(m.x1)[:n])
        nfe.append(int(m.nfe))
        energy.append(float(m.path_energy) * n)
        curvature.append(float(m.curvature) * n)
    return {"x0": x0, "x1": np.concatenate(out), "nfe": float(np.mean(nfe)),
            "path_energy": sum(energy) / num, "curvature": sum(curvature) / num, "labels": labels}


def _sample_flow(run: Run, num: int, size: int, seed: int) -> dict:
    """`sample_images` of a normalizing-flow run: x1 = f^{-1}(sigma_f eps) in chunks of `size`."""
    from fm_jax.train.evaluate import flow_passes
    from fm_jax.train.state import model_method

    sample = jax.jit(model_method(run.config, "sample"), static_argnums=2)
    key = jax.random.fold_in(jax.random.key(seed), HELD_OUT)
    x1 = np.concatenate([np.asarray(sample(run.params, jax.random.fold_in(key, i), size))
                         for i, _ in enumerate(_chunks(num, size))])[:num]
    return {"x0": None, "x1": x1, "nfe": float(flow_passes(run.config)), "path_energy": float("nan"),
            "curvature": float("nan"), "labels": None}


def evaluate_images(
    run: Run,
    specs: list[str],
    num: int,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 500,
) -> dict:
    """Per solver spec: pixel Fréchet distance, W2, NFE, normalized path energy and curvature; JSON-ready."""
    for spec in specs:
        parse_solver(spec)
    _check_guidance(run, guidance)
    real, labels = held_out_images(run, num)
    num = len(real)
    from fm_jax.data import images

    # The held-out images as training saw their kind: in [-1, 1], dequantized if training was.
    key = jax.random.fold_in(jax.random.key(seed + 2), HELD_OUT)
    real = np.asarray(images.preprocess(key, jnp.asarray(real), dequantize=run.config.data.dequantize))
    noise = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(seed + 1), HELD_OUT), real.shape))
    w2_sq = metrics.w2(noise, real) ** 2
    rows = {}
    for spec in specs:
        out = sample_images(run, num, spec, rtol, atol, labels if _conditional(run) else None, guidance, seed,
                            batch_size)
        x = np.clip(out["x1"], -1.0, 1.0)
        rows[spec] = {
            "fd_pixel": float(fid.pixel_frechet_distance(x, real)),
            "w2": metrics.w2(x, real),
            "nfe": out["nfe"],
            "normalized_path_energy": float(metrics.normalized_path_energy(out["path_energy"], w2_sq)),
            "curvature": out["curvature"],
        }
    config = run.config
    return {"step": run.step, "method": config.method, "target": config.target, "split": config.data.eval_split,
            "num": num, "guidance": guidance, "w2_sq_noise_data": w2_sq, "solvers": rows}


def image_nll(
    run: Run,
    num: int = 1000,
    divergence: str = "hutchinson",
    solver: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_probes: int = 1,
    probe: str = "rademacher",
    seed: int = 0,
    batch_size: int = 250,
) -> dict:
    """Mean dequantized bits/dim of `num` held-out images with its standard error."""
    x, labels = held_out_images(run, num)
    num, d = len(x), math.prod(x.shape[1:])
    null = _conditional(run)
    name, steps = parse_solver(solver)
    kwargs = solve_kwargs(name, steps, rtol, atol)
    base = jax.random.fold_in(jax.random.key(seed), HELD_OUT)

    @jax.jit
    def bits(x, cond, index):
        k_deq, k_probe = jax.random.split(jax.random.fold_in(base, index))
        vf = solvers.velocity_field(run.apply, run.params, cond=cond)

        def log_prob(z):
            if run.config.method == "flow":  # exact
                return run.apply(run.params, z)
            return likelihood.log_likelihood(vf, z, divergence=divergence, key=k_probe, num_probes=num_probes,
                                             probe=probe, **kwargs).log_prob

        return likelihood.dequantized_bits_per_dim(log_prob, x, k_deq)

    size = min(batch_size, num)
    values = []
    for i, (start, n) in enumerate(_chunks(num, size)):
        cond = None if null is None else jnp.asarray(_pad(labels[start:start + n], size))
        values.append(np.asarray(bits(jnp.asarray(_pad(x[start:start + n], size)), cond, i))[:n])
    values = np.concatenate(values)
    if not np.all(np.isfinite(values)):
        raise FloatingPointError(f"{int(np.sum(~np.isfinite(values)))} of {num} likelihoods are not finite.")
    config = run.config
    return {
        "step": run.step, "method": config.method, "target": config.target, "split": config.data.eval_split,
        "num": num, "dim": d, "conditional": null is not None, "divergence": divergence,
        "num_probes": num_probes if divergence == "hutchinson" else None, "solver": solver, "rtol": rtol, "atol": atol,
        "bits_per_dim": float(values.mean()), "bits_per_dim_se": float(values.std(ddof=1) / math.sqrt(num)),
    }
