r"""Log-likelihoods of RBMs too large to enumerate, with a bound on each side.

**Forward AIS** (Neal 2001; Salakhutdinov & Murray 2008). The path runs from a *base-rate*
model ``A`` (no weights, visible biases ``b_A`` from the data's pixel frequencies) to the RBM
``B = (W, b, c)`` through the joint energies ``E_β = (1 − β) E_A + β E_B``. Every intermediate
model is an RBM at scaled parameters, ``(βW, (1 − β) b_A + β b, β c)``, with visible marginal

.. math::  \log f_\beta(v) = ((1-\beta) b_A + \beta b)^\top v
           + \sum_j \operatorname{softplus}(\beta (c + v^\top W)_j),

so block Gibbs (``h | v`` then ``v | h``, two matrix products) is exact at every temperature
and ``log Z_0 = n_h log 2 + Σ_i softplus(b_{A,i})`` is known. ``M`` independent runs
``v_0 ~ A``, ``log w += log f_{β_k}(v) − log f_{β_{k−1}}(v)``, ``v ~ T_{β_k}(· | v)`` give
``Ẑ = Z_0 · mean(w)``, unbiased for ``Z``; hence ``E[log Ẑ] ≤ log Z`` (Jensen): a stochastic
*lower* bound on ``log Z``, and ``mean(−F(v_test)) − log Ẑ`` a stochastic *upper* bound on
the average test log-likelihood.

**Reverse AIS, RAISE** (Burda, Grosse & Salakhutdinov 2015). The forward chain is itself a
normalised generative model, ``p_ann(v_0, …, v_K) = p_A(v_0) Π_k T_k(v_k | v_{k−1})``, which
tends to the RBM as ``K`` grows. Its likelihood of a test point ``v_K = v`` is estimated by
importance sampling with the *reverse* chain started at the data, ``v_{k−1} ~ T_k(· | v_k)``
for ``k = K … 1`` (each ``T_k`` is reversible for its ``f_k``, so it is its own reversal):

.. math::  \log w = \log p_A(v_0) + \sum_{k=1}^{K} \bigl(\log f_k(v_k) - \log f_k(v_{k-1})\bigr),

with ``E[w] = p_ann(v)``. ``log mean w`` is a stochastic lower bound on ``log p_ann(v)``, and
with too few temperatures ``p_ann`` is a blurred RBM whose test likelihood is lower still:
the estimate errs on the conservative side, the opposite of forward AIS.

The two bounds bracket the test log-likelihood (in expectation, up to their Monte Carlo
errors); their gap says how far either is from the truth. ``tests/test_ais.py`` checks both
against enumeration on RBMs small enough to enumerate.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_jarzynski.engine import noise
from numpyro_jarzynski.engine import weights as W


class AISResult(NamedTuple):
    """``log_z``: ``log Z_0 + log mean exp(log_weights)``; ``log_z_se``: its delta-method
    standard error ``sd(w)/(mean(w)·√M)`` (computed on ``w/max w``); ``log_weights``: the
    ``M`` runs' ``log w``; ``ess``: their effective sample size; ``num_temperatures``."""

    log_z: jax.Array
    log_z_se: jax.Array
    log_weights: jax.Array
    ess: jax.Array
    num_temperatures: int


class LogLikelihoodBounds(NamedTuple):
    """The average test log-likelihood bracketed by forward AIS (``upper``: uses AIS's
    stochastic lower bound on ``log Z``) and RAISE (``lower``), each with its Monte Carlo
    standard error, plus the forward run's ``log Z`` (an :class:`AISResult`) and the per-point
    RAISE estimates ``raise_per_point``."""

    upper: jax.Array
    upper_se: jax.Array
    lower: jax.Array
    lower_se: jax.Array
    ais: AISResult
    raise_per_point: jax.Array


def schedule(num_temperatures, dtype=jnp.float32):
    """``β_0 = 0 < … < β_K = 1`` spaced as Salakhutdinov & Murray (2008): 1/29 of the steps
    on [0, 0.5], 8/29 on [0.5, 0.9], 20/29 on [0.9, 1] (the RBM's energy changes fastest near
    β = 1). ``num_temperatures = K`` (at least 3)."""
    k = int(num_temperatures)
    if k < 3:
        raise ValueError(f"num_temperatures must be >= 3, got {num_temperatures!r}.")
    n1 = max(1, round(k / 29))
    n2 = max(1, round(8 * k / 29))
    n3 = k - n1 - n2
    parts = [np.linspace(0.0, 0.5, n1, endpoint=False), np.linspace(0.5, 0.9, n2, endpoint=False),
             np.linspace(0.9, 1.0, n3 + 1)]
    return jnp.asarray(np.concatenate(parts), dtype)


