"""Pictures as PNG files: figures of low-dimensional flows and grids of images.

`plot_flow` draws a model's samples over the target (left) and, when given, their trajectories
from the source (right); `plot_density` a model density's heat map beside the true one, on one
colour scale with one colorbar. Both draw with matplotlib's object API (no pyplot: nothing global
changes, whatever backend a notebook uses); `flow_figure` and `density_figure` return the same
figures unsaved. Points of dimension d > 2 are drawn in the plane of the target's first two
principal components (`pca_projection`), and the figure says so. Titles are drawn short
(`short_title`): file paths become their names, long titles are wrapped and cut.

`image_grid` tiles uint8 images into one array and `save_grid` writes it as a PNG (pillow),
enlarged, with optional labels above the columns (e.g. one class a column), beside the rows and a
caption (e.g. the guidance scale) in white margins; image samples in [-1, 1] become uint8 levels
with `fm_jax.data.images.to_unit` first.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

__all__ = [
    "Projection",
    "density_figure",
    "flow_figure",
    "image_grid",
    "labelled_grid",
    "pca_projection",
    "plot_density",
    "plot_flow",
    "save_grid",
    "short_title",
]

DPI = 100
PANEL_INCHES = 5.0
LEGEND_INCHES, NOTE_INCHES = 0.35, 0.2  # the bottom band of a flow figure: legend row, note lines
TARGET_COLOR, SAMPLE_COLOR, SOURCE_COLOR, PATH_COLOR = "0.45", "tab:blue", "black", "tab:orange"
# Mass fractions of the target's highest-density regions drawn as filled contours.
TARGET_MASS = (0.9, 0.7, 0.5, 0.3)
TARGET_FILLS = ("0.91", "0.84", "0.77", "0.70")  # light to dark, outer region first
BANDWIDTH = 0.5  # the kernel's width in units of Scott's rule (std n^(-1/6)): narrower keeps thin or sharp shapes

# A path: at the start of a token (or after "file:" / "=" / "("), "/", "~/", "./" or "../" and
# what follows up to a space, comma, semicolon or bracket; or a relative name of a point file.
_PATH = re.compile(r"(?<![^\s(=:])(?:~|\.{1,2})?/[^\s,;()]+|(?<![^\s(=:])[^\s,;()/:]+(?:/[^\s,;()]+)+\.np[yz]\b")


def short_title(title: str, width: int = 60, max_lines: int = 2) -> str:
    """`title` as the figures draw it: every file path reduced to its name (a figure should not
    show where a run lived), wrapped at `width` characters, at most `max_lines` lines (a cut ends
    in an ellipsis)."""
    text = _PATH.sub(lambda m: pathlib.PurePath(m.group(0)).name or m.group(0), " ".join(str(title).split()))
    lines = textwrap.wrap(text, width)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1].rstrip() + "…"
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Projection:
    """The affine map x -> (x - mean) @ components.T of points (..., d) onto k orthonormal
    directions; `explained` is the fraction of the fitted points' variance along each."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), orthonormal rows
    explained: np.ndarray  # (k,)

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"The projection maps points of dimension {self.mean.shape[0]}; got shape {x.shape}.")
        return (x - self.mean) @ self.components.T

    def axis_labels(self) -> list[str]:
        return [f"PC {i + 1} ({100 * e:.0f} % of variance)" for i, e in enumerate(self.explained)]


