"""Evaluating a trained image run against its held-out split: samples, distances, likelihood.

- `sample_images`: images from N(0, I) through the flow, in fixed-size batches (one compile),
  with the NFE, path energy and curvature of each solve; class-conditional runs take labels
  and a classifier-free guidance scale.
- `evaluate_images`: per solver, the Inception FID against the training split's cached
  statistics (`fm_jax.train.inception_fid`, when given one), the Fréchet distance in pixel
  space (`fid.pixel_frechet_distance`) and the exact W2 between generated and held-out images (pixels in [-1, 1]), NFE, normalized
  path energy |PE - W2²(N(0, I), data)| / W2²(N(0, I), data) (Tong et al. 2024) and curvature
  (Lee et al. 2023). Conditional runs generate with the held-out images' labels.
- `image_nll`: dequantized bits/dim of the held-out images (`likelihood.dequantized_bits_per_dim`,
  uniform noise on each of the 256 levels, data in [-1, 1]): log p(x | label) for conditional runs.

A normalizing-flow run samples in one shot (its NFE is its sequential network passes; path
energy and curvature are undefined, NaN) and its bits/dim use its exact log-likelihood.

Held-out images are the first `num` of the run's evaluation split; the noise comes from the
held-out streams of `fm_jax.train.held_out`.

With `progress=True` each function writes a line on stderr saying what it computes and
advances a bar over its batches of images (and, in `evaluate_images`, over the distance stages).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fm_jax import fid, likelihood, metrics, solvers
from fm_jax.primitives import padded_chunks
from fm_jax.progress import announce, bar
from fm_jax.solvers import SolverSpec
from fm_jax.train.held_out import NOISE, held_out_key
from fm_jax.train.inception_fid import InceptionFID
from fm_jax.train.state import model_method
from fm_jax.train.workdir import Run

__all__ = ["evaluate_images", "held_out_images", "image_nll", "sample_images"]


def held_out_images(run: Run, num: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `num` images (uint8) and labels of the run's evaluation split."""
    from fm_jax.data import images

    d = run.spec.data.image
    x, labels = images.load_split(d.name, d.dir, d.eval_split)
    if num < 2:
        raise ValueError(f"Evaluation needs at least 2 images, got num={num}.")
    return x[:num], labels[:num]


def _null_label(run: Run) -> int | None:
    """The null label of a class-conditional run (its number of classes), None for an unconditional one."""
    return run.spec.data.num_classes or None


def _check_guidance(run: Run, guidance: float | None) -> None:
    if guidance is not None and _null_label(run) is None:
        raise ValueError(
            f"A guidance scale needs a class-conditional model; this run ({run.spec.data.target}) was trained "
            "without labels (config.conditional = false)."
        )


