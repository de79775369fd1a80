"""The sharded train step: `steps(state, batches) -> (state, metrics)`, one jitted call running
`K` optimizer steps (a `fori_loop`, or any consecutive part of them) on a device mesh, shardings explicit, the state's buffers donated.

`batches` holds K batches, each leaf of shape (K, batch, ...), split over the mesh's "data"
axis along the example axis; the state is laid out by `sharding.state_shardings`. Step s
draws its keys from `fold_in(state.key, s)`; the loss draws t and the path noise for the
whole global batch at once, so with JAX's partitionable threefry the numbers are the same on
any number of devices, and the losses agree up to floating-point reassociation.

Minibatch couplings (Tong et al. 2024) pair x0 with x1 within a set of examples:

- `coupling_scope="global"`: the whole global batch is coupled at once, as on one device.
  An exact solve costs O(n^3) in the global batch n and runs on the gathered batch; a dense
  Sinkhorn solve is split over the devices by the rows of its cost matrix, and a teacher's
  map by examples (`Coupling.layout`). It is what a single-device run computes, at any
  device count.
- `coupling_scope="group"`: the global batch is cut into groups of `coupling_group`
  consecutive examples, each coupled alone inside `jax.shard_map` (each device couples the
  groups it holds; no communication). With the group equal to the per-device batch this is
  per-device OT; a fixed group size gives the same result on any device count. Group g's
  key is `fold_in(key, g)`, g counted over the global batch.

A teacher coupling (NFM, reflow: `distillation.TeacherCoupling`) maps the batch inside the step
too; its parameters are an argument of the program, replicated on the mesh once
(`TrainSteps`), so the compile does not grow with the teacher and other teacher parameters
of the same shapes reuse it.

`precision="bfloat16"` runs the network in bf16 (params and x_t cast on the way in, the
output cast back to f32), while the parameters, gradients, optimizer state and EMA stay f32.
The time stays f32: in bf16, 1000 t (the U-Net's time scale) is off by up to 2 units.

`dropout=True` (a U-Net with dropout) passes the network `dropout_key=fold_in(k_loss,
DROPOUT_STREAM)` at each step, so the other draws of the step do not depend on it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from fm_jax.couplings import Coupling, Independent
from fm_jax.distillation import TeacherCoupling
from fm_jax.losses import CFMLoss, FlowNLLLoss
from fm_jax.registry import Registry
from fm_jax.train.sharding import DATA, batch_sharding, place, replicated
from fm_jax.train.state import TrainState

if TYPE_CHECKING:
    from fm_jax.train.spec import EngineSpec

__all__ = [
    "COUPLING_SCOPES",
    "PRECISIONS",
    "TrainSteps",
    "couple_global",
    "couple_in_groups",
    "ema_decay_at",
    "ema_initial_weight",
    "make_train_step",
    "mixed_precision",
    "split_coupling",
]

COUPLING_SCOPES = ("global", "group")
DROPOUT_STREAM = 0xD50
PRECISIONS: Registry[Any] = Registry("precision", {"float32": jnp.float32, "bfloat16": jnp.bfloat16})


def mixed_precision(apply: Callable, precision: str) -> Callable:
    """`apply` computing in `precision`; params and outputs stay float32 outside it."""
    dtype = jnp.dtype(PRECISIONS[precision])
    if dtype == jnp.float32:
        return apply

    def cast(tree):
        return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

    def apply_low(params, t, x, cond=None, **kwargs):
        out = apply(cast(params), t, x.astype(dtype), cond, **kwargs)
        return out.astype(x.dtype)

    return apply_low


def ema_decay_at(decay: float, step):
    """The EMA decay of the update made at step `step` (the step count before it), with warm-up:

        decay_t = min(decay, (1 + t) / (10 + t)),

    so that the average forgets the random initial parameters quickly at first (0.1 at t = 0,
    0.5 at t = 8, 0.9 at t = 81) and decays at `decay` once (1 + t) / (10 + t) reaches it (t =
    9,989 for 0.999). A Python int step gives a Python float; an array step (inside jit) an array.
    """
    if isinstance(step, (int, np.integer)):
        return min(float(decay), (1.0 + step) / (10.0 + step))
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_initial_weight(decay: float, steps: int) -> float:
    """The weight the initial parameters still hold in the EMA after `steps` updates with decay
    `decay` and the warm-up of `ema_decay_at`: prod_{t < steps} decay_t.

    While (1 + t) / (10 + t) < decay the product telescopes, prod_{t < m} (1 + t) / (10 + t) =
    9! m! / (m + 9)!, and each later update multiplies by `decay`. (Without the warm-up it
    would be decay^steps: 0.999^300 = 0.74.) For `decay` 0 the product is 0 after any update (a
    run with `ema_decay = 0` keeps no EMA: its readers take the parameters).
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1) (config.ema_decay), got {decay}.")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    if steps == 0:
        return 1.0
    if decay == 0.0:
        return 0.0
    # (1 + t) / (10 + t) < decay  <=>  t < (10 decay - 1) / (1 - decay)
    warm = min(steps, max(0, math.ceil((10.0 * decay - 1.0) / (1.0 - decay))))
    log_warm = math.lgamma(10.0) + math.lgamma(warm + 1.0) - math.lgamma(warm + 10.0)
    return math.exp(log_warm + (steps - warm) * math.log(decay))