def pca_projection(points, k: int = 2) -> Projection:
    """The first `k` principal components of `points` (N, d): the top right-singular vectors of
    the centred points (numpy SVD), each signed so that its largest-magnitude loading is positive
    (the same picture for the same data)."""
    x = np.asarray(points, np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < k:
        raise ValueError(f"pca_projection needs points (N >= 2, d >= {k}); got shape {x.shape}.")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = vt[:k] * np.sign(vt[:k][np.arange(k), np.abs(vt[:k]).argmax(axis=1)])[:, None]
    var = s**2
    explained = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    return Projection(mean, components, explained)


def _points(name: str, x, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be points of shape (n, d) with n >= 1; got shape {x.shape}.")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]}, the samples {dim}: draw points of one space.")
    return x


def _limits(*clouds: np.ndarray, square: bool = False) -> np.ndarray:
    """(d, 2) axis limits: the 0.5-99.5 percentiles of the clouds pooled, padded by 8 % (a few
    far-off points do not shrink the picture); `square` widens the shorter side to the longer."""
    pooled = np.concatenate([c.reshape(-1, c.shape[-1]) for c in clouds])
    pooled = pooled[np.isfinite(pooled).all(axis=1)]
    if not len(pooled):
        return np.tile([-1.0, 1.0], (clouds[0].shape[-1], 1))
    lo, hi = np.percentile(pooled, 0.5, axis=0), np.percentile(pooled, 99.5, axis=0)
    if square:
        mid, half = (lo + hi) / 2, np.full_like(lo, (hi - lo).max() / 2)
        lo, hi = mid - half, mid + half
    pad = np.maximum(0.08 * (hi - lo), 1e-3)
    return np.stack([lo - pad, hi + pad], axis=1)


@dataclasses.dataclass(frozen=True)
class _Regions:
    """A kernel density estimate of the target on a grid, and the density levels that enclose
    its 90/70/50/30 % highest-density regions (None: too few points to estimate)."""

    gx: np.ndarray
    gy: np.ndarray
    density: np.ndarray | None
    levels: np.ndarray | None
    points: np.ndarray

    @classmethod
    def of(cls, target: np.ndarray, limits: np.ndarray, size: int = 120) -> _Regions:
        """The estimate with a Gaussian kernel of standard deviation BANDWIDTH h per axis, h Scott's
        rule (std n^(-1/6)): narrower than Scott's, so thin (moons) or sharp (checkerboard) shapes stay. Computed
        on a size x size histogram smoothed along each axis (numpy only; O(n + size^3))."""
        pts = target[np.isfinite(target).all(axis=1)]
        gx, gy = np.linspace(*limits[0], size), np.linspace(*limits[1], size)
        if len(pts) < 2:
            return cls(gx, gy, None, None, pts)
        centers = (gx, gy)
        edges = [np.linspace(c[0] - (c[1] - c[0]) / 2, c[-1] + (c[1] - c[0]) / 2, size + 1) for c in centers]
        hist = np.histogram2d(pts[:, 1], pts[:, 0], bins=[edges[1], edges[0]])[0]  # rows: y
        bandwidth = BANDWIDTH * pts.std(axis=0) * len(pts) ** (-1 / 6)
        kernels = []
        for c, bw in zip(centers, bandwidth):
            bw = max(bw, c[1] - c[0])  # at least one cell: a target flat along an axis still shows
            kernels.append(np.exp(-0.5 * ((c[:, None] - c[None, :]) / bw) ** 2))
        dens = kernels[1] @ hist @ kernels[0].T
        if not dens.max() > 0:
            return cls(gx, gy, None, None, pts)
        ordered = np.sort(dens.ravel())[::-1]
        mass = np.cumsum(ordered) / ordered.sum()
        levels = np.unique([ordered[min(np.searchsorted(mass, m), len(ordered) - 1)] for m in TARGET_MASS])
        return cls(gx, gy, dens, levels if len(levels) >= 2 else None, pts)

    def draw(self, ax, fill: bool = True, lines: bool = True) -> None:
        """Filled light greys underneath (zorder 1) and the 90 % and 50 % outlines over the samples (zorder 3); a
        target that cannot be estimated is drawn as transparent grey points."""
        if self.levels is None:
            ax.scatter(*self.points.T, s=4, c=TARGET_COLOR, alpha=0.3, lw=0, zorder=1, gid="target")
            return
        if fill:
            top = [*self.levels, self.density.max()]
            ax.contourf(
                self.gx, self.gy, self.density, levels=top, colors=TARGET_FILLS[-len(self.levels) :], zorder=1
            ).set_gid("target")
        if lines:
            ax.contour(
                self.gx, self.gy, self.density, levels=self.levels[::2], colors="0.3", linewidths=0.6, zorder=3
            ).set_gid("target outline")


def _target_handle() -> Patch:
    return Patch(facecolor="0.8", edgecolor="0.25", lw=0.6, label="target")


def flow_figure(
    samples,
    target,
    trajectory=None,
    title: str = "",
    *,
    ts=None,
    projection: Projection | None = None,
    max_paths: int = 300,
) -> Figure:
    """The figure `plot_flow` writes: samples (n, d) over the target (m, d) and, when given, the
    trajectory (K, n, d) from the source (index 0) to the samples (index K - 1) at times `ts` (K,).

    2D: the target as kernel-density regions (filled greys, outlined on top), samples as points;
    the trajectory panel shows `max_paths` of the paths as thin lines from their source points to
    their samples. 1D: histograms of target and samples, and the paths as x against t. d > 2:
    everything through `projection` (default: `pca_projection(target)`), axes named by component.
    """
    samples = _points("samples", samples)
    d = samples.shape[1]
    target = _points("target", target, d)
    traj = None
    if trajectory is not None:
        traj = np.asarray(trajectory, np.float64)
        if traj.ndim != 3 or traj.shape[2] != d or traj.shape[0] < 2:
            raise ValueError(
                f"trajectory must have shape (K >= 2 saved times, n, d = {d}), source first; got {traj.shape}."
            )
        traj = traj[:, np.linspace(0, traj.shape[1] - 1, min(max_paths, traj.shape[1])).astype(int)]
    if ts is not None:
        ts = np.asarray(ts, np.float64).ravel()
        if traj is None or len(ts) != len(traj):
            raise ValueError(
                f"ts must hold one time per saved step of the trajectory ({'none given' if traj is None else len(traj)}); "
                f"got {len(ts)}."
            )
    note = None
    if d > 2:
        projection = pca_projection(target) if projection is None else projection
        if not isinstance(projection, Projection) or projection.components.shape != (2, d):
            raise ValueError(f"projection must be a Projection onto 2 directions of R^{d} (see pca_projection).")
        samples, target = projection(samples), projection(target)
        traj = None if traj is None else projection(traj)
        axis_names = projection.axis_labels()
        note = (
            f"d = {d}: points drawn in the plane of the target's first two principal components "
            f"({100 * projection.explained.sum():.0f} % of its variance)"
        )
    elif projection is not None:
        raise ValueError(f"projection is for points of dimension d > 2; these have d = {d}.")
    else:
        axis_names = ["dim 1", "dim 2"]

    panels = 1 if traj is None else 2
    note_lines = textwrap.wrap(note, 80 * panels) if note else []
    fig = Figure(figsize=(PANEL_INCHES * panels, PANEL_INCHES + NOTE_INCHES * len(note_lines)), dpi=DPI)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if d == 1:
        handles = _flow_1d(axes, samples[:, 0], target[:, 0], traj, ts)
    else:
        handles = _flow_2d(axes, samples, target, traj, axis_names)
    if title:
        fig.suptitle(short_title(title, width=int(30 * panels + 10)), fontsize=11)
    # The bottom band: one legend row for both panels, then the note, outside the layout's rect.
    note_h = NOTE_INCHES * len(note_lines) / fig.get_figheight()
    legend_h = LEGEND_INCHES / fig.get_figheight()
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, note_h), ncol=len(handles), frameon=False)
    if note_lines:
        fig.text(0.5, 0.2 * note_h, "\n".join(note_lines), ha="center", va="bottom", fontsize=8, color="0.3")
    fig.set_layout_engine("constrained", rect=(0, note_h + legend_h, 1, 1 - note_h - legend_h))
    return fig


