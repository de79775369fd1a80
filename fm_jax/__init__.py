"""fm_jax: flow matching in JAX.

import fm_jax as fm
path = fm.paths.CondOT()
loss = fm.cfm_loss(path, fm.couplings.ExactOT())
sol = fm.sample(vf, x0, fm.SolverSpec("dopri5", rtol=1e-5, atol=1e-5))
nll = -fm.log_likelihood(vf, x1).log_prob

Submodules and names load on first use (`fm_jax.lazy`): `import fm_jax` imports no JAX,
Flax, orbax, TFDS, grain, matplotlib or ott; `fm.train`, `fm.models` and `fm.plots` are there
when first touched.
"""

from typing import TYPE_CHECKING

from fm_jax.lazy import attach

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=[
        "assignment",
        "couplings",
        "data",
        "discrete",
        "distillation",
        "fid",
        "fid_weights",
        "files",
        "gaussian",
        "host_ot",
        "likelihood",
        "losses",
        "metrics",
        "models",
        "paths",
        "plots",
        "primitives",
        "registry",
        "solvers",
        "train",
    ],
    names={
        "GaussianFlow": "gaussian",
        "log_likelihood": "likelihood",
        "LogitNormalTime": "losses",
        "UniformTime": "losses",
        "cfm_loss": "losses",
        "Registry": "registry",
        "Solution": "solvers",
        "SolverSpec": "solvers",
        "encode": "solvers",
        "get_solver": "solvers",
        "sample": "solvers",
        "sample_sde": "solvers",
        "score_from_velocity": "solvers",
        "velocity_field": "solvers",
    },
)

if TYPE_CHECKING:  # what a type checker and an IDE see: the same names, imported eagerly
    from fm_jax import (  # noqa: F401
        assignment,
        couplings,
        data,
        distillation,
        fid,
        fid_weights,
        gaussian,
        host_ot,
        likelihood,
        losses,
        metrics,
        models,
        paths,
        plots,
        primitives,
        registry,
        solvers,
        train,
    )
    from fm_jax.gaussian import GaussianFlow  # noqa: F401
    from fm_jax.likelihood import log_likelihood  # noqa: F401
    from fm_jax.losses import LogitNormalTime, UniformTime, cfm_loss  # noqa: F401
    from fm_jax.registry import Registry  # noqa: F401
    from fm_jax.solvers import (  # noqa: F401
        Solution,
        SolverSpec,
        encode,
        get_solver,
        sample,
        sample_sde,
        score_from_velocity,
        velocity_field,
    )
