"""Figures of 2D flows: samples beside the target, and trajectories from source to samples."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_flow"]


def plot_flow(path: str | pathlib.Path, samples, target, trajectory=None, title: str = "") -> None:
    """Write a PNG: samples over target points (left) and, when given, trajectories (right).

    `trajectory` has shape (K, n, 2), from the source (index 0) to the samples (index K - 1).
    """
    samples, target = np.asarray(samples), np.asarray(target)
    panels = 2 if trajectory is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 5), squeeze=False)
    ax = axes[0, 0]
    ax.scatter(target[:, 0], target[:, 1], s=2, alpha=0.3, c="tab:gray", label="target")
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5, c="tab:blue", label="samples")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title or "samples")
    if trajectory is not None:
        traj = np.asarray(trajectory)[:, :1000]
        ax = axes[0, 1]
        ax.plot(traj[:, :, 0], traj[:, :, 1], lw=0.3, alpha=0.3, c="olive")
        ax.scatter(traj[0, :, 0], traj[0, :, 1], s=2, c="black", label="x0")
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=2, c="tab:blue", label="x1")
        ax.legend(loc="upper right", markerscale=4)
        ax.set_title("trajectories")
    for ax in axes.ravel():
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