def _flow_2d(axes, samples, target, traj, axis_names) -> list:
    clouds = [target, samples] if traj is None else [target, samples, traj[0]]
    limits = _limits(*clouds, square=True)
    regions = _Regions.of(target, limits)
    ax = axes[0]
    regions.draw(ax)
    ax.scatter(samples[:, 0], samples[:, 1], s=3, c=SAMPLE_COLOR, alpha=0.6, lw=0, zorder=2, gid="samples")
    ax.set_title("samples over the target", fontsize=10)
    if traj is not None:
        ax = axes[1]
        regions.draw(ax, lines=False)
        ax.plot(traj[:, :, 0], traj[:, :, 1], lw=0.5, alpha=0.45, c=PATH_COLOR, zorder=2, gid="paths")
        ax.scatter(traj[0, :, 0], traj[0, :, 1], s=5, c=SOURCE_COLOR, lw=0, zorder=3, gid="source")
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=5, c=SAMPLE_COLOR, lw=0, zorder=3, gid="samples")
        ax.set_title("trajectories, source to samples", fontsize=10)
    handles = [_target_handle(), Line2D([], [], ls="", marker="o", ms=5, color=SAMPLE_COLOR, label="samples")]
    if traj is not None:
        handles[1:1] = [
            Line2D([], [], ls="", marker="o", ms=5, color=SOURCE_COLOR, label="source x0"),
            Line2D([], [], lw=1.2, color=PATH_COLOR, label=f"paths ({traj.shape[1]} shown)"),
        ]
    for ax in axes:  # one frame for both panels, so that they compare
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])
        ax.set_xlabel(axis_names[0])
        ax.set_ylabel(axis_names[1])
        ax.set_aspect("equal")
    return handles


