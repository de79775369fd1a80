"""A training config resolved once into typed, frozen pieces: the run spec.

`RunSpec.from_config(config)` reads an ml_collections config (a config file and its
overrides), checks each field beside the piece it belongs to, and returns:

- `method`: the `Method` record of `config.method` (`fm_jax.train.methods.METHODS`);
- `loss`: the `LossSpec` of the method's loss (sigma, OT solver, label dropout, beta, noise);
- `data`: the `DataSpec` (source and target specs, the shape of an example, an image
  dataset's settings, the classes a conditional run sees);
- `model`: the `ModelSpec` of the network (an MLP, a U-Net, a normalizing flow, and
  fastode's encoder);
- `optimizer`: the `OptimizerSpec` (Adam(W), learning-rate schedule, clipping);
- `engine`: the `EngineSpec` of the sharded step (devices, layout, precision, coupling
  scope, batch, steps per call, EMA);
- `loop`: the `LoopSpec` of the driver (steps, logging, checkpoints, the length of a part of a call);
- `teacher`: the `TeacherSpec` of a distilling method ("nfm", "reflow"), else None.

Everything under `fm_jax.train` takes these pieces; only `train()` and `load_run` see the
config, which is still what a workdir saves (`config.json`). Each error names the field
and the fix, and is raised before anything is compiled or written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import ml_collections

from fm_jax import data
from fm_jax.losses import check_label_dropout
from fm_jax.models import transformer, unet
from fm_jax.models.flows import FLOW_FIELDS
from fm_jax.solvers import SolverSpec
from fm_jax.train.methods import METHODS, LossSpec, Method, build_loss, get_method
from fm_jax.train.sharding import LAYOUTS
from fm_jax.train.state import LR_DECAYS, NETWORKS, OPTIMIZERS
from fm_jax.train.step import COUPLING_SCOPES, PRECISIONS

__all__ = [
    "DataSpec",
    "EngineSpec",
    "ImageData",
    "LoopSpec",
    "ModelSpec",
    "OptimizerSpec",
    "RunSpec",
    "TeacherSpec",
    "is_unset",
    "resolve_defaults",
]


def is_unset(value) -> bool:
    """Whether a config value is left to the method's default: None, or NaN in a float field
    (a config file writes `float("nan")` so that the field keeps its type, and the command line
    still parses `--config.sigma=0.5` as a float)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def resolve_defaults(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, dict]:
    """(a copy of `config` with the method's defaults filled in, {field: value} of those applied).

    Each field of `Method.defaults` (`fm_jax.train.methods`) that the config leaves unset
    (`is_unset`, or absent) takes the method's value; a value the config sets wins. The copy is
    what a run records (`config.json`), so the values it trained with can be read back.
    """
    method = METHODS[config.method]
    resolved = ml_collections.ConfigDict(config.to_dict())
    applied = {}
    for field, value in method.defaults.items():
        if is_unset(resolved.get(field)):
            resolved[field] = value
            applied[field] = value
    return resolved, applied


def _positive(config: ml_collections.ConfigDict, *fields: str) -> None:
    for field in fields:
        if config[field] < 1:
            raise ValueError(f"config.{field} must be a positive integer, got {config[field]}.")


