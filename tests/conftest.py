"""Shared setup: 8 fake CPU devices for the sharding tests, and every path the library defines."""

import os
import pathlib
import tempfile

import jax
import pytest

# Before any backend starts: the suite sees 8 CPU devices, so sharded runs compare against
# single-device ones (mesh.num_devices=1) in one process. Unsharded code runs on device 0.
jax.config.update("jax_num_cpu_devices", 8)
# Many tests compile the same programs (a train step built again by each run of a config):
# a compilation cache shared by the pytest workers of one session compiles each once. It is
# set in the environment too, so that the `fm-jax` subprocesses of the tests (resume, faults,
# multi-process runs) read and fill the same cache. JAX_COMPILATION_CACHE_DIR overrides the
# place; the cache never changes results.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(tempfile.gettempdir()) / f"fm_jax_test_cache_{os.getuid()}")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"])
)
jax.config.update(
    "jax_persistent_cache_min_entry_size_bytes", int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"])
)
# The FID weights and reference statistics (fm_jax.train.inception_fid) of the tests stay out of ~/.cache.
os.environ.setdefault("FM_JAX_CACHE", str(pathlib.Path(tempfile.gettempdir()) / f"fm_jax_test_fid_{os.getuid()}"))

import fm_jax as fm  # noqa: E402 (after the cache settings, which must precede any compile)

ALL_PATHS = [
    fm.paths.CondOT(),
    fm.paths.CondOT(sigma_min=0.1),
    fm.paths.ICFM(sigma=0.0),
    fm.paths.ICFM(sigma=0.3),
    fm.paths.BrownianBridge(sigma=0.5),
    fm.paths.Trigonometric(),
    fm.paths.Trigonometric(sigma=0.2),
    fm.paths.VPDiffusion(),
    fm.paths.VEDiffusion(sigma_min=0.01, sigma_max=5.0),
    fm.paths.Cosine(),
    fm.paths.LinearVP(),
    fm.paths.Polynomial(n=2.0),
    fm.paths.Polynomial(n=1.0),
]


@pytest.fixture(params=ALL_PATHS, ids=repr)
def path(request):
    return request.param


# Scheduling over the pytest-xdist workers (`make test`: -n auto --dist loadfile
# --no-loadscope-reorder, which keeps this order rather than xdist's most-tests-first): each module
# runs on one worker, so a module fixture that trains a run or converts weights runs once
# (under plain load scheduling a module split over two workers runs it in both; xdist 3.8's
# loadgroup cannot group under pytest 9, whose node ids no longer take its suffix), and the
# longest modules start first, so that no long module runs alone at the end.
LONGEST_FIRST = (
    "test_fid_weights",
    "test_image_train",
    "test_multiprocess",
    "test_toy2d_table",
    "test_inception_fid",
    "test_distill_train",
    "test_discrete_train",
    "test_resume",
    "test_benchmarks",
    "test_faults",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: each module keeps its order
