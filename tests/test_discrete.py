"""Discrete flow matching against closed forms: a factorized categorical target (its posterior
is known in closed form) and a small joint target enumerated in full (K = 3, L = 4)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm_jax as fm

dfm = fm.discrete
K, L = 4, 3
MARGINALS = np.array([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])  # (L, K)
ENTROPY = float(-np.sum(MARGINALS * np.log(MARGINALS)))


def factorized_posterior(path, marginals=MARGINALS):
    """The exact posterior logits log p(x1^i | x_t) of independent tokens with `marginals` (L, K)."""
    logp = jnp.log(jnp.asarray(marginals, jnp.float32))

    def posterior(t, x_t):
        prior = jnp.broadcast_to(logp, (*x_t.shape, path.vocab_size))
        if path.source == "mask":  # masked tokens: the prior; the rest are carried over
            return prior
        # uniform source: p(x1 = y | x_t = z) ∝ p(y) (kappa 1{y = z} + (1 - kappa) / K)
        kappa = path.scheduler(t)[:, None, None]
        same = jax.nn.one_hot(x_t, path.vocab_size)
        return prior + jnp.log(kappa * same + (1.0 - kappa) / path.vocab_size)

    return posterior


# A joint target over all 3^4 sequences, far from factorized (neighbours tend to agree).
JOINT_K, JOINT_L = 3, 4
SEQUENCES = np.array(list(itertools.product(range(JOINT_K), repeat=JOINT_L)))
_energy = np.sum(SEQUENCES[:, 1:] == SEQUENCES[:, :-1], axis=1) * 1.2 + (SEQUENCES[:, 0] == 2) * 0.8
JOINT = np.exp(_energy) / np.exp(_energy).sum()


def joint_posterior(path):
    """The exact per-token posterior of the masked path to JOINT, by enumeration."""
    seqs = jnp.asarray(SEQUENCES)
    onehot = jax.nn.one_hot(seqs, JOINT_K)  # (S, L, K)

    def posterior(t, x_t):
        agree = jnp.all((x_t[:, None, :] == path.mask_id) | (x_t[:, None, :] == seqs[None]), axis=-1)
        weights = agree * jnp.asarray(JOINT, jnp.float32)[None]  # (batch, S)
        marginal = jnp.einsum("bs,slk->blk", weights, onehot) / jnp.sum(weights, axis=1)[:, None, None]
        return jnp.log(jnp.maximum(marginal, 1e-30))

    return posterior


def tv(samples, probs, k):
    """Total variation between the per-position empirical marginals of samples (n, L) and probs (L, k)."""
    counts = np.stack([np.bincount(samples[:, i], minlength=k) for i in range(samples.shape[1])]) / len(samples)
    return 0.5 * np.abs(counts - probs).sum(axis=1).max()


def joint_tv(samples):
    index = samples @ (JOINT_K ** np.arange(JOINT_L)[::-1])
    counts = np.bincount(index, minlength=len(JOINT)) / len(samples)
    return 0.5 * np.abs(counts - JOINT).sum()


@pytest.mark.parametrize("scheduler", [dfm.Polynomial(1.0), dfm.Polynomial(2.5), dfm.Cosine()], ids=repr)
def test_schedulers_run_from_0_to_1_with_autodiff_derivatives_and_inverses(scheduler):
    t = jnp.linspace(0.05, 0.95, 19)
    assert float(scheduler(0.0)) == 0.0 and float(scheduler(1.0)) == pytest.approx(1.0)
    h = 1e-3
    fd = (scheduler(t + h) - scheduler(t - h)) / (2 * h)
    np.testing.assert_allclose(scheduler.derivative(t), fd, rtol=1e-3)
    np.testing.assert_allclose(scheduler.inverse(scheduler(t)), t, atol=1e-5)
    assert np.all(np.diff(np.asarray(scheduler(t))) > 0)


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_path_marginals_and_the_probability_velocity_is_a_rate_matrix(source):
    path = dfm.MixturePath(K, source, dfm.Polynomial(2.0))
    key = jax.random.key(0)
    n = 200_000
    x1 = jax.random.randint(key, (n, 1), 0, K)
    x0 = path.draw_source(jax.random.key(1), x1.shape)
    for t in (0.2, 0.5, 0.8):
        x_t = path.sample(jax.random.key(2), x0, x1, jnp.full((n,), t))
        # P(x_t = x1) = kappa(t) + (1 - kappa(t)) P(x0 = x1): 1/K for the uniform source.
        kappa = t**2
        expected = kappa + (1 - kappa) * (source == "uniform") / K
        assert float(jnp.mean(x_t == x1)) == pytest.approx(expected, abs=4 * math.sqrt(0.25 / n))
    x_t = path.draw_source(jax.random.key(3), (5, L)) if source == "uniform" else jnp.full((5, L), K)
    x_t = x_t.at[0, 0].set(1)  # one token already moved
    logits = jax.random.normal(jax.random.key(4), (5, L, K))
    u = path.velocity(jnp.full((5,), 0.6), x_t, dfm.posterior_probs(path, logits, x_t))
    assert u.shape == (5, L, path.num_states)
    np.testing.assert_allclose(jnp.sum(u, axis=-1), 0.0, atol=1e-5)
    off = 1.0 - jax.nn.one_hot(x_t, path.num_states)
    assert float(jnp.min(jnp.where(off > 0, u, 0.0))) >= 0.0
    if source == "mask":  # an unmasked token stays: its row is zero
        np.testing.assert_allclose(u[0, 0], 0.0, atol=1e-7)


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_the_losses_are_minimal_at_the_exact_posterior_with_their_analytic_values(source):
    path = dfm.MixturePath(K, source)
    posterior = factorized_posterior(path)
    apply = lambda params, t, x_t, cond: posterior(t, x_t) + params
    n = 100_000
    x1 = jax.random.categorical(jax.random.key(5), jnp.log(jnp.asarray(MARGINALS)), shape=(n, L))
    batch = {"x1": x1}
    ce = dfm.dfm_loss(path)
    kl = dfm.dfm_loss(path, "kl")
    t_max = 1 - 1e-3
    value = float(jax.jit(lambda p: ce(apply, p, jax.random.key(6), batch)[0])(jnp.zeros(())))
    if source == "mask":
        # E_t [1 - kappa] H / L: a token is masked with probability 1 - t, then costs its entropy.
        assert value == pytest.approx(ENTROPY / L * (1 - t_max / 2), rel=0.01)
        # The generalized KL at the posterior: E_t [kappa'] H / L = kappa(t_max) / t_max H / L.
        kl_value = float(kl(apply, jnp.zeros(()), jax.random.key(6), batch)[0])
        assert kl_value == pytest.approx(ENTROPY / L, rel=0.02)
    else:
        # E_t sum_z p_t(z) H(p(. | z)) by quadrature over t.
        ts = (np.arange(2000) + 0.5) / 2000 * t_max
        expected = 0.0
        for t in ts:
            joint = MARGINALS[:, :, None] * (t * np.eye(K) + (1 - t) / K)[None]  # (L, y, z)
            p_z = joint.sum(1)
            post = joint / p_z[:, None, :]
            expected += np.sum(p_z * -np.sum(post * np.log(post), axis=1)) / L / len(ts)
        assert value == pytest.approx(expected, rel=0.01)
    # Any other posterior does worse, by either objective.
    perturbed = jnp.asarray(np.random.default_rng(0).normal(0, 0.5, (L, K)), jnp.float32)
    for loss in (ce, kl):
        best = float(loss(apply, jnp.zeros(()), jax.random.key(6), batch)[0])
        assert float(loss(apply, perturbed, jax.random.key(6), batch)[0]) > best + 1e-3


@pytest.mark.parametrize(
    "source, method, corrector",
    [
        ("mask", "euler", 0.0),
        ("mask", "euler", 1.0),
        ("mask", "unmask", 0.0),
        ("uniform", "euler", 0.0),
        ("uniform", "euler", 1.0),
    ],
)
def test_the_samplers_reproduce_a_factorized_target(source, method, corrector):
    path = dfm.MixturePath(K, source, dfm.Polynomial(1.5))
    n = 20_000
    x0 = path.draw_source(jax.random.key(7), (n, L))
    run = jax.jit(lambda key: dfm.sample(factorized_posterior(path), x0, path, key, 200, method, corrector))
    out = run(jax.random.key(8))
    assert int(out.nfe) == (200 if method == "euler" else L)
    samples = np.asarray(out.x1)
    assert samples.min() >= 0 and samples.max() < K  # nothing left masked
    assert tv(samples, MARGINALS, K) < 0.02


@pytest.mark.parametrize(
    "source, method, corrector",
    [
        ("mask", "euler", 0.0),
        ("mask", "euler", 2.0),
        ("mask", "unmask", 0.0),
        ("uniform", "euler", 0.0),
        ("uniform", "euler", 2.0),
    ],
)
def test_stopped_at_t1_the_samplers_give_the_paths_marginal_there(source, method, corrector):
    """At t1 < 1 the tokens are the path's marginal: masked with probability 1 - kappa(t1) (or
    uniform noise), else the data's value. The corrector's extra unmasking and its remasking
    must balance for the masked share to stay 1 - kappa at every t: only an intermediate time
    can check its rates, as its final law is exact whatever they are."""
    path = dfm.MixturePath(K, source, dfm.Polynomial(1.5))
    n, t1 = 20_000, 0.6
    x0 = path.draw_source(jax.random.key(7), (n, L))
    run = jax.jit(lambda key: dfm.sample(factorized_posterior(path), x0, path, key, 200, method, corrector, t1))
    samples = np.asarray(run(jax.random.key(8)).x1)
    kappa = float(path.scheduler(t1))
    if source == "mask":
        expected = np.concatenate([kappa * MARGINALS, np.full((L, 1), 1.0 - kappa)], axis=1)  # mask id K last
    else:
        expected = kappa * MARGINALS + (1.0 - kappa) / K
    assert tv(samples, expected, expected.shape[1]) < 0.02


@pytest.mark.parametrize("method", ["euler", "unmask"])
@pytest.mark.parametrize("guidance", [0.0, 1.0, 2.5])
def test_guidance_samples_the_geometric_mix_of_the_conditional_and_unconditional_posteriors(method, guidance):
    """A factorized class-conditional "network" (one table of logits per class, another for the
    null label): with guidance w every token is drawn from p_null^(1 - w) p_c^w, normalized."""
    path = dfm.MixturePath(K, "mask")
    rng = np.random.default_rng(3)
    tables = jnp.asarray(rng.normal(size=(3, L, K)), jnp.float32)  # classes 0, 1 and the null label 2
    calls = []

    def network(t, x, labels):
        calls.append(x.shape[0])
        return jnp.broadcast_to(tables[labels][:, :, :], (x.shape[0], L, K))

    n = 20_000
    x0 = path.draw_source(jax.random.key(7), (n, L))
    posterior = dfm.guided_posterior(network, jnp.int32(1), 2, guidance)
    out = jax.jit(lambda key: dfm.sample(posterior, x0, path, key, 50, method))(jax.random.key(8))
    mix = (1.0 - guidance) * jax.nn.log_softmax(tables[2]) + guidance * jax.nn.log_softmax(tables[1])
    assert tv(np.asarray(out.x1), np.asarray(jax.nn.softmax(mix)), K) < 0.02
    assert calls == [2 * n]  # traced once: one network call on the stacked batch per NFE


@pytest.mark.parametrize("method, corrector", [("euler", 0.0), ("euler", 0.5), ("unmask", 0.0)])
def test_the_samplers_reproduce_a_joint_target_from_its_exact_posterior(method, corrector):
    path = dfm.MixturePath(JOINT_K, "mask")
    x0 = path.draw_source(jax.random.key(9), (50_000, JOINT_L))
    out = jax.jit(lambda key: dfm.sample(joint_posterior(path), x0, path, key, 200, method, corrector))(
        jax.random.key(10)
    )
    assert joint_tv(np.asarray(out.x1)) < 0.03
    # The per-token (factorized) posterior at one step cannot: each token from its marginal alone.
    one_step = dfm.sample(joint_posterior(path), x0, path, jax.random.key(10), 1)
    assert joint_tv(np.asarray(one_step.x1)) > 0.1


def test_the_elbo_is_the_entropy_of_a_factorized_target_and_bounds_a_joint_one():
    path = dfm.MixturePath(K, "mask", dfm.Cosine())
    n = 20_000
    x1 = jax.random.categorical(jax.random.key(11), jnp.log(jnp.asarray(MARGINALS)), shape=(n, L))
    nats = jax.jit(lambda key: dfm.elbo(factorized_posterior(path), x1, path, key, 8))(jax.random.key(12))
    assert float(jnp.mean(nats)) == pytest.approx(ENTROPY, rel=0.02)
    bits = dfm.bits_per_token(nats, L)
    assert float(jnp.mean(bits)) == pytest.approx(ENTROPY / L / math.log(2), rel=0.02)

    joint = dfm.MixturePath(JOINT_K, "mask")
    seqs = jnp.asarray(np.repeat(SEQUENCES, 400, axis=0))  # every sequence, 400 estimates x 16 times each
    true_nll = -np.log(JOINT)
    exact = np.asarray(dfm.elbo(joint_posterior(joint), seqs, joint, jax.random.key(13), 16)).reshape(-1, 400)
    # With the exact posterior the bound is tight (the exact reverse process): equal within MC error.
    se = exact.std(1) / math.sqrt(400)
    assert np.all(np.abs(exact.mean(1) - true_nll) < 5 * se + 1e-3)
    # Another posterior (time-independent): the bound holds for the model it defines, whose law is
    # that of the unmasking sampler, an average over the L! reveal orders, enumerated here.
    table = jnp.asarray(np.random.default_rng(1).normal(0, 0.7, (JOINT_L, JOINT_K)), jnp.float32)
    exact_posterior = joint_posterior(joint)

    def model(t, x_t):  # the exact posterior, distorted by how many tokens are still masked
        masked = jnp.sum(x_t == joint.mask_id, axis=-1)[:, None, None]
        return exact_posterior(t, x_t) + table * masked

    orders = np.array(list(itertools.permutations(range(JOINT_L))))
    states, targets = [], []
    for x in SEQUENCES:
        for order in orders:
            for k in range(JOINT_L):
                x_t = np.full(JOINT_L, JOINT_K)
                x_t[order[:k]] = x[order[:k]]
                states.append(x_t)
                targets.append((order[k], x[order[k]]))
    logp = np.asarray(jax.nn.log_softmax(model(jnp.zeros(len(states)), jnp.asarray(np.array(states))), axis=-1))
    steps = np.array([logp[i, pos, tok] for i, (pos, tok) in enumerate(targets)])
    per_order = steps.reshape(len(SEQUENCES), len(orders), JOINT_L).sum(-1)
    model_nll = -np.log(np.mean(np.exp(per_order), axis=1))
    assert np.exp(-model_nll).sum() == pytest.approx(1.0, abs=1e-5)  # a distribution over the 81 sequences
    bound = np.asarray(dfm.elbo(model, seqs, joint, jax.random.key(14), 16)).reshape(-1, 400)
    se = bound.std(1) / math.sqrt(400)
    assert np.all(bound.mean(1) > model_nll - 5 * se)
    assert np.mean(bound.mean(1) - model_nll) > 0.01  # a strict bound for this model (Jensen over orders)


def test_bad_input_is_named():
    path = dfm.MixturePath(K, "mask")
    with pytest.raises(ValueError, match="Unknown source 'gaussian'"):
        dfm.MixturePath(K, "gaussian")
    with pytest.raises(ValueError, match="vocab_size"):
        dfm.MixturePath(1)
    with pytest.raises(ValueError, match="needs the masked source"):
        dfm.sample(
            None, jnp.zeros((2, 3), jnp.int32), dfm.MixturePath(K, "uniform"), jax.random.key(0), method="unmask"
        )
    with pytest.raises(ValueError, match="corrector is implemented.*source 'data'"):
        dfm.sample(None, jnp.zeros((2, 3), jnp.int32), dfm.MixturePath(K, "data"), jax.random.key(0), corrector=1.0)
    with pytest.raises(ValueError, match="corrector is implemented.*method 'unmask'"):
        dfm.sample(None, jnp.zeros((2, 3), jnp.int32), path, jax.random.key(0), method="unmask", corrector=1.0)
    for t1 in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"t1 must be a number in \(0, 1\]"):
            dfm.sample(None, jnp.zeros((2, 3), jnp.int32), path, jax.random.key(0), t1=t1)
    with pytest.raises(ValueError, match="logits of shape"):
        dfm.posterior_probs(path, jnp.zeros((2, 3, K + 1)), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(TypeError, match="integer token ids"):
        dfm.dfm_loss(path)(lambda *a: None, None, jax.random.key(0), {"x1": jnp.zeros((2, 3))})
    with pytest.raises(ValueError, match="masked source"):
        dfm.elbo(None, jnp.zeros((2, 3), jnp.int32), dfm.MixturePath(K, "uniform"), jax.random.key(0))
    with pytest.raises(ValueError, match='"data" source draws nothing'):
        dfm.MixturePath(K, "data").draw_source(jax.random.key(0), (2, 3))
