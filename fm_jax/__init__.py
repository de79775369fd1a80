"""fm_jax: flow matching in JAX.

import fm_jax as fm
path = fm.paths.CondOT()
loss = fm.cfm_loss(path, fm.couplings.ExactOT())
sol = fm.sample(vf, x0, fm.SolverSpec("dopri5", rtol=1e-5, atol=1e-5))
nll = -fm.log_likelihood(vf, x1).log_prob
"""

from fm_jax import (
    couplings,
    data,
    distillation,
    fid,
    gaussian,
    likelihood,
    losses,
    metrics,
    models,
    paths,
    primitives,
    registry,
    solvers,
)
from fm_jax.gaussian import GaussianFlow
from fm_jax.likelihood import log_likelihood
from fm_jax.losses import LogitNormalTime, UniformTime, cfm_loss
from fm_jax.registry import Registry
from fm_jax.solvers import (
    Solution,
    SolverSpec,
    encode,
    get_solver,
    sample,
    sample_sde,
    score_from_velocity,
    velocity_field,
)

__version__ = "0.1.0"

__all__ = [
    "GaussianFlow",
    "LogitNormalTime",
    "Registry",
    "Solution",
    "SolverSpec",
    "UniformTime",
    "cfm_loss",
    "couplings",
    "data",
    "distillation",
    "encode",
    "fid",
    "gaussian",
    "get_solver",
    "likelihood",
    "log_likelihood",
    "losses",
    "metrics",
    "models",
    "paths",
    "primitives",
    "registry",
    "sample",
    "sample_sde",
    "score_from_velocity",
    "solvers",
    "velocity_field",
]