def _flow_1d(axes, samples, target, traj, ts) -> list:
    limits = _limits(target[:, None], samples[:, None])[0]
    bins = np.linspace(*limits, 61)
    ax = axes[0]
    ax.hist(target, bins=bins, density=True, color="0.8", edgecolor="0.6", lw=0.3, gid="target")
    ax.hist(samples, bins=bins, density=True, histtype="step", lw=1.5, color=SAMPLE_COLOR, gid="samples")
    ax.set_xlim(*limits)
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.set_title("samples over the target", fontsize=10)
    handles = [_target_handle(), Line2D([], [], lw=1.5, color=SAMPLE_COLOR, label="samples")]
    if traj is not None:
        ax = axes[1]
        t = np.linspace(0.0, 1.0, len(traj)) if ts is None else ts
        ax.plot(t, traj[:, :, 0], lw=0.4, alpha=0.5, c=PATH_COLOR, gid="paths")
        ax.scatter(np.full(traj.shape[1], t[0]), traj[0, :, 0], s=6, c=SOURCE_COLOR, zorder=3, gid="source")
        ax.scatter(np.full(traj.shape[1], t[-1]), traj[-1, :, 0], s=6, c=SAMPLE_COLOR, zorder=3, gid="samples")
        ax.set_xlabel("t (source at 0, samples at 1)" if ts is not None else "t (saves taken as equally spaced)")
        ax.set_ylabel("x")
        ax.set_title("trajectories, source to samples", fontsize=10)
        handles[1:1] = [
            Line2D([], [], ls="", marker="o", ms=5, color=SOURCE_COLOR, label="source x0"),
            Line2D([], [], lw=1.2, color=PATH_COLOR, label=f"paths ({traj.shape[1]} shown)"),
        ]
    return handles


def plot_flow(
    path: str | pathlib.Path,
    samples,
    target,
    trajectory=None,
    title: str = "",
    *,
    ts=None,
    projection: Projection | None = None,
    max_paths: int = 300,
) -> None:
    """Write `flow_figure(samples, target, trajectory, title, ...)` as a PNG at `path`
    (500 x 500 pixels a panel; a d > 2 figure is 20 pixels taller a line of its note)."""
    flow_figure(samples, target, trajectory, title, ts=ts, projection=projection, max_paths=max_paths).savefig(path)