def sample_images(
    run: Run,
    num: int,
    solver: SolverSpec = SolverSpec(),
    labels: np.ndarray | None = None,
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 500,
    diffusion: float | None = None,
    progress: bool = False,
) -> dict:
    """{"x0", "x1" (float, [-1, 1]-ish), "nfe" (mean), "path_energy", "curvature"} of `num` samples.

    `labels` (int, (num,)) for a class-conditional run (default: classes in turn); `guidance`
    the classifier-free guidance scale w (None: the conditional field, w = 1). `diffusion=C`
    samples the SDE with g(t) = C s(t) instead (`solvers.sample_sde`, the score from the
    velocity of the run's path; `solver` then an SDE solver with fixed steps, e.g.
    `SolverSpec("euler", 100, sde=True)`); its path energy and curvature are not defined (NaN).
    `progress`: a line and a bar over the batches of `batch_size` images on stderr.
    """
    how = _how(run, solver, guidance, diffusion)
    announce(f"sampling {num} images of {_what(run)} with {how}, in batches of {min(batch_size, num)}", progress)
    with bar(-(-num // min(batch_size, num)), f"sampling images {how}", progress) as batches:
        return _sample_images(run, num, solver, labels, guidance, seed, batch_size, diffusion, batches)


def _what(run: Run) -> str:
    return f"{run.spec.method.name} -> {run.spec.data.target}"


def _how(run: Run, solver: SolverSpec, guidance: float | None, diffusion: float | None) -> str:
    """How images are sampled, for progress lines: 'euler:100', 'the flow', 'SDE euler:100, C = 1, guidance 2'."""
    if run.spec.method.model == "flow":
        return "the flow (one shot)"
    how = str(solver) if diffusion is None else f"SDE {solver}, C = {diffusion:g}"
    return how if guidance is None else f"{how}, guidance {guidance:g}"


def _sample_images(
    run: Run,
    num: int,
    solver: SolverSpec,
    labels: np.ndarray | None,
    guidance: float | None,
    seed: int,
    batch_size: int,
    diffusion: float | None,
    batches,
) -> dict:
    """`sample_images`, advancing the tqdm bar `batches` once per batch."""
    _check_guidance(run, guidance)
    null = _null_label(run)
    if labels is not None and null is None:
        raise ValueError("Labels were given, but the run is unconditional (config.conditional = false).")
    if null is not None:
        labels = np.arange(num) % null if labels is None else np.asarray(labels, np.int32)
        if labels.shape != (num,) or labels.min() < 0 or labels.max() >= null:
            raise ValueError(f"labels must be {num} integers in [0, {null - 1}], got shape {labels.shape}.")
    size = min(batch_size, num)
    if run.spec.method.model == "flow":
        return _sample_flow(run, num, size, seed, batches)
    if diffusion is not None:
        path = run.spec.method.conditional_path(run.spec.loss.sigma)

    @jax.jit
    def solve(x0, cond, key):
        vf = solvers.velocity_field(
            run.apply, run.params, cond=cond, guidance=guidance, null_label=null if guidance is not None else None
        )
        if diffusion is None:
            return metrics.trajectory_metrics(vf, x0, solver)
        sol = solvers.sample_sde(key, vf, x0, path, lambda t: diffusion * path.noise_scale(t)[0], solver=solver)
        nan = jnp.full((), jnp.nan)
        return metrics.TrajectoryMetrics(x1=sol.x, path_energy=nan, curvature=nan, nfe=sol.nfe)

    key = held_out_key(seed, NOISE)
    x0 = np.asarray(jax.random.normal(key, (num, *run.spec.data.shape)))
    out, nfe, energy, curvature = [], [], [], []
    for start, n, (x, cond) in padded_chunks(size, x0, labels):
        m = solve(x, cond, jax.random.fold_in(key, start))
        out.append(np.asarray(m.x1)[:n])
        nfe.append(int(m.nfe))
        energy.append(float(m.path_energy) * n)
        curvature.append(float(m.curvature) * n)
        batches.update()
    return {
        "x0": x0,
        "x1": np.concatenate(out),
        "nfe": float(np.mean(nfe)),
        "path_energy": sum(energy) / num,
        "curvature": sum(curvature) / num,
        "labels": labels,
    }


def _sample_flow(run: Run, num: int, size: int, seed: int, batches) -> dict:
    """`sample_images` of a normalizing-flow run: x1 = f^{-1}(sigma_f eps) in chunks of `size`."""
    sample = jax.jit(model_method(run.spec.model, "sample"), static_argnums=2)
    key = held_out_key(seed, NOISE)
    chunks = []
    for i in range(-(-num // size)):
        chunks.append(np.asarray(sample(run.params, jax.random.fold_in(key, i), size)))
        batches.update()
    x1 = np.concatenate(chunks)[:num]
    return {
        "x0": None,
        "x1": x1,
        "nfe": float(run.spec.model.flow_passes()),
        "path_energy": float("nan"),
        "curvature": float("nan"),
        "labels": None,
    }


def _header(run: Run, num: int) -> dict:
    return {
        "step": run.step,
        "method": run.spec.method.name,
        "target": run.spec.data.target,
        "split": run.spec.data.image.eval_split,
        "num": num,
    }


def evaluate_images(
    run: Run,
    specs: list[SolverSpec],
    num: int,
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = False,
    inception: InceptionFID | None = None,
) -> dict:
    """Per solver: pixel Fréchet distance, W2, NFE, normalized path energy and curvature, and
    with `inception` the Inception FID against the training split (`fid`); JSON-ready, keyed
    by `str(spec)`.

    `progress`: a line, and a bar over the reference W2 (and FID statistics), each solver's
    batches of images, its Fréchet distance(s) and its W2, on stderr.
    """
    _check_guidance(run, guidance)
    real, labels = held_out_images(run, num)
    num = len(real)
    from fm_jax.data import images

    names = ", ".join(map(str, specs))
    announce(
        f"evaluating {len(specs)} solver(s) ({names}) of {_what(run)} on {num} held-out images: "
        + ("Inception FID (against the training split), " if inception else "")
        + "pixel Fréchet distance, W2 (exact OT), path energy, curvature, NFE",
        progress,
    )
    size = min(batch_size, num)
    total = 1 + len(specs) * (2 + (-(-num // size))) + (1 + len(specs) if inception else 0)
    reference = None
    with bar(total, "eval: reference W2(noise, data)", progress, unit="step") as stages:
        if inception is not None:
            stages.set_description("eval: FID reference statistics")
            d = run.spec.data.image
            train_images = images.load_split(d.name, d.dir, d.split)[0]
            reference = inception.reference(d.name, d.split, train_images, progress=progress)
            stages.update()
        # The held-out images as training saw their kind: in [-1, 1], dequantized if training was.
        real = np.asarray(
            images.preprocess(
                held_out_key(seed + 2, NOISE), jnp.asarray(real), dequantize=run.spec.data.image.dequantize
            )
        )
        noise = np.asarray(jax.random.normal(held_out_key(seed + 1, NOISE), real.shape))
        w2_sq = metrics.w2(noise, real) ** 2
        stages.update()
        rows = {}
        for spec in specs:
            stages.set_description(f"eval {_how(run, spec, guidance, None)}: sampling")
            cond = labels if _null_label(run) else None
            out = _sample_images(run, num, spec, cond, guidance, seed, batch_size, None, stages)
            x = np.clip(out["x1"], -1.0, 1.0)
            stages.set_description(f"eval {spec}: Fréchet distance")
            fd = float(fid.pixel_frechet_distance(x, real))
            stages.update()
            row = {}
            if inception is not None:
                stages.set_description(f"eval {spec}: Inception FID")
                row["fid"] = inception(x, reference)
                stages.update()
            stages.set_description(f"eval {spec}: W2 (exact OT)")
            rows[str(spec)] = row | {
                "fd_pixel": fd,
                "w2": metrics.w2(x, real),
                "nfe": out["nfe"],
                "normalized_path_energy": float(metrics.normalized_path_energy(out["path_energy"], w2_sq)),
                "curvature": out["curvature"],
            }
            stages.update()
        stages.set_description("eval: done")
    return _header(run, num) | {"guidance": guidance, "w2_sq_noise_data": w2_sq, "solvers": rows}


def image_nll(
    run: Run,
    num: int = 1000,
    divergence: str = "hutchinson",
    solver: SolverSpec = SolverSpec(),
    num_probes: int = 1,
    probe: str = "rademacher",
    seed: int = 0,
    batch_size: int = 250,
    progress: bool = False,
) -> dict:
    """Mean dequantized bits/dim of `num` held-out images with its standard error.

    `progress`: a line and a bar over the batches of `batch_size` images on stderr.
    """
    x, labels = held_out_images(run, num)
    num, d = len(x), math.prod(x.shape[1:])
    null = _null_label(run)
    base = held_out_key(seed, NOISE)
    flow = run.spec.method.model == "flow"

    @jax.jit
    def bits(x, cond, index):
        k_deq, k_probe = jax.random.split(jax.random.fold_in(base, index))
        vf = solvers.velocity_field(run.apply, run.params, cond=cond)

        def log_prob(z):
            if flow:  # exact
                return run.apply(run.params, z)
            return likelihood.log_likelihood(
                vf, z, divergence=divergence, key=k_probe, num_probes=num_probes, probe=probe, solver=solver
            ).log_prob

        return likelihood.dequantized_bits_per_dim(k_deq, log_prob, x)

    size = min(batch_size, num)
    how = "the flow's exact log-density" if flow else f"{divergence} divergence, {solver}"
    announce(f"dequantized bits/dim of {num} held-out images under {_what(run)} ({how})", progress)
    parts = []
    with bar(-(-num // size), "NLL flow" if flow else f"NLL {divergence} divergence", progress) as batches:
        for start, n, (chunk, cond) in padded_chunks(size, x, labels if null else None):
            parts.append(np.asarray(bits(chunk, cond, start // size))[:n])
            batches.update()
    values = np.concatenate(parts)
    if not np.all(np.isfinite(values)):
        raise FloatingPointError(f"{int(np.sum(~np.isfinite(values)))} of {num} likelihoods are not finite.")
    return _header(run, num) | {
        "dim": d,
        "conditional": null is not None,
        "divergence": divergence,
        "num_probes": num_probes if divergence == "hutchinson" else None,
        "solver": str(solver),
        "rtol": solver.rtol,
        "atol": solver.atol,
        "bits_per_dim": float(values.mean()),
        "bits_per_dim_se": float(values.std(ddof=1) / math.sqrt(num)),
    }