def _pairs(batch: dict) -> dict:
    return {name: batch[name] for name in ("x0", "x1", "label") if name in batch}


def couple_global(coupling: Coupling, key: jax.Array, batch: dict, mesh: Mesh, with_stats: bool = False):
    """Couple the whole global batch at once, laid out as `coupling.layout` says, then split
    over the devices again. `with_stats=True` returns (batch, the coupling's stats)
    (`Coupling.call_with_stats`).

    "gathered" puts the whole batch on every device first; the explicit gather also keeps a
    host solver (`ExactOT(solver="network_simplex")`) off a partially sharded operand, which
    XLA would otherwise gather inside the callback's schedule. "rows" gathers x1 and the
    labels and keeps x0 split, so that the partitioner splits the cost matrix by rows (dense
    Sinkhorn: n^2 / D cost entries and iterations per device). "examples" gathers nothing.
    """
    pairs = _pairs(batch)
    if coupling.layout == "gathered":
        pairs = jax.lax.with_sharding_constraint(pairs, replicated(mesh))
    elif coupling.layout == "rows":
        pairs = jax.lax.with_sharding_constraint(
            pairs, {name: batch_sharding(mesh) if name == "x0" else replicated(mesh) for name in pairs}
        )
    (x0, x1, labels), stats = coupling.call_with_stats(key, pairs["x0"], pairs["x1"], pairs.get("label"))
    coupled = {"x0": x0, "x1": x1} | ({} if labels is None else {"label": labels})
    batch = batch | jax.lax.with_sharding_constraint(coupled, batch_sharding(mesh))
    return (batch, stats) if with_stats else batch


def couple_in_groups(coupling: Coupling, key: jax.Array, batch: dict, group: int, mesh: Mesh, with_stats: bool = False):
    """Couple each run of `group` consecutive examples on its own, on the device that holds it.
    `with_stats=True` returns (batch, the coupling's stats averaged over the groups)."""
    pairs = _pairs(batch)

    def local(key, pairs):
        per_device = pairs["x1"].shape[0]
        count = per_device // group
        first = jax.lax.axis_index(DATA) * count
        keys = jax.vmap(lambda g: jax.random.fold_in(key, g))(first + jnp.arange(count))
        grouped = jax.tree.map(lambda x: x.reshape(count, group, *x.shape[1:]), pairs)
        (x0, x1, labels), stats = jax.vmap(coupling.call_with_stats)(
            keys, grouped["x0"], grouped["x1"], grouped.get("label")
        )
        out = {"x0": x0, "x1": x1} | ({} if labels is None else {"label": labels})
        return jax.tree.map(lambda x: x.reshape(per_device, *x.shape[2:]), out), stats  # stats: (count,) each

    coupled, stats = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(DATA)),
        out_specs=PartitionSpec(DATA),
        check_vma=False,  # ott-jax's Sinkhorn does not type its values' device variance
    )(key, pairs)
    batch = batch | coupled
    return (batch, jax.tree.map(jnp.mean, stats)) if with_stats else batch


def split_coupling(loss: CFMLoss | FlowNLLLoss) -> tuple[Coupling, CFMLoss | FlowNLLLoss]:
    """(the loss's coupling, the loss regressing on the pairs as given): the step couples the
    sharded batch itself. A normalizing flow's likelihood and a discrete flow's loss see the data alone."""
    if not isinstance(loss, CFMLoss):
        return Independent(), loss
    return loss.coupling, dataclasses.replace(loss, coupling=Independent())