def density_figure(xs, ys, model_log_prob, true_log_prob=None, title: str = "") -> Figure:
    """The figure `plot_density` writes: exp(model log-density) on the grid (len(ys), len(xs))
    (left) beside the true density (right), one colour scale (0 to the 99.5th percentile of both
    pooled, so a density too peaked or too flat shows as such) and one colorbar."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    panels = [("model density", np.exp(np.asarray(model_log_prob, np.float64)))]
    if true_log_prob is not None:
        panels.append(("true density", np.exp(np.asarray(true_log_prob, np.float64))))
    for name, dens in panels:
        if dens.shape != (len(ys), len(xs)):
            raise ValueError(
                f"The {name} log-density must have shape (len(ys), len(xs)) = {(len(ys), len(xs))}; got {dens.shape}."
            )
    pooled = np.concatenate([p[np.isfinite(p)] for _, p in panels])
    vmax = float(np.percentile(pooled, 99.5)) if len(pooled) else 1.0
    vmax = vmax if vmax > 0 else 1.0
    # Laid out by hand, in inches, so that the axes (equal scales) and the colorbar are the same
    # height: panels `side` wide and as tall as the grid is for its width, with room for labels.
    extent = [abs(v[-1] - v[0]) * len(v) / max(len(v) - 1, 1) for v in (xs, ys)]  # to the outer cells' edges
    aspect = float(np.clip(extent[1] / max(extent[0], 1e-12), 0.3, 3.0))
    side = 4.2 if aspect <= 1 else 4.2 / aspect
    n = len(panels)
    title = short_title(title, width=int(35 * n + 10)) if title else ""
    left, gap, bar_gap, bar_w, right, bottom = 0.75, 0.75, 0.15, 0.2, 1.0, 0.6
    top = 0.4 + 0.22 * len(title.splitlines())  # the panels' titles, then the figure's
    width, height = left + n * side + (n - 1) * gap + bar_gap + bar_w + right, bottom + side * aspect + top
    fig = Figure(figsize=(width, height), dpi=DPI)
    box = lambda x0, w: (x0 / width, bottom / height, w / width, side * aspect / height)  # noqa: E731
    axes = [fig.add_axes(box(left + i * (side + gap), side)) for i in range(n)]
    norm = Normalize(0.0, vmax)  # one scale for both panels
    for ax, (name, dens) in zip(axes, panels):
        mesh = ax.pcolormesh(xs, ys, dens, shading="nearest", norm=norm, cmap="viridis", rasterized=True)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("dim 1")
        ax.set_ylabel("dim 2")
        ax.set_aspect("equal")
    cax = fig.add_axes(box(left + n * side + (n - 1) * gap + bar_gap, bar_w))
    bar = fig.colorbar(mesh, cax=cax, extend="max" if pooled.max(initial=0.0) > vmax else "neither")
    bar.set_label("density p(x)")
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.08 / height, va="top")
    return fig


def plot_density(path: str | pathlib.Path, xs, ys, model_log_prob, true_log_prob=None, title: str = "") -> None:
    """Write `density_figure(xs, ys, model_log_prob, true_log_prob, title)` as a PNG at `path`."""
    density_figure(xs, ys, model_log_prob, true_log_prob, title).savefig(path)


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


def _scale(pixels: np.ndarray) -> int:
    """How many times `save_grid` enlarges small images: ~256 px a cell side (8x8 digits: 32)."""
    return max(1, 256 // max(pixels.shape[1:3]))


def labelled_grid(
    pixels: np.ndarray,
    nrow: int,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    caption: str | None = None,
) -> np.ndarray:
    """The uint8 image `save_grid` writes: `image_grid(pixels, nrow)` enlarged (each pixel a
    block of `256 // max(H, W)` pixels, at least 1), with white margins holding `col_labels`
    (one a column, above it), `row_labels` (one a row, left of it) and a `caption` line on top.
    Without labels or caption it is the enlarged grid alone; the labels never touch the cells."""
    from PIL import Image, ImageDraw, ImageFont

    pixels = np.asarray(pixels)
    grid = image_grid(pixels, nrow)
    scale = _scale(pixels)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    n, h, w = pixels.shape[:3]
    cols = min(int(nrow), n)
    rows = -(-n // cols)
    for name, labels, count, what in (
        ("col_labels", col_labels, cols, "column"),
        ("row_labels", row_labels, rows, "row"),
    ):
        if labels is not None and (isinstance(labels, str) or len(labels) != count):
            raise ValueError(
                f"{name} must hold one label a {what}: {count} for {n} images at nrow={nrow}; got {labels!r}."
            )
    if row_labels is None and col_labels is None and not caption:
        return grid
    cell_h, cell_w = h * scale, w * scale
    size = int(np.clip(min(cell_h, cell_w) // 7, 12, 36))
    font = ImageFont.load_default(size=size)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))

    def extent(text: str) -> tuple[int, int]:
        box = probe.textbbox((0, 0), text, font=font)
        return int(np.ceil(box[2] - box[0])), int(np.ceil(box[3] - box[1]))

    pad = max(4, size // 3)
    caption_h = extent("Ag")[1] + 2 * pad if caption else 0
    label_h = extent("Ag")[1] + 2 * pad if col_labels is not None else 0
    left = max(extent(str(t))[0] for t in row_labels) + 2 * pad if row_labels is not None else 0
    top = caption_h + label_h
    mode = "L" if grid.shape[-1] == 1 else "RGB"
    canvas = Image.new(mode, (grid.shape[1] + left, grid.shape[0] + top), 255 if mode == "L" else (255,) * 3)
    canvas.paste(Image.fromarray(grid[..., 0] if mode == "L" else grid), (left, top))
    draw = ImageDraw.Draw(canvas)
    ink = 0 if mode == "L" else (0, 0, 0)
    if caption:
        text = short_title(caption, width=max(20, canvas.width // max(1, size // 2)), max_lines=1)
        draw.text((canvas.width / 2, caption_h / 2), text, fill=ink, font=font, anchor="mm")
    step_w, step_h = (w + 1) * scale, (h + 1) * scale
    if col_labels is not None:
        y = caption_h + label_h / 2
        for q, text in enumerate(col_labels):
            draw.text((left + q * step_w + cell_w / 2, y), str(text), fill=ink, font=font, anchor="mm")
    if row_labels is not None:
        for r, text in enumerate(row_labels):
            y = top + r * step_h + cell_h / 2
            draw.text((left - pad, y), str(text), fill=ink, font=font, anchor="rm")
    out = np.asarray(canvas)
    return out[..., None] if out.ndim == 2 else out


def save_grid(
    path: str | pathlib.Path,
    pixels: np.ndarray,
    nrow: int,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    caption: str | None = None,
) -> None:
    """Write uint8 images (N, H, W, C) as one PNG grid (`labelled_grid`: `image_grid` enlarged to
    ~256 px a cell side for small images, with optional column/row labels and a caption)."""
    from PIL import Image

    grid = labelled_grid(pixels, nrow, row_labels=row_labels, col_labels=col_labels, caption=caption)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