def base_rate_bias(data, smoothing=1.0):
    """Visible biases of the base-rate model: the logits of the data's per-unit frequencies,
    ``(count + smoothing) / (n + 2·smoothing)`` (so that no unit is pinned to 0 or 1)."""
    data = jnp.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"data must have shape (n, n_visible), got {data.shape}.")
    p = (jnp.sum(data, 0) + smoothing) / (data.shape[0] + 2.0 * smoothing)
    return jnp.log(p) - jnp.log1p(-p)


class _Path(NamedTuple):
    """The joint-energy path from the base-rate model to the RBM."""

    weights: jax.Array
    b: jax.Array
    c: jax.Array
    b_base: jax.Array

    def pre(self, v):  # c + vᵀW: the one product a temperature needs for f and for h | v
        return self.c + v @ self.weights

    def log_f(self, beta, v, pre):
        vis = ((1.0 - beta) * self.b_base + beta * self.b)
        return v @ vis + jnp.sum(jax.nn.softplus(beta * pre), -1)

    def gibbs(self, key, beta, pre):
        k_h, k_v = noise.split(key)  # jax.random's draws bit for bit, hashed faster
        h = noise.bernoulli(k_h, jax.nn.sigmoid(beta * pre)).astype(pre.dtype)
        logits = (1.0 - beta) * self.b_base + beta * (self.b + h @ self.weights.T)
        return noise.bernoulli(k_v, jax.nn.sigmoid(logits)).astype(pre.dtype)

    def log_base(self, v):  # normalised base-rate model
        return v @ self.b_base - jnp.sum(jax.nn.softplus(self.b_base))

    def log_z_base(self):
        n_h = self.weights.shape[1]
        return n_h * jnp.log(2.0) + jnp.sum(jax.nn.softplus(self.b_base))


def _path(rbm, base_bias):
    from numpyro_jarzynski.ebm.rbm import BernoulliRBM

    if not isinstance(rbm, BernoulliRBM):
        raise TypeError(
            f"AIS and RAISE are implemented for BernoulliRBM, got {type(rbm).__name__}. For a "
            "GaussianBernoulliRBM with a small hidden layer use log_partition() (exact)."
        )
    w = rbm.weights
    b_base = (jnp.zeros_like(rbm.visible_bias) if base_bias is None
              else jnp.asarray(base_bias, w.dtype))
    if b_base.shape != rbm.visible_bias.shape:
        raise ValueError(f"base_bias must have shape {rbm.visible_bias.shape}, got "
                         f"{b_base.shape}; pass base_rate_bias(train_data).")
    return _Path(w, rbm.visible_bias, rbm.hidden_bias, b_base)


def _betas(num_temperatures, dtype):
    if isinstance(num_temperatures, int | np.integer):
        return schedule(num_temperatures, dtype)
    betas = jnp.asarray(num_temperatures, dtype)
    if isinstance(betas, jax.core.Tracer):  # traced (inside jit): checked by the caller
        return betas
    b = np.asarray(betas)
    if b.ndim != 1 or b.size < 2 or b[0] != 0 or b[-1] != 1 or np.any(np.diff(b) <= 0):
        raise ValueError("num_temperatures must be an int or an increasing array of "
                         "temperatures from 0 to 1.")
    return betas


def ais(rng_key, rbm, num_runs=100, num_temperatures=10_000, base_bias=None):
    """Forward AIS estimate of ``log Z`` of a :class:`~numpyro_jarzynski.BernoulliRBM`
    (module docstring): ``num_runs`` independent runs through ``num_temperatures``
    temperatures (or an explicit increasing array from 0 to 1). ``base_bias``: the base-rate
    model's visible biases, ideally :func:`base_rate_bias` of the training data (zeros, the
    uniform base, if None). Returns an :class:`AISResult`; ``log_z`` is a stochastic lower
    bound on the true ``log Z``."""
    path = _path(rbm, base_bias)
    dtype = path.weights.dtype
    betas = _betas(num_temperatures, dtype)
    k0, k1 = jax.random.split(rng_key)
    n_v = path.b.shape[0]
    v = jax.random.bernoulli(k0, jax.nn.sigmoid(path.b_base), (num_runs, n_v)).astype(dtype)

    def body(carry, inp):
        v, log_w = carry
        beta_prev, beta, key = inp
        pre = path.pre(v)
        log_w = log_w + path.log_f(beta, v, pre) - path.log_f(beta_prev, v, pre)
        return (path.gibbs(key, beta, pre), log_w), None

    keys = jax.random.split(k1, betas.shape[0] - 1)
    (_, log_w), _ = jax.lax.scan(body, (v, jnp.zeros(num_runs, dtype)),
                                 (betas[:-1], betas[1:], keys))
    return _ais_result(path.log_z_base() + W.log_mean_exp(log_w), log_w, betas.shape[0] - 1)