def make_train_step(
    loss: CFMLoss | FlowNLLLoss,
    apply: Callable,
    optimizer: optax.GradientTransformation,
    engine: EngineSpec,
    *,
    mesh: Mesh,
    state_sharding: Any,
    dropout: bool = False,
) -> TrainSteps:
    """The jitted `steps(state, batches) -> (state, metrics)`; the state is donated.

    `metrics` maps each name to its K values, one per step: "loss", "grad_norm" (the global L2
    norm of the gradient, before any clipping), every other metric the loss returns (fastode's
    "mse" and "kl", ...) and the coupling's stats (SB-CFM's "sinkhorn_converged",
    "sinkhorn_epsilon" and "sinkhorn_iterations"). `engine` gives the EMA decay (warmed up,
    `ema_decay_at`), the coupling scope and group, and the network's precision.
    """
    apply = mixed_precision(apply, engine.precision)
    ema_decay, coupling_scope, coupling_group = engine.ema_decay, engine.coupling_scope, engine.group(mesh.devices.size)
    # The step couples the batch itself (globally or per group), then regresses on the pairs.
    coupling, step_loss = split_coupling(loss)
    coupled = not isinstance(coupling, Independent)
    # A teacher's parameters enter the jitted step as an argument, laid out on the mesh once, so
    # that one compiled step serves any teacher of the same shapes; the step keeps no other copy.
    teacher = coupling if isinstance(coupling, TeacherCoupling) else None
    unbound = coupling if teacher is None else dataclasses.replace(teacher, params=None)

    def one_step(pairing: Coupling, state: TrainState, batch: dict):
        k_pair, k_loss = jax.random.split(jax.random.fold_in(state.key, state.step))
        stats: dict = {}
        if coupled and coupling_scope == "group":
            batch, stats = couple_in_groups(pairing, k_pair, batch, coupling_group, mesh, with_stats=True)
        elif coupled:
            batch, stats = couple_global(pairing, k_pair, batch, mesh, with_stats=True)
        net = apply
        if dropout:
            net = functools.partial(apply, dropout_key=jax.random.fold_in(k_loss, DROPOUT_STREAM))
        (value, metrics), grads = jax.value_and_grad(lambda p: step_loss(net, p, k_loss, batch), has_aux=True)(
            state.params
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Without EMA the EMA buffers pass through untouched (donated, so aliased: no work);
        # readers take the params then (`fm_jax.train.workdir.load_run`).
        if ema_decay > 0:
            ema = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay_at(ema_decay, state.step))
        else:
            ema = state.ema_params
        metrics = {name: jnp.asarray(v, jnp.float32) for name, v in (metrics | stats).items()}
        metrics |= {"loss": value.astype(jnp.float32), "grad_norm": optax.tree.norm(grads).astype(jnp.float32)}
        return TrainState(state.step + 1, params, opt_state, ema, state.key), metrics

    def steps(state: TrainState, batches: dict, teacher_params: Any = None, begin=0, count=None):
        pairing = unbound if teacher_params is None else dataclasses.replace(unbound, params=teacher_params)
        step = functools.partial(one_step, pairing)
        calls = jax.tree.leaves(batches)[0].shape[0]
        if calls == 1:
            # One step per call runs outside a loop: XLA:CPU runs convolutions inside a while
            # loop ~20x slower than outside one (a U-Net step on 8x8 digits: 6.5 s vs 0.33 s),
            # so convolutional models train with steps_per_call = 1 on CPUs.
            state, metrics = step(state, jax.tree.map(lambda x: x[0], batches))
            return state, jax.tree.map(lambda v: v[None], metrics)

        # Steps begin .. begin + count - 1 of the K batches, the bounds traced: one program
        # runs a whole call or any part of it with the same loop body, so a call cut into
        # parts (to honour a stop within seconds) gives the same numbers, bit for bit.
        def body(i, carry):
            state, values = carry
            state, metrics = step(
                state, jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), batches)
            )
            return state, jax.tree.map(lambda all_, v: all_.at[i].set(v), values, metrics)

        # The metrics' names, from the step's abstract evaluation (no computation).
        shapes = jax.eval_shape(step, state, jax.tree.map(lambda x: x[0], batches))[1]
        values = jax.tree.map(lambda v: jnp.zeros((calls,), v.dtype), shapes)
        end = begin + (calls if count is None else count)
        return jax.lax.fori_loop(begin, end, body, (state, values))

    jitted = jax.jit(
        steps,
        in_shardings=(state_sharding, batch_sharding(mesh, leading_axes=1), replicated(mesh), None, None),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=0,
    )
    if teacher is None:
        return TrainSteps(jitted)
    return TrainSteps(jitted, place(teacher.params, jax.tree.map(lambda _: replicated(mesh), teacher.params)))


@dataclasses.dataclass(frozen=True)
class TrainSteps:
    """The jitted `steps(state, batches, begin=0, count=K) -> (state, metrics)` with a
    teacher's parameters bound (an argument of the program, laid out on the mesh once; None
    without a teacher). It runs steps begin .. begin + count - 1 of the K batches; `metrics`
    maps each name ("loss", "grad_norm", ...: see `make_train_step`) to K values, 0 for the
    steps not run."""

    jitted: Callable
    teacher_params: Any = None

    def __call__(self, state: TrainState, batches: dict, begin: int = 0, count: int | None = None):
        calls = jax.tree.leaves(batches)[0].shape[0]
        return self.jitted(
            state, batches, self.teacher_params, _index(begin), _index(calls if count is None else count)
        )

    def compile(self, state: TrainState, batches: dict) -> Callable:
        """Compiled ahead of time for these shapes and shardings: `compiled(state, batches, begin=0, count=K)`."""
        calls = jax.tree.leaves(batches)[0].shape[0]
        compiled = self.jitted.lower(state, batches, self.teacher_params, _index(0), _index(calls)).compile()
        return lambda state, batches, begin=0, count=calls: compiled(
            state, batches, self.teacher_params, _index(begin), _index(count)
        )


def _index(n: int) -> np.ndarray:
    return np.asarray(n, np.int32)
