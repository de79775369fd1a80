"""The method table: each published flow-matching method as one frozen `Method` record.

Everything that depends on the method reads its record: the loss (`build_loss`), the
sources it may start from, whether its velocity gives the score (SDE sampling), whether it
distils a teacher run, and whether the model is a velocity field or a normalizing flow.
Adding a method is adding one entry to `METHODS`.

| method    | path                      | coupling                    | source       | defaults          | paper |
| --------- | ------------------------- | --------------------------- | ------------ | ----------------- | ----- |
| "icfm"    | ICFM(sigma)               | Independent                 | any          | sigma 0.1         | Tong et al. 2024 |
| "otcfm"   | ICFM(sigma)               | ExactOT                     | any          | sigma 0.1, POT    | Tong et al. 2024 |
| "sbcfm"   | BrownianBridge(sigma)     | SchrodingerBridge(sigma)    | any          | sigma 1           | Tong et al. 2024 |
| "fm"      | CondOT(sigma_min = sigma) | Independent                 | N(0, I) only | sigma 0.1         | Lipman et al. 2023 |
| "fm_vp"   | VPDiffusion()             | Independent                 | N(0, I) only | -                 | Lipman et al. 2023 (FM, diffusion path) |
| "si"      | Trigonometric()           | Independent                 | any          | -                 | Albergo & Vanden-Eijnden 2023 |
| "fastode" | ICFM(sigma)               | learned encoder q(x0 | x1)  | N(0, I) only | sigma 0.1         | Lee, Kim & Ye 2023 |
| "nfm"     | ICFM(sigma)               | normalizing-flow teacher    | N(0, I) only | sigma 0.1         | Berthelot et al. 2026 |
| "reflow"  | ICFM(sigma)               | flow-matching teacher's ODE | N(0, I) only | sigma 0.1         | Liu et al. 2023 |
| "flow"    | -                         | -                           | -            | -                 | the NFM teacher: maximum likelihood |
| "dfm_mask"    | MixturePath, masked source  | Independent               | tokens       | CE, linear kappa  | Gat et al. 2024; Shi et al. 2024 |
| "dfm_uniform" | MixturePath, uniform source | Independent               | tokens       | CE, linear kappa  | Gat et al. 2024; Campbell et al. 2024 |

"fastode" needs the network's `encode` (`fm_jax.models.CoupledField`); "nfm" and "reflow" a
`TeacherCoupling` (`fm_jax.train.teachers`); "flow" trains a normalizing flow, not a field.
The "dfm_*" methods (`model="tokens"`) are discrete flows (`fm_jax.discrete`): the data are
tokens (an image's pixels quantized to `config.data.levels` values), the network a
`Transformer` predicting the posterior p(x1 | x_t), the loss `dfm_loss` ("ce" or "kl",
`config.dfm.objective`, with the scheduler `config.dfm.scheduler` t^n, n = `config.dfm.n`).

Defaults: `Method.defaults` holds the config values a method needs where the config leaves
them unset (`fm_jax.train.spec.resolve_defaults`): sigma 0.1 as in the OT-CFM paper's 2D
experiments, and sigma 1 for SB-CFM, whose Sinkhorn coupling runs at epsilon = 2 sigma^2 (on
2D data at batch 256, sigma 1 converges in ~20 iterations; sigma 0.1, epsilon 0.02, takes
~1,700 on average, 13% of the solves stopping unconverged at 2,000, and trains ~60x slower);
OT-CFM's exact solver, POT's network simplex on the host ("POT"), the fastest exact solver
measured on a CPU (`fm_jax.couplings.ExactOT`). A method whose path has no noise scale takes
sigma 0 (unused).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Mapping
from typing import Any

from fm_jax import couplings, discrete, paths
from fm_jax.distillation import TeacherCoupling
from fm_jax.losses import CFMLoss, FlowNLLLoss, cfm_loss, fast_ode_loss, flow_nll_loss
from fm_jax.registry import Registry

__all__ = ["METHODS", "LossSpec", "Method", "build_loss", "get_method"]


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """The loss settings a config gives: the path's sigma, the regression target, OT-CFM's exact
    solver, SB-CFM's online Sinkhorn chunk (0: dense), label dropout for classifier-free
    guidance (with the network's null label), fastode's KL weight beta, and a normalizing
    flow's training noise."""

    sigma: float = 0.0
    target: str = "velocity"
    ot_solver: str = "auto"
    sinkhorn_online: int = 0
    label_dropout: float = 0.0
    null_label: int | None = None
    beta: float = 1.0
    flow_noise: float = 0.0
    vocab_size: int = 0
    objective: str = "ce"
    scheduler: str = "polynomial"
    scheduler_n: float = 1.0

    def __post_init__(self) -> None:
        # An unset sigma (NaN in a config, `spec.resolve_defaults` fills it) must not reach a loss.
        if not math.isfinite(self.sigma) or self.sigma < 0:
            raise ValueError(
                f"sigma must be a finite number >= 0, got {self.sigma}: set --config.sigma, or resolve the "
                "method's default first (fm_jax.train.spec.resolve_defaults)."
            )


@dataclasses.dataclass(frozen=True)
class Method:
    """One method: its path and coupling, the sources it allows, and what it trains.

    Attributes:
        name: the `config.method` name.
        paper: where it comes from.
        path: sigma -> the conditional probability path; None for a normalizing flow.
        coupling: `LossSpec` -> the minibatch coupling; None where the coupling is learned
            (`encoder`) or distilled (`teacher`), or there is none (a flow).
        normal_source_only: the path or coupling assumes x0 ~ N(0, I).
        has_score: the velocity gives the score in closed form (a Gaussian path, x0 ~ N(0, I)
            drawn independently of x1), so the run can be sampled as an SDE.
        encoder: the network carries a Gaussian encoder q(x0 | x1) trained with the field.
        teacher: the kind of run the coupling distils: "flow" (a normalizing flow) or
            "field" (a flow-matching run); None for no teacher.
        model: "field" (a velocity network), "flow" (a normalizing flow, trained by likelihood)
            or "tokens" (a discrete flow's posterior network over tokens).
        token_source: the source of a discrete flow ("mask" or "uniform"; `fm_jax.discrete.SOURCES`).
        defaults: {config field: value} the method takes where the config leaves the field
            unset (see the module docstring); an explicit value always wins.
    """

    name: str
    paper: str
    path: Callable[[float], paths.GaussianPath] | None
    coupling: Callable[[LossSpec], couplings.Coupling] | None = None
    normal_source_only: bool = False
    has_score: bool = False
    encoder: bool = False
    teacher: str | None = None
    model: str = "field"
    token_source: str | None = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"sigma": 0.0}, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", types.MappingProxyType(dict(self.defaults)))  # read-only

    def check_source(self, source: str) -> None:
        """A ValueError unless the method can start from `source`."""
        if self.normal_source_only and source != "normal":
            raise ValueError(
                f"Method {self.name!r} needs the 'normal' source (got {source!r}); use 'icfm' or 'otcfm' instead."
            )

    def conditional_path(self, sigma: float) -> paths.GaussianPath:
        """The method's conditional path at noise scale `sigma`."""
        if self.path is None:
            raise ValueError(f"Method {self.name!r} trains a normalizing flow: it has no probability path.")
        return self.path(sigma)

    def source_name(self, source: str) -> str:
        """What a run of this method starts from, in words: the config's source, or a discrete
        flow's ("mask tokens", "uniform tokens")."""
        return source if self.token_source is None else f"{self.token_source} tokens"

    def token_path(self, spec: LossSpec) -> discrete.MixturePath:
        """A discrete method's mixture path over `spec.vocab_size` tokens."""
        if self.token_source is None:
            raise ValueError(f"Method {self.name!r} is not a discrete flow: it has no token path.")
        scheduler = discrete.SCHEDULERS[spec.scheduler]
        kappa = scheduler(spec.scheduler_n) if scheduler is discrete.Polynomial else scheduler()
        return discrete.MixturePath(spec.vocab_size, self.token_source, kappa)