def _ais_result(log_z, log_w, k):
    w = jnp.exp(log_w - jnp.max(log_w))
    se = jnp.std(w) / (jnp.mean(w) * jnp.sqrt(log_w.shape[0]))
    return AISResult(log_z, se, log_w, W.ess(log_w), k)


def raise_log_likelihood(rng_key, rbm, data, num_runs=10, num_temperatures=10_000,
                         base_bias=None):
    """RAISE (module docstring): for each row of ``data`` (``(n, n_visible)``), the log mean
    of ``num_runs`` reverse-annealing weights, a stochastic lower bound on the annealed
    model's ``log p(v)``. Returns the ``(n,)`` per-point estimates."""
    return _raise(rng_key, rbm, data, num_runs, num_temperatures, base_bias)[0]


def _raise(rng_key, rbm, data, num_runs, num_temperatures, base_bias):
    """RAISE per point: ``(log mean w, delta-method standard error)``, each ``(n,)``."""
    path = _path(rbm, base_bias)
    dtype = path.weights.dtype
    data = jnp.asarray(data, dtype)
    if data.ndim != 2 or data.shape[1] != path.b.shape[0]:
        raise ValueError(f"data must have shape (n, {path.b.shape[0]}), got {data.shape}.")
    betas = _betas(num_temperatures, dtype)
    n = data.shape[0]
    v = jnp.repeat(data, num_runs, axis=0)

    def body(carry, inp):
        v, pre, log_w = carry
        beta, key = inp
        # From v_k: + log f_k(v_k), draw v_{k−1} ~ T_k(· | v_k), − log f_k(v_{k−1}).
        log_w = log_w + path.log_f(beta, v, pre)
        v = path.gibbs(key, beta, pre)
        pre = path.pre(v)
        return (v, pre, log_w - path.log_f(beta, v, pre)), None

    keys = jax.random.split(rng_key, betas.shape[0] - 1)
    (v, _, log_w), _ = jax.lax.scan(
        body, (v, path.pre(v), jnp.zeros(v.shape[0], dtype)), (betas[1:][::-1], keys))
    log_w = (log_w + path.log_base(v)).reshape(n, num_runs)
    w = jnp.exp(log_w - jnp.max(log_w, axis=1, keepdims=True))
    se = jnp.std(w, axis=1) / (jnp.mean(w, axis=1) * jnp.sqrt(num_runs))
    return jax.vmap(W.log_mean_exp)(log_w), se


def log_likelihood_bounds(rng_key, rbm, test_data, base_bias=None, num_runs=100,
                          num_temperatures=10_000, num_raise_runs=10):
    """The average log-likelihood of ``test_data`` under the RBM, bracketed: ``upper`` from
    forward AIS (``mean(−F(v)) − log Ẑ``), ``lower`` from RAISE (the mean of the per-point
    estimates). Standard errors are the Monte Carlo errors for this test set (which is fixed,
    so its own sampling error is not included): the AIS ``log Ẑ`` error for ``upper``; the
    per-point delta-method errors of the ``num_raise_runs`` reverse runs, combined over the
    ``n`` points, for ``lower``. Returns :class:`LogLikelihoodBounds`."""
    k_ais, k_raise = jax.random.split(rng_key)
    res = ais(k_ais, rbm, num_runs, num_temperatures, base_bias)
    test_data = jnp.asarray(test_data, rbm.weights.dtype)
    neg_f = -rbm.free_energy(test_data)
    n = test_data.shape[0]
    upper = jnp.mean(neg_f) - res.log_z
    per_point, se = _raise(k_raise, rbm, test_data, num_raise_runs, num_temperatures, base_bias)
    lower_se = jnp.sqrt(jnp.sum(se**2)) / n
    return LogLikelihoodBounds(upper, res.log_z_se, jnp.mean(per_point), lower_se, res,
                               per_point)


__all__ = ["AISResult", "LogLikelihoodBounds", "ais", "base_rate_bias", "log_likelihood_bounds",
           "raise_log_likelihood", "schedule"]
