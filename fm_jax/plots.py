"""Pictures as PNG files: figures of low-dimensional flows and grids of images.

`plot_flow` draws samples beside the target and their trajectories, `plot_density` a model
density's heat map beside the true one (matplotlib, headless). `image_grid` tiles uint8 images
into one array and `save_grid` writes it as a PNG (pillow); image samples in [-1, 1] become
uint8 levels with `fm_jax.data.images.to_unit` first.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["image_grid", "plot_density", "plot_flow", "save_grid"]


def plot_flow(path: str | pathlib.Path, samples, target, trajectory=None, title: str = "") -> None:
    """Write a PNG: samples over target points (left) and, when given, trajectories (right).

    `trajectory` has shape (K, n, d), from the source (index 0) to the samples (index K - 1).
    Points of dimension d > 2 are drawn by their first two coordinates; in one dimension the
    left panel shows histograms and the right one x against the solver's step index.
    """
    samples, target = np.asarray(samples), np.asarray(target)
    one_d = samples.shape[1] == 1
    panels = 2 if trajectory is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 5), squeeze=False)
    ax = axes[0, 0]
    if one_d:
        bins = np.histogram_bin_edges(np.concatenate([samples[:, 0], target[:, 0]]), bins=60)
        ax.hist(target[:, 0], bins=bins, density=True, alpha=0.4, color="tab:gray", label="target")
        ax.hist(samples[:, 0], bins=bins, density=True, histtype="step", color="tab:blue", label="samples")
        ax.legend(loc="upper right")
    else:
        ax.scatter(target[:, 0], target[:, 1], s=2, alpha=0.3, c="tab:gray", label="target")
        ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5, c="tab:blue", label="samples")
        ax.legend(loc="upper right", markerscale=4)
        ax.set_aspect("equal")
    ax.set_title(title or "samples")
    if trajectory is not None:
        traj = np.asarray(trajectory)[:, :1000]
        ax = axes[0, 1]
        if one_d:
            ax.plot(np.arange(len(traj)), traj[:, :, 0], lw=0.3, alpha=0.3, c="olive")
            ax.set_xlabel("saved step (source left, samples right)")
        else:
            ax.plot(traj[:, :, 0], traj[:, :, 1], lw=0.3, alpha=0.3, c="olive")
            ax.scatter(traj[0, :, 0], traj[0, :, 1], s=2, c="black", label="x0")
            ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=2, c="tab:blue", label="x1")
            ax.legend(loc="upper right", markerscale=4)
            ax.set_aspect("equal")
        ax.set_title("trajectories")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_density(path: str | pathlib.Path, xs, ys, model_log_prob, true_log_prob=None, title: str = "") -> None:
    """Write a PNG of the model density exp(log p) on a grid (left) beside the true density (right).

    Both panels share one colour scale, the 99.5th percentile of both densities pooled, so
    that a density too peaked or too flat shows as such.
    """
    model = np.exp(np.asarray(model_log_prob))
    panels = [("model density", model)]
    if true_log_prob is not None:
        panels.append(("true density", np.exp(np.asarray(true_log_prob))))
    vmax = float(np.percentile(np.concatenate([p.ravel() for _, p in panels]), 99.5))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    for ax, (name, dens) in zip(axes[0], panels):
        ax.imshow(dens, origin="lower", extent=(xs[0], xs[-1], ys[0], ys[-1]), vmin=0.0, vmax=vmax, cmap="viridis")
        ax.set_title(f"{title} {name}".strip() if name == "model density" else name)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def image_grid(images: np.ndarray, nrow: int) -> np.ndarray:
    """uint8 images (N, H, W, C) tiled `nrow` to a row (fewer when N < nrow), with white 1-px gaps
    between cells: one (rows (H + 1) - 1, cols (W + 1) - 1, C) uint8 image; empty cells white."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(
            "image_grid takes a non-empty uint8 array (N, H, W, C) (map floats in [-1, 1] with "
            f"fm_jax.data.images.to_unit); got {images.dtype} {images.shape}."
        )
    if not isinstance(nrow, (int, np.integer)) or nrow < 1:
        raise ValueError(f"nrow must be a positive integer; got {nrow!r}.")
    n, h, w, c = images.shape
    cols = min(int(nrow), n)
    rows = -(-n // cols)
    grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = image
    return grid


def save_grid(path: str | pathlib.Path, pixels: np.ndarray, nrow: int) -> None:
    """Write uint8 images (N, H, W, C) as one PNG grid (`image_grid`), enlarged to ~256 px a cell
    side for small images (8x8 digits)."""
    from PIL import Image

    pixels = np.asarray(pixels)
    grid = image_grid(pixels, nrow)
    scale = max(1, 256 // max(pixels.shape[1:3]))
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