def _independent(spec: LossSpec) -> couplings.Coupling:
    return couplings.Independent()


METHODS: Registry[Method] = Registry("config.method")
_SIGMA = {"sigma": 0.1}  # the OT-CFM paper's 2D experiments
for _method in (
    Method("icfm", "Tong et al. 2024", paths.ICFM, _independent, has_score=True, defaults=_SIGMA),
    Method(
        "otcfm",
        "Tong et al. 2024",
        paths.ICFM,
        lambda spec: couplings.ExactOT(solver=spec.ot_solver),
        defaults=_SIGMA | {"ot_solver": "auto"},
    ),
    Method(
        "sbcfm",
        "Tong et al. 2024",
        paths.BrownianBridge,
        lambda spec: couplings.SchrodingerBridge(spec.sigma, online=spec.sinkhorn_online),
        defaults={"sigma": 1.0},
    ),
    Method(
        "fm",
        "Lipman et al. 2023",
        lambda sigma: paths.CondOT(sigma_min=sigma),
        _independent,
        normal_source_only=True,
        has_score=True,
        defaults=_SIGMA,
    ),
    Method(
        "fm_vp",
        "Lipman et al. 2023",
        lambda sigma: paths.VPDiffusion(),
        _independent,
        normal_source_only=True,
        has_score=True,
    ),
    Method("si", "Albergo & Vanden-Eijnden 2023", lambda sigma: paths.Trigonometric(), _independent, has_score=True),
    Method("fastode", "Lee, Kim & Ye 2023", paths.ICFM, normal_source_only=True, encoder=True, defaults=_SIGMA),
    Method("nfm", "Berthelot et al. 2026", paths.ICFM, normal_source_only=True, teacher="flow", defaults=_SIGMA),
    Method("reflow", "Liu et al. 2023", paths.ICFM, normal_source_only=True, teacher="field", defaults=_SIGMA),
    Method("flow", "maximum likelihood (the NFM teacher)", None, model="flow"),
    Method("dfm_mask", "Gat et al. 2024; Shi et al. 2024", None, _independent, model="tokens", token_source="mask"),
    Method(
        "dfm_uniform",
        "Gat et al. 2024; Campbell et al. 2024",
        None,
        _independent,
        model="tokens",
        token_source="uniform",
    ),
):
    METHODS.add(_method.name, _method)


