"""Sampling trained discrete flows (`dfm_*` runs): tokens drawn with `fm_jax.discrete.sample` from
the run's posterior network, and the images they are (an image dataset's quantized pixels);
the held-out likelihood bound of a masked run; sample quality against held-out data.

`sample_tokens(run, num, sampler, steps, corrector, labels, seed)` draws `num` sequences from the
run's source (the masked or uniform one of its method), in batches of `batch_size`, one compiled
call each, and returns the tokens, the uint8 images (`fm_jax.data.images.from_tokens`) and the
NFE of one sample. `token_nll(run, num, num_times, seed)` is the continuous-time ELBO
(`fm_jax.discrete.elbo`, an upper bound on -log p in nats) of the first `num` held-out
examples, with its standard error over the examples, in bits per token (bits/dim of the
quantized images: log2(levels) is the uniform model's). `evaluate_tokens(run, samplers, num)`
compares `num` samples of each sampler ("euler:N", "euler:N:ETA" with the corrector, "unmask")
with as many held-out images, quantized as training saw them: the pixel Frechet distance
(`fm_jax.fid.pixel_frechet_distance`, pixels in [-1, 1]), the per-pixel marginal error (the
total variation between the generated and held-out histograms of each pixel's level, averaged
over pixels) and the NFE.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fm_jax import discrete
from fm_jax.progress import announce, bar
from fm_jax.train.held_out import NOISE, held_out_key
from fm_jax.train.workdir import Run

__all__ = ["SAMPLER_DEFAULTS", "evaluate_tokens", "parse_sampler", "sample_tokens", "token_nll", "token_path"]

SAMPLER_DEFAULTS = ("euler:10", "euler:100", "unmask")  # what `fm-jax eval` compares by default


def token_path(run: Run) -> discrete.MixturePath:
    """The mixture path a discrete run was trained on."""
    if run.spec.method.model != "tokens":
        raise ValueError(f"{run.spec.method.name!r} is not a discrete flow (methods dfm_mask, dfm_uniform).")
    return run.spec.method.token_path(run.spec.loss)


def sample_tokens(
    run: Run,
    num: int,
    sampler: str = "euler",
    steps: int = 100,
    corrector: float = 0.0,
    labels: np.ndarray | None = None,
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = False,
    guidance: float | None = None,
) -> dict:
    """{"tokens" (num, L), "images" uint8 (num, H, W, C), "nfe"} of a discrete run (the module
    docstring); `guidance` w: classifier-free guidance of a class-conditional run's posterior
    (`fm_jax.discrete.guided_posterior`), with `labels`."""
    path = token_path(run)
    if labels is not None and len(labels) != num:
        raise ValueError(f"labels must give one class per sample ({num}), got {len(labels)}.")
    classes = run.spec.data.num_classes
    if guidance is not None and (not classes or labels is None):
        raise ValueError(
            "Guidance needs a class-conditional run (config.conditional = true, trained with config.label_dropout "
            "> 0) and the labels to sample."
        )
    length = run.spec.data.length
    key = held_out_key(seed, NOISE)

    def draw(key, x0, cond):
        if guidance is None:
            posterior = lambda t, x: run.apply(run.params, t, x, cond)
        else:  # the network's null label is its number of classes
            network = lambda t, x, c: run.apply(run.params, t, x, c)
            posterior = discrete.guided_posterior(network, cond, classes, guidance)
        return discrete.sample(posterior, x0, path, key, steps, sampler, corrector)

    compiled = jax.jit(draw)
    size = min(batch_size, num)
    announce(
        f"sampling {num} token sequences of {run.spec.method.name} with the {sampler} sampler"
        + (f" in {steps} steps" if sampler == "euler" else "")
        + (f", corrector {corrector:g}" if corrector else "")
        + (f", guidance w = {guidance:g}" if guidance is not None else ""),
        progress,
    )
    chunks, nfe = [], 0
    with bar(-(-num // size), "sample", progress) as batches:
        for i, start in enumerate(range(0, num, size)):
            k_x0, k_draw = jax.random.split(jax.random.fold_in(key, i))
            x0 = path.draw_source(k_x0, (size, length))
            cond = None
            if labels is not None:
                cond = jnp.asarray(np.resize(labels[start : start + size], size), jnp.int32)
            out = compiled(k_draw, x0, cond)
            chunks.append(np.asarray(out.x1))
            nfe = int(out.nfe)
            batches.update()
    tokens = np.concatenate(chunks)[:num]
    images = None
    if run.spec.data.image is not None:
        from fm_jax.data.images import from_tokens

        images = from_tokens(tokens, run.spec.data.levels, run.spec.data.shape)
    return {"tokens": tokens, "images": images, "nfe": nfe}


def token_nll(
    run: Run, num: int, num_times: int = 16, seed: int = 0, batch_size: int = 500, progress: bool = False
) -> dict:
    """The held-out ELBO of a masked discrete run (the module docstring): JSON-ready."""
    import math

    from fm_jax.data import images
    from fm_jax.train.image_eval import held_out_images

    path = token_path(run)
    if path.source != "mask":
        raise ValueError(
            f"The likelihood bound here is the masked source's ELBO; {run.spec.method.name!r} starts from the "
            f"{path.source} source (train dfm_mask to score held-out data)."
        )
    real, labels = held_out_images(run, num)
    tokens = np.asarray(images.to_tokens(jax.random.key(0), jnp.asarray(real), run.spec.data.levels))
    conditional = run.spec.data.num_classes > 0

    def bound(key, x1, cond):
        posterior = lambda t, x: run.apply(run.params, t, x, cond)
        return discrete.elbo(posterior, x1, path, key, num_times)

    compiled = jax.jit(bound)
    size = min(batch_size, len(tokens))
    announce(
        f"ELBO of {len(tokens)} held-out {run.spec.data.image.name} examples ({num_times} time draws each)", progress
    )
    nats = []
    with bar(-(-len(tokens) // size), "nll", progress) as batches:
        for i, start in enumerate(range(0, len(tokens), size)):
            x1 = np.resize(tokens[start : start + size], (size, tokens.shape[1]))
            cond = jnp.asarray(np.resize(labels[start : start + size], size), jnp.int32) if conditional else None
            nats.append(np.asarray(compiled(jax.random.fold_in(held_out_key(seed, NOISE), i), x1, cond)))
            batches.update()
    nats = np.concatenate(nats)[: len(tokens)]
    bits = nats / (tokens.shape[1] * math.log(2.0))
    return {
        "method": run.spec.method.name,
        "target": run.spec.data.target,
        "step": run.step,
        "num": len(tokens),
        "num_times": num_times,
        "nats": float(nats.mean()),
        "bits_per_dim": float(bits.mean()),
        "bits_per_dim_se": float(bits.std(ddof=1) / math.sqrt(len(bits))),
        "uniform_bits_per_dim": math.log2(run.spec.data.levels),
    }


def parse_sampler(text: str) -> tuple[str, int, float]:
    """ "euler:N", "euler:N:ETA" or "unmask" -> (sampler, steps, corrector); a ValueError says the forms."""
    parts = text.split(":")
    try:
        if parts == ["unmask"]:
            return "unmask", 0, 0.0
        if parts[0] == "euler" and len(parts) in (2, 3) and int(parts[1]) >= 1:
            corrector = float(parts[2]) if len(parts) == 3 else 0.0
            if corrector >= 0:
                return "euler", int(parts[1]), corrector
    except ValueError:
        pass
    raise ValueError(
        f"A discrete flow's sampler is euler:STEPS, euler:STEPS:ETA (with the corrector) or unmask; got {text!r}."
    )


def evaluate_tokens(run: Run, samplers: list[str], num: int, seed: int = 0, progress: bool = False) -> dict:
    """Per sampler: pixel FD, per-pixel marginal error and NFE against held-out images; JSON-ready."""
    from fm_jax import fid
    from fm_jax.data import images
    from fm_jax.train.image_eval import held_out_images

    parsed = {text: parse_sampler(text) for text in samplers}
    real, labels = held_out_images(run, num)
    levels, shape = run.spec.data.levels, run.spec.data.shape
    real_tokens = np.asarray(images.to_tokens(jax.random.key(0), jnp.asarray(real), levels))
    to_float = lambda tokens: images.from_tokens(tokens, levels, shape).astype(np.float32) / 127.5 - 1.0
    histogram = lambda tokens: np.stack([np.bincount(col, minlength=levels) for col in tokens.T]) / len(tokens)
    real_hist = histogram(real_tokens)
    rows = {}
    for text, (sampler, steps, corrector) in parsed.items():
        cond = labels.astype(np.int32) if run.spec.data.num_classes else None
        out = sample_tokens(run, len(real), sampler, steps, corrector, cond, seed, progress=progress)
        rows[text] = {
            "fd_pixel": float(fid.pixel_frechet_distance(to_float(out["tokens"]), to_float(real_tokens))),
            "marginal_tv": float(np.mean(0.5 * np.abs(histogram(out["tokens"]) - real_hist).sum(axis=1))),
            "nfe": out["nfe"],
        }
    return {
        "method": run.spec.method.name,
        "target": run.spec.data.target,
        "step": run.step,
        "num": len(real),
        "solvers": rows,
    }
