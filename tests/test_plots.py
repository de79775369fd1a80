"""The pictures of fm_jax.plots: PNG sizes, what each figure labels and draws (read from the
matplotlib Figure before it is saved), the d > 2 projection against a planted plane, titles
without paths, and labelled image grids that change only their margins."""

import io

import numpy as np
import pytest
from PIL import Image

from fm_jax import plots


def _gid(ax, gid):
    return [a for a in ax.get_children() if a.get_gid() == gid]


def _legend_texts(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def _moons_like(n, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, np.pi, n)
    return np.stack([np.cos(a), np.sin(a)], 1) + 0.05 * rng.normal(size=(n, 2))


# ------------------------------------------------------------------------------------------------
# flows: samples over the target, trajectories


def test_plot_flow_writes_a_png_of_the_figure_size(tmp_path):
    rng = np.random.default_rng(0)
    traj = rng.normal(size=(5, 60, 2))
    plots.plot_flow(tmp_path / "two.png", traj[-1], _moons_like(200), traj, "otcfm normal -> moons")
    plots.plot_flow(tmp_path / "one.png", traj[-1], _moons_like(200), None, "flow")
    with Image.open(tmp_path / "two.png") as two, Image.open(tmp_path / "one.png") as one:
        assert two.size == (1000, 500) and one.size == (500, 500)  # 500 px a panel


def test_flow_figure_labels_target_samples_and_paths():
    rng = np.random.default_rng(1)
    target = _moons_like(300)
    traj = np.linspace(0, 1, 9)[:, None, None] * target[None, :50] + rng.normal(size=(1, 50, 2))
    fig = plots.flow_figure(traj[-1], target, traj, "otcfm normal -> file:/home/me/runs/pts.npy, NFE 12", max_paths=20)
    left, right = fig.axes
    for ax in (left, right):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("dim 1", "dim 2")
        assert ax.get_xlim() == left.get_xlim() and ax.get_ylim() == left.get_ylim()  # one frame
    assert _legend_texts(fig) == ["target", "source x0", "paths (20 shown)", "samples"]
    assert "x1" not in " ".join(_legend_texts(fig))
    assert fig.get_suptitle() == "otcfm normal -> file:pts.npy, NFE 12"
    # The target (filled regions) under the samples, its outlines over them.
    (fill,), (outline,), (dots,) = _gid(left, "target"), _gid(left, "target outline"), _gid(left, "samples")
    assert fill.get_zorder() < dots.get_zorder() < outline.get_zorder()
    np.testing.assert_allclose(dots.get_offsets(), traj[-1])
    assert len(_gid(right, "paths")) == 20  # a subset of the paths, thin lines from source to samples
    (src,), (end,) = _gid(right, "source"), _gid(right, "samples")
    np.testing.assert_allclose(src.get_offsets(), traj[0, np.linspace(0, 49, 20).astype(int)])
    np.testing.assert_allclose(end.get_offsets(), traj[-1, np.linspace(0, 49, 20).astype(int)])


def test_target_regions_hold_their_mass():
    """The filled regions are highest-density regions: each level encloses its stated share of the
    target's points, and for a Gaussian the 50 % region is the ellipse of area 2 ln 2 pi sx sy (the
    kernel widens each variance by a factor 1 + BANDWIDTH^2 n^(-1/3))."""
    sx, sy, n = 1.5, 0.5, 5000
    pts = np.random.default_rng(5).normal(size=(n, 2)) * [sx, sy] + [1.0, -0.5]
    regions = plots._Regions.of(pts, np.array([[-6.0, 6.0], [-4.0, 3.0]]))
    ix = np.abs(pts[:, :1] - regions.gx[None]).argmin(1)
    iy = np.abs(pts[:, 1:] - regions.gy[None]).argmin(1)
    inside = [(regions.density[iy, ix] >= level).mean() for level in regions.levels]  # levels ascending
    np.testing.assert_allclose(inside, sorted(plots.TARGET_MASS, reverse=True), atol=0.03)
    cell = (regions.gx[1] - regions.gx[0]) * (regions.gy[1] - regions.gy[0])
    area = (regions.density >= regions.levels[2]).sum() * cell
    widen = 1 + plots.BANDWIDTH**2 * n ** (-1 / 3)
    np.testing.assert_allclose(area, 2 * np.log(2) * np.pi * sx * sy * widen, rtol=0.06)


def test_flow_figure_one_dimensional():
    rng = np.random.default_rng(2)
    traj = rng.normal(size=(7, 40, 1)).cumsum(0)
    fig = plots.flow_figure(traj[-1], rng.normal(size=(300, 1)), traj, ts=np.linspace(0, 1, 7))
    hist, paths = fig.axes
    assert (hist.get_xlabel(), hist.get_ylabel()) == ("x", "density")
    assert paths.get_xlabel().startswith("t ") and paths.get_ylabel() == "x"
    assert {"target", "samples"} <= set(_legend_texts(fig))
    np.testing.assert_allclose(_gid(paths, "samples")[0].get_offsets(), np.stack([np.ones(40), traj[-1, :, 0]], 1))


def test_flow_figure_projects_d_above_2_on_the_targets_principal_plane(tmp_path):
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(6, 2)))[0].T  # a plane of R^6
    z = rng.normal(size=(400, 2)) * [3.0, 1.0]
    target = 5.0 + z @ basis + 0.01 * rng.normal(size=(400, 6))
    samples = 5.0 + rng.normal(size=(100, 2)) @ basis
    fig = plots.flow_figure(samples, target)
    (ax,) = fig.axes
    proj = plots.pca_projection(target)
    np.testing.assert_allclose(_gid(ax, "samples")[0].get_offsets(), (samples - target.mean(0)) @ proj.components.T)
    np.testing.assert_allclose(proj.explained, [0.9, 0.1], atol=0.03)  # variances 9 : 1
    assert (ax.get_xlabel(), ax.get_ylabel()) == tuple(
        f"PC {i + 1} ({100 * e:.0f} % of variance)" for i, e in enumerate(proj.explained)
    )
    (note,) = [t.get_text() for t in fig.texts if "principal components" in t.get_text()]
    assert note.startswith("d = 6:")
    with pytest.raises(ValueError, match="d > 2"):
        plots.flow_figure(samples[:, :2], target[:, :2], projection=proj)
    plots.plot_flow(tmp_path / "six.png", samples, target)
    with Image.open(tmp_path / "six.png") as png:
        assert png.size == (500, 500 + 20 * len(note.split("\n")))  # 20 px a line of note below the legend