def get_method(name: str | Method, source: str = "normal") -> Method:
    """The record of a method name, checked against the source it starts from."""
    method = name if isinstance(name, Method) else METHODS[name]
    method.check_source(source)
    return method


def build_loss(
    method: str | Method,
    spec: LossSpec = LossSpec(),
    source: str = "normal",
    *,
    encode: Callable | None = None,
    teacher: TeacherCoupling | None = None,
) -> CFMLoss | FlowNLLLoss | discrete.DiscreteLoss:
    """The loss of a method with the settings `spec`, starting from `source`.

    "fastode" takes the network's `encode(params, x1, cond)`, "nfm" / "reflow" their `teacher`
    coupling (`fm_jax.train.teachers.teacher_coupling`).
    """
    method = get_method(method, source)
    if method.model == "flow":
        return flow_nll_loss(spec.flow_noise)
    cond = {"label_dropout": spec.label_dropout, "null_label": spec.null_label}
    if method.model == "tokens":
        return discrete.dfm_loss(method.token_path(spec), spec.objective, **cond)
    path = method.conditional_path(spec.sigma)
    if method.encoder:
        if encode is None:
            raise ValueError(
                f"Method {method.name!r} needs the network's encode(params, x1, cond) (fm_jax.models.CoupledField)."
            )
        return fast_ode_loss(path, encode, spec.beta, **cond)
    if method.teacher is not None:
        if not isinstance(teacher, TeacherCoupling):
            raise ValueError(
                f"Method {method.name!r} needs its teacher coupling (fm_jax.train.teachers.teacher_coupling)."
            )
        return cfm_loss(path, teacher, target=spec.target, **cond)
    return cfm_loss(path, method.coupling(spec), target=spec.target, **cond)