@dataclasses.dataclass(frozen=True)
class ImageData:
    """An image dataset's settings (`config.data`): TFDS name and directory, splits, augmentation."""

    name: str
    dir: str | None
    split: str
    eval_split: str
    flip: bool
    dequantize: bool
    num_threads: int


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a run trains between: `source` and `target` specs (`fm_jax.data`), the shape of
    one example, an image dataset's settings (None for densities), and the number of classes
    the network is conditioned on (0: unconditional); for a discrete flow, the `levels` each
    pixel is quantized to (its tokens: level = round(u (levels - 1) / 255) of the 8-bit value u;
    0: not tokens)."""

    source: str
    target: str
    shape: tuple[int, ...]
    image: ImageData | None = None
    num_classes: int = 0
    levels: int = 0

    @property
    def length(self) -> int:
        """The number of values of one example (tokens of a discrete flow)."""
        return math.prod(self.shape)

    @property
    def dir(self) -> str | None:
        return self.image.dir if self.image else None

    def densities(self) -> tuple[data.Density, data.Density]:
        """The (source, target) samplers of density specs (`fm_jax.data.densities`)."""
        return data.densities(self.source, self.target)

    def fingerprints(self) -> dict:
        """{"source", "target"}: what identifies the data (`fm_jax.data.fingerprint`)."""
        return {
            name: data.fingerprint(spec, self.dir) for name, spec in (("source", self.source), ("target", self.target))
        }

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, method: Method) -> DataSpec:
        if method.model == "tokens" and not data.is_image_spec(config.target):
            raise ValueError(
                f"Method {method.name!r} is a discrete flow over an image dataset's quantized pixels; the target "
                f"is {config.target!r}: use a tfds:NAME target (--config tokens)."
            )
        if not data.is_image_spec(config.target):
            source, _ = data.densities(config.source, config.target)  # names, point files (shape, NaN), dimensions
            if config.get("conditional", False):
                raise ValueError(
                    f"config.conditional needs an image dataset with labels (tfds:NAME); the target is "
                    f"{config.target!r}: set --config.conditional=false."
                )
            return cls(config.source, config.target, (source.dim,))
        if config.source != "normal":
            raise ValueError(f"Image targets are generated from the 'normal' source; got source {config.source!r}.")
        if "data" not in config:
            raise ValueError(
                "An image target needs a config.data section; start from the packaged images config (--config images, fm_jax/configs/images.py)."
            )
        d = config.data
        image = ImageData(
            data.image_name(config.target), d.dir or None, d.split, d.eval_split, d.flip, d.dequantize, d.num_threads
        )
        info = data.image_info(image.name, image.dir)  # prepared (or prepares an offline dataset), else says how
        if image.split not in info.splits:
            raise ValueError(f"{info.name} has no split {image.split!r}; its splits are {sorted(info.splits)}.")
        conditional = config.get("conditional", False)
        if conditional and info.num_classes < 1:
            raise ValueError(
                f"config.conditional is set but {info.name} has no class labels: set --config.conditional=false."
            )
        if conditional and method.model == "flow":
            raise ValueError("The normalizing flows here are unconditional: set --config.conditional=false.")
        levels = 0
        if method.model == "tokens":
            levels = d.get("levels", 0)
            if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 256:
                raise ValueError(
                    f"config.data.levels must be an integer in [2, 256] (the values a pixel token takes: 17 for "
                    f"digits' grey levels, 2 for binarized MNIST), got {levels!r}."
                )
        return cls(
            config.source, config.target, tuple(info.shape), image, info.num_classes if conditional else 0, levels
        )


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The network: `kind` "mlp" (width, depth, activation), "unet" (the preset's settings,
    `config.model.dropout` where given), "transformer" (a preset's settings) or "flow" (`Flow`
    keyword arguments of `config.flow`); on examples of `shape`, conditioned on `num_classes`
    classes (0: none); fastode's encoder (`encoder`: width, depth, preset) where the method
    learns its coupling. A discrete flow's network ("transformer", or "unet": a `TokenUNet` on
    the image's grid) predicts `vocab_size` values from tokens of `num_states` values."""

    kind: str
    shape: tuple[int, ...]
    num_classes: int = 0
    width: int = 64
    depth: int = 3
    activation: str = "selu"
    unet: dict = dataclasses.field(default_factory=dict)
    flow: dict = dataclasses.field(default_factory=dict)
    encoder: dict | None = None
    transformer: dict = dataclasses.field(default_factory=dict)
    vocab_size: int = 0
    num_states: int = 0

    @property
    def dropout(self) -> bool:
        """Whether the network trains with dropout (a U-Net with dropout > 0): the step then passes it a key."""
        return self.kind == "unet" and self.unet["dropout"] > 0

    def flow_passes(self) -> int:
        """Sequential network passes of one normalizing-flow sample."""
        if self.flow["kind"] == "realnvp":
            return self.flow["num_layers"]
        if len(self.shape) == 3:  # image patches
            tokens = (self.shape[0] // self.flow["patch"]) * (self.shape[1] // self.flow["patch"])
        else:
            tokens = self.shape[0] // self.flow["token_dim"]
        return self.flow["num_layers"] * tokens

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, method: Method, data_spec: DataSpec) -> ModelSpec:
        shape, classes = data_spec.shape, data_spec.num_classes
        if method.model == "flow":
            flow = {k: v for k, v in config.flow.to_dict().items() if k != "noise"}  # the noise is the loss's
            unknown = sorted(set(flow) - set(FLOW_FIELDS))
            if unknown:
                raise ValueError(f"Unknown config.flow fields {unknown}; the fields are {sorted(FLOW_FIELDS)}.")
            return cls("flow", shape, flow=flow)
        kind = config.model.get("kind", "mlp")
        NETWORKS[kind]  # a known kind, or the error that lists them
        if (kind == "transformer" and method.model != "tokens") or (kind == "mlp" and method.model == "tokens"):
            raise ValueError(
                "A discrete flow (dfm_*) predicts tokens with --config.model.kind=transformer (or unet: a U-Net over "
                f"the pixels' one-hot tokens), and the transformer is for discrete flows only: method {method.name!r} "
                f"with model.kind {kind!r} (--config tokens)."
            )
        if method.model == "tokens":
            states = data_spec.levels + (method.token_source == "mask")
            if kind == "unet":  # a `TokenUNet` on the image's grid
                settings = unet.PRESETS[config.model.preset] | (
                    {"dropout": config.model.dropout} if "dropout" in config.model else {}
                )
                return cls(
                    "unet", data_spec.shape, classes, unet=settings, vocab_size=data_spec.levels, num_states=states
                )
            settings = transformer.PRESETS[config.model.preset]
            return cls(
                "transformer",
                (data_spec.length,),
                classes,
                transformer=settings,
                vocab_size=data_spec.levels,
                num_states=states,
            )
        if data_spec.image is not None and kind == "mlp":
            raise ValueError(f"The target {config.target!r} is an image dataset: use --config.model.kind=unet.")
        if data_spec.image is None and kind == "unet":
            raise ValueError(
                f"The U-Net is for image targets (tfds:NAME); the target is {config.target!r}: use model.kind=mlp."
            )
        encoder = None
        if method.encoder:
            encoder = {"width": config.encoder.width, "depth": config.encoder.depth, "preset": config.encoder.preset}
        if kind == "unet":
            settings = unet.PRESETS[config.model.preset] | (
                {"dropout": config.model.dropout} if "dropout" in config.model else {}
            )
            return cls("unet", shape, classes, unet=settings, encoder=encoder)
        return cls(
            "mlp", shape, classes, config.model.width, config.model.depth, config.model.activation, encoder=encoder
        )


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """Adam or AdamW at `learning_rate`, after a linear warmup of `warmup_steps`, optionally
    decayed linearly to 0 at `num_steps` (`lr_decay="polynomial"`), clipped by global norm
    `grad_clip` (0: off)."""

    name: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_decay: str = "constant"
    grad_clip: float = 0.0
    num_steps: int = 1

    def __post_init__(self):
        OPTIMIZERS[self.name], LR_DECAYS[self.lr_decay]  # known names, or the errors that list them
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("config.warmup_steps and config.grad_clip must be >= 0 (0 turns them off).")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"config.learning_rate must be positive, got {self.learning_rate}.")

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> OptimizerSpec:
        return cls(
            config.optimizer,
            config.learning_rate,
            config.weight_decay,
            config.get("warmup_steps", 0),
            config.get("lr_decay", "constant"),
            config.get("grad_clip", 0.0),
            config.num_steps,
        )


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """The sharded step: `num_devices` (0: all), the parameter layout, the network's
    precision, the coupling scope and group (0: each device's batch), the global batch, the
    steps one call runs, and the EMA decay (0: off)."""

    num_devices: int = 0
    param_layout: str = "replicated"
    precision: str = "float32"
    coupling_scope: str = "global"
    coupling_group: int = 0
    batch_size: int = 256
    steps_per_call: int = 1
    ema_decay: float = 0.0

    def __post_init__(self):
        LAYOUTS[self.param_layout], PRECISIONS[self.precision]  # known names, or the errors that list them
        if self.coupling_scope not in COUPLING_SCOPES:
            raise ValueError(f"Unknown coupling_scope {self.coupling_scope!r}; choose one of {COUPLING_SCOPES}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"config.ema_decay must be in [0, 1) (0 turns EMA off), got {self.ema_decay}.")

    def group(self, devices: int) -> int:
        """Examples per coupling group on `devices` devices: `coupling_group`, or the per-device batch when 0."""
        return self.coupling_group or self.batch_size // devices

    def check_devices(self, devices: int) -> None:
        """The batch and the coupling groups split over `devices` devices."""
        if self.batch_size % devices:
            raise ValueError(
                f"batch_size {self.batch_size} does not split over {devices} devices: "
                f"use a multiple of {devices} or set --config.mesh.num_devices."
            )
        group = self.group(devices)
        if self.coupling_scope == "group" and (group < 1 or (self.batch_size // devices) % group):
            raise ValueError(
                f"coupling_group {self.coupling_group} does not divide the per-device batch "
                f"{self.batch_size // devices}: choose a divisor (0 couples each device's batch as one group)."
            )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> EngineSpec:
        return cls(
            config.mesh.num_devices,
            config.mesh.param_layout,
            config.precision,
            config.coupling_scope,
            config.coupling_group,
            config.batch_size,
            config.steps_per_call,
            config.ema_decay,
        )


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """The driver: `num_steps`, a log line every `log_every` steps, a checkpoint every
    `checkpoint_every` (0: at the end only) keeping `keep_checkpoints`, parts of a call of
    about `max_call_s` seconds (0: never cut), and an evaluation every `eval_every` steps (0:
    none; `fm_jax.train.metrics_log.PeriodicEval`), at the end of the call of `steps_per_call`
    steps that reaches each multiple."""

    def eval_at(self, step: int, steps_per_call: int) -> bool:
        """Whether the run evaluates after `step`: at the end of a call that reached a multiple of `eval_every`."""
        if not self.eval_every or step % steps_per_call:
            return False
        return step // self.eval_every > (step - steps_per_call) // self.eval_every

    num_steps: int
    log_every: int
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    max_call_s: float = 5.0
    eval_every: int = 0

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> LoopSpec:
        _positive(config, "num_steps", "batch_size", "steps_per_call", "log_every")
        k = config.steps_per_call
        if config.num_steps % k or config.log_every % k:
            raise ValueError(
                f"num_steps ({config.num_steps}) and log_every ({config.log_every}) must be multiples of "
                f"steps_per_call ({k}): set --config.steps_per_call to a common divisor."
            )
        if config.checkpoint_every < 0 or config.checkpoint_every % k:
            raise ValueError(
                f"checkpoint_every ({config.checkpoint_every}) must be a multiple of steps_per_call "
                f"({k}), or 0 to checkpoint only at the end."
            )
        if config.keep_checkpoints < 1:
            raise ValueError(f"config.keep_checkpoints must be at least 1, got {config.keep_checkpoints}.")
        max_call_s = config.get("max_call_s", 5.0)
        if not max_call_s >= 0:
            raise ValueError(f"config.max_call_s must be >= 0 (0 never cuts a train call), got {max_call_s}.")
        eval_every = config.get("eval_every", 0)
        if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
            raise ValueError(
                f"config.eval_every must be an integer >= 0 (steps between evaluations; 0: none), got {eval_every!r}."
            )
        return cls(
            config.num_steps, config.log_every, config.checkpoint_every, config.keep_checkpoints, max_call_s, eval_every
        )


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """The teacher of "nfm" / "reflow": a finished run in `workdir` (checked to fit), for
    reflow integrated `direction` with `solver`; `precompute` > 0 maps that many pairs once,
    before training (densities only)."""

    workdir: pathlib.Path
    direction: str = "backward"
    solver: SolverSpec = SolverSpec()
    precompute: int = 0

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, method: Method) -> TeacherSpec:
        from fm_jax.distillation import REFLOW_DIRECTIONS

        t = config.teacher
        if not t.workdir:
            raise ValueError(
                f"Method {method.name!r} distils a teacher run: set --config.teacher.workdir=W "
                f"(a {'flow' if method.teacher == 'flow' else 'flow-matching'} run on {config.target!r})."
            )
        saved = pathlib.Path(t.workdir).expanduser() / "config.json"
        if not saved.is_file():
            raise ValueError(
                f"config.teacher.workdir {t.workdir} holds no trained run (no config.json): train the teacher first."
            )
        teacher = ml_collections.ConfigDict(json.loads(saved.read_text()))
        if teacher.target != config.target:
            raise ValueError(
                f"The teacher in {t.workdir} was trained on {teacher.target!r}, this run on "
                f"{config.target!r}: use a teacher of the same data."
            )
        kind = get_method(teacher.method, teacher.source).model
        if method.teacher == "flow" and kind != "flow":
            raise ValueError(
                f"{method.name} needs a normalizing-flow teacher (method 'flow'); {t.workdir} is a "
                f"{teacher.method!r} run."
            )
        if method.teacher == "field" and (kind != "field" or teacher.source != "normal"):
            raise ValueError(
                f"{method.name} needs a flow-matching teacher from the 'normal' source; {t.workdir} is a "
                f"{teacher.method!r} run from {teacher.source!r}."
            )
        if method.teacher == "field" and teacher.get("conditional", False) != config.get("conditional", False):
            raise ValueError(f"{method.name}'s teacher and student must both be class-conditional, or neither.")
        if t.direction not in REFLOW_DIRECTIONS:
            raise ValueError(f"Unknown config.teacher.direction {t.direction!r}; choose one of {REFLOW_DIRECTIONS}.")
        precompute = t.get("precompute", 0)
        if precompute < 0:
            raise ValueError(
                f"config.teacher.precompute must be >= 0 (0 maps every batch in the step), got {precompute}."
            )
        if precompute and data.is_image_spec(config.target):
            raise ValueError(
                "config.teacher.precompute is for densities; an image run maps each batch in the step: "
                "set --config.teacher.precompute=0."
            )
        solver = SolverSpec(t.solver, t.steps or None, t.rtol, t.atol)
        return cls(pathlib.Path(t.workdir).expanduser(), t.direction, solver, precompute)


def _dfm_settings(config: ml_collections.ConfigDict, data_spec: DataSpec) -> dict:
    """The LossSpec fields of a discrete flow: the vocabulary, `config.dfm` (objective, scheduler, n)."""
    from fm_jax import discrete

    dfm = config.get("dfm") or ml_collections.ConfigDict()
    objective, scheduler, n = dfm.get("objective", "ce"), dfm.get("scheduler", "polynomial"), dfm.get("n", 1.0)
    if objective not in discrete.OBJECTIVES:
        raise ValueError(f"Unknown config.dfm.objective {objective!r}; choose one of {list(discrete.OBJECTIVES)}.")
    discrete.SCHEDULERS[scheduler]  # a known name, or the error that lists them
    if not n > 0:
        raise ValueError(f"config.dfm.n (the polynomial scheduler's exponent) must be positive, got {n}.")
    return {"vocab_size": data_spec.levels, "objective": objective, "scheduler": scheduler, "scheduler_n": float(n)}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A whole training config, resolved and checked (see the module docstring)."""

    method: Method
    loss: LossSpec
    data: DataSpec
    model: ModelSpec
    optimizer: OptimizerSpec
    engine: EngineSpec
    loop: LoopSpec
    teacher: TeacherSpec | None
    seed: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, teacher: bool = True) -> RunSpec:
        """Resolve and check a config; `teacher=False` skips reading the teacher run (a finished run read back).
        Fields the config leaves unset take the method's defaults (`resolve_defaults`)."""
        method = METHODS[config.method]
        config, _ = resolve_defaults(config)
        if is_unset(config.get("sigma")):
            raise ValueError(f"config.sigma is unset and method {method.name!r} has no default: set --config.sigma.")
        if not (config.sigma >= 0 and math.isfinite(config.sigma)):
            raise ValueError(f"config.sigma must be >= 0 (the path's noise scale), got {config.sigma}.")
        data_spec = DataSpec.from_config(config, method)
        method.check_source(config.source)
        model = ModelSpec.from_config(config, method, data_spec)
        loss = LossSpec(
            sigma=config.sigma,
            ot_solver=LossSpec.ot_solver if is_unset(config.get("ot_solver")) else config.ot_solver,
            sinkhorn_online=config.get("sinkhorn_online", 0),
            label_dropout=config.get("label_dropout", 0.0) if data_spec.num_classes else 0.0,
            null_label=data_spec.num_classes or None,
            beta=config.get("beta", 1.0),
            flow_noise=config.flow.noise if method.model == "flow" else 0.0,
            **(_dfm_settings(config, data_spec) if method.model == "tokens" else {}),
        )
        if method.encoder and not loss.beta > 0:
            raise ValueError(f"config.beta must be positive (the weight of fastode's KL term), got {loss.beta}.")
        if method.model == "flow":
            if config.precision != "float32":
                raise ValueError(
                    "A normalizing flow trains in float32 (its log-determinant): set --config.precision=float32."
                )
            if not config.flow.noise >= 0:
                raise ValueError(f"config.flow.noise must be >= 0, got {config.flow.noise}.")
        check_label_dropout(config.get("label_dropout", 0.0))
        if method.model == "tokens" and config.get("eval_every", 0):
            raise ValueError(
                "Periodic evaluation during training is for continuous flows: set --config.eval_every=0 "
                "(`fm-jax eval` and `fm-jax nll` score a finished discrete run)."
            )
        if method.coupling is not None:  # the loss is built once here, so that its own checks run before any compile
            build_loss(method, loss, config.source)
        teacher_spec = TeacherSpec.from_config(config, method) if method.teacher and teacher else None
        return cls(
            method,
            loss,
            data_spec,
            model,
            OptimizerSpec.from_config(config),
            EngineSpec.from_config(config),
            LoopSpec.from_config(config),
            teacher_spec,
            config.seed,
        )