def test_pca_projection_recovers_a_planted_plane():
    rng = np.random.default_rng(4)
    basis = np.linalg.qr(rng.normal(size=(5, 2)))[0].T  # orthonormal rows u1, u2
    z = rng.normal(size=(2000, 2)) * [2.0, 0.5]
    x = z @ basis + np.array([1.0, -2.0, 0.0, 3.0, 0.5])
    proj = plots.pca_projection(x)
    # Its directions are the planted ones, up to sign, and their variance shares 16 : 1 (nothing off-plane).
    np.testing.assert_allclose(np.abs(proj.components @ basis.T), np.eye(2), atol=1e-2)
    np.testing.assert_allclose(proj.explained, [16 / 17, 1 / 17], atol=0.01)
    np.testing.assert_allclose(proj(x).std(0), z.std(0), rtol=1e-2)
    # The same subspace as the top eigenvectors of the covariance (another route than the SVD).
    evals, evecs = np.linalg.eigh(np.cov(x.T))
    top = evecs[:, ::-1][:, :2].T
    np.testing.assert_allclose(np.abs(proj.components @ top.T), np.eye(2), atol=1e-8)
    assert (proj.components[np.arange(2), np.abs(proj.components).argmax(1)] > 0).all()  # signs fixed
    np.testing.assert_allclose(proj.components @ proj.components.T, np.eye(2), atol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        plots.pca_projection(x[:1])


def test_flow_figure_errors_name_the_argument():
    pts = np.zeros((10, 2))
    with pytest.raises(ValueError, match="target has dimension 3"):
        plots.flow_figure(pts, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="trajectory must have shape"):
        plots.flow_figure(pts, pts, np.zeros((4, 10, 3)))
    with pytest.raises(ValueError, match="ts must hold one time"):
        plots.flow_figure(pts, pts, np.zeros((4, 10, 2)), ts=np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="samples must be points"):
        plots.flow_figure(np.zeros(10), pts)


def test_short_title():
    assert (
        plots.short_title("otcfm normal -> file:/tmp/b/points.npy, dopri5") == "otcfm normal -> file:points.npy, dopri5"
    )
    assert plots.short_title("run ~/w/x/a.npz and ./rel/dir and data/pts.npy") == "run a.npz and dir and pts.npy"
    assert plots.short_title("si N(0, I) -> moons, w = 1/2") == "si N(0, I) -> moons, w = 1/2"
    long = plots.short_title(" ".join(["word"] * 40), width=30, max_lines=2)
    lines = long.split("\n")
    assert len(lines) == 2 and all(len(line) <= 30 for line in lines) and lines[-1].endswith("…")


# ------------------------------------------------------------------------------------------------
# densities


def test_density_figure_shares_one_scale_with_a_colorbar():
    xs, ys = np.linspace(-2, 2, 30), np.linspace(-1, 1, 20)
    gx, gy = np.meshgrid(xs, ys)
    model = -0.5 * (gx**2 + gy**2) - np.log(2 * np.pi)
    true = -(gx**2 + gy**2) - np.log(np.pi)  # more peaked: it sets the scale
    fig = plots.density_figure(xs, ys, model, true, "otcfm normal -> /abs/path/pts.npy")
    left, right, bar = fig.axes
    assert (left.get_title(), right.get_title()) == ("model density", "true density")
    for ax in (left, right):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("dim 1", "dim 2")
    (m,), (t,) = left.collections, right.collections
    assert m.norm is t.norm and m.norm.vmin == 0.0
    np.testing.assert_allclose(m.norm.vmax, np.percentile(np.exp(np.concatenate([model, true]).ravel()), 99.5))
    np.testing.assert_allclose(m.get_array().reshape(20, 30), np.exp(model))
    assert bar.get_ylabel() == "density p(x)"
    assert left.get_aspect() == right.get_aspect() == 1.0  # equal scales
    fig.savefig(io.BytesIO())  # drawn: equal axes take their final boxes
    for ax in (left, right):  # the colorbar as tall as the panels, the panels filling their boxes
        np.testing.assert_allclose(
            ax.get_position().get_points()[:, 1], bar.get_position(original=True).get_points()[:, 1], atol=2e-3
        )
    assert fig.get_suptitle() == "otcfm normal -> pts.npy"
    assert len(plots.density_figure(xs, ys, model).axes) == 2  # model alone, and its colorbar
    with pytest.raises(ValueError, match=r"shape \(len\(ys\), len\(xs\)\)"):
        plots.density_figure(xs, ys, model.T)


def test_plot_density_writes_a_png(tmp_path):
    xs, ys = 0.5 * np.arange(10), 0.5 * np.arange(5)  # cells 0.5 wide: 5 x 2.5 to the outer edges
    plots.plot_density(tmp_path / "square.png", ys, ys, np.zeros((5, 5)), np.zeros((5, 5)))
    plots.plot_density(tmp_path / "wide.png", xs, ys, np.zeros((5, 10)))
    plots.plot_density(tmp_path / "titled.png", ys, ys, np.zeros((5, 5)), None, "a title")
    sizes = {}
    for name in ("square", "wide", "titled"):
        with Image.open(tmp_path / f"{name}.png") as png:
            sizes[name] = png.size
    # Inches: 0.75 left, panels 4.2 wide with 0.75 between, 0.15 + 0.2 colorbar + 1.0 right; 0.6 below,
    # panels as tall as the grid for their width (a 4 x 2 grid half as tall), 0.4 above (+0.22 a title line).
    assert sizes == {"square": (1125, 520), "wide": (630, 310), "titled": (630, 542)}


# ------------------------------------------------------------------------------------------------
# labelled image grids


def _tiles(n=6, shape=(8, 8, 1), seed=0):
    return np.random.default_rng(seed).integers(0, 200, (n, *shape), dtype=np.uint8)


def test_labelled_grid_without_labels_is_the_enlarged_grid():
    tiles = _tiles()
    np.testing.assert_array_equal(plots.labelled_grid(tiles, 3), plots.image_grid(tiles, 3).repeat(32, 0).repeat(32, 1))


@pytest.mark.parametrize("shape", [(8, 8, 1), (6, 5, 3)])
def test_labels_change_only_the_margins(tmp_path, shape):
    tiles = _tiles(shape=shape)
    plain = plots.labelled_grid(tiles, 3)
    out = plots.labelled_grid(tiles, 3, col_labels=["0", "1", "2"], row_labels=["w = 1", "w = 2"], caption="guidance")
    top, left = out.shape[0] - plain.shape[0], out.shape[1] - plain.shape[1]
    assert top > 0 and left > 0 and out.dtype == np.uint8 and out.shape[2] == shape[2]
    np.testing.assert_array_equal(out[top:, left:], plain)  # the cells untouched
    margin = np.ones(out.shape[:2], bool)
    margin[top:, left:] = False
    assert (out[~margin] == plain.reshape(-1, shape[2])).all()
    ink = (out < 128).any(axis=-1) & margin
    assert ink[:top].any() and ink[top:, :left].any()
    step = (shape[1] + 1) * (256 // max(shape[:2]))
    for q in range(3):  # one label above each column
        assert ink[:top, left + q * step : left + q * step + step].any()
    plots.save_grid(tmp_path / "g.png", tiles, 3, col_labels=["0", "1", "2"], row_labels=["a", "b"], caption="c")
    with Image.open(tmp_path / "g.png") as png:
        assert png.mode == ("L" if shape[2] == 1 else "RGB")


def test_labels_need_one_a_column_or_row():
    tiles = _tiles()
    with pytest.raises(ValueError, match="col_labels must hold one label a column: 3"):
        plots.labelled_grid(tiles, 3, col_labels=["0", "1"])
    with pytest.raises(ValueError, match="row_labels must hold one label a row: 2"):
        plots.labelled_grid(tiles, 3, row_labels="ab")
