"""Peer benchmark: ``JarzynskiSMC`` (through ``numpyro.infer.MCMC``) vs BlackJAX 1.7's adaptive
tempered SMC, on targets with an exact log evidence.

Targets (float32, exact log Z in float64):

* ``gauss10`` / ``gauss50``: ``z ~ N(0, I_d)``, ``y_j ~ N(z, I_d)`` for ``j = 1..n``. Each
  coordinate of the data is ``N(0, I_n + 11ᵀ)``, so
  ``log Z = -½ [d n log 2π + d log(1 + n) + Σ_k y_kᵀ (I − 11ᵀ/(1+n)) y_k]``.
* ``twomode``: prior ``N(0, s² I_d)``, likelihood ``L(z) = Σ_j w_j N(z; μ_j, σ² I_d)`` with
  ``μ_2 = −μ_1`` and ``w = (0.25, 0.75)``. Then ``Z = Σ_j w_j N(μ_j; 0, (s² + σ²) I_d)``
  ``= N(μ_1; 0, (s² + σ²) I_d)`` and the posterior mode masses are exactly ``w``.

Harder targets, each with a reference log Z and posterior marginals (means, sds):

* ``logistic``: Bayesian logistic regression on scikit-learn's breast cancer data, the model of
  ``trust_models.py`` (d = 31: standardised features plus intercept, ``w ~ N(0, 1)``). log Z by
  importance sampling (Student-t fitted to NUTS, 4e6 draws), posterior by NUTS 4 × 5000.
* ``funnel``: Neal's funnel in d = 10, centred: ``v ~ N(0, 3²)``, ``x_i | v ~ N(0, e^v)``,
  ``y_i ~ N(x_i, 1)`` with ``y_i = 0.5·(−1)^i``; log Z and every posterior moment are 1-D
  integrals over v (quadrature, float64, exact). ``P(v < −2 | y) = 0.72``: the neck matters.
* ``sv``: NumPyro's stochastic-volatility example (``sigma ~ Exponential(50)``,
  ``s ~ GaussianRandomWalk(sigma)``, ``nu ~ Exponential(0.1)``, ``r ~ StudentT(nu, 0, e^s)``)
  on the first T = 100 S&P 500 returns of the example's data set (``sp500_first100.json``;
  d = 102). Posterior marginals of (ν, s_1..s_100, σ) by NUTS 4 × 4000; log Z from long SMC
  runs of both libraries that agree with each other.

The references of ``logistic`` and ``sv`` are cached in ``peer_references.json``, built by
``peer_references.py``. On these three the default budget is issue 11's BlackJAX HMC: K = 5
steps of L = 10 leapfrog per stage (51 gradients per stage); ours gets the same per stage.
The posterior columns: ``post med`` / ``post max`` = median / max over runs of the worst
marginal's ``|weighted mean − reference mean| / reference sd``; ``pooled`` = the same for the
mean over runs; ``sd ratio`` = range over marginals of (mean weighted sd) / reference sd.

Both samplers run at the same N, the same adaptive target ESS and (as near as adaptivity allows)
the same number of gradient evaluations of the log density per particle:

* ours: MALA and ULA with ``m = G`` moves per stage, HMC and unadjusted HMC (``UHMC``) with
  ``(G − 1) / L`` moves of ``L`` leapfrog steps (prior and likelihood parts are cached, so
  changing β costs no gradient), ``K`` stages, plus the initial evaluation;
* ours ``move="auto"`` (``Auto()``, its default candidates ULA, MALA, ``HMC(5)``, ``UHMC(5)``):
  ``Auto.moves_per_stage(m)`` gives every candidate ``m × 5`` gradients per stage (5 ULA or
  MALA moves, or one 5-step trajectory, per unit of ``m``), so ``m = round(G / 5)``: 5
  gradients per stage at ``G = 5``, 50 at ``G = 51``. Its gradient count is summed from the
  candidate it ran at each stage (``StageHistory.move_index``) plus the candidate it measured
  on a shadow copy (``StageHistory.trial_index``: at the first stages and every
  ``explore``-th), so it spends *more* gradients than the fixed moves (the ``grads`` column
  says how many), and the script prints how often it chose each candidate;
* BlackJAX: each stage re-initialises its inner kernel at the new temperature (one gradient),
  then MALA costs one gradient per step and HMC ``L`` per step: ``T·(steps·L + 1)``, where
  ``T`` is the number of adaptive stages it needed (measured).

On the Gaussian targets, whose tempered posteriors are Gaussian, the script also prints the
**perfect-mixing floor**: the log-Z RMSE of tempered SMC whose every stage holds exact,
independent draws from the current tempered target, at the same N and conditional-ESS target
(``mixing_floor``, 200 runs). No move can beat it at that schedule; a target below it (e.g.
0.7× BlackJAX-HMC where BlackJAX-HMC already mixes well) cannot be met by better moves alone.

BlackJAX does not return log Z: it is accumulated from ``info.log_likelihood_increment`` and
checked against the exact value. Its inner kernels are tuned from the particles with
``blackjax.inner_kernel_tuning`` (the scalar MALA step scaled by the mean particle variance;
HMC with the diagonal inverse mass matrix of the particles), as its documentation does.

Timings: every configuration is compiled ahead of time (``jit(...).lower(...).compile()``),
so the reported compile time and run time are separate; seeds are ``vmap``-ed into one call.
Our timed program is the kernel's own ``init`` + ``sample`` loop that ``MCMC`` runs (same keys,
checked to give the same log Z); ``MCMC.run`` itself is also timed end to end.

Run: ``MPLBACKEND=Agg python benchmarks/smc_vs_blackjax.py --quick`` (N = 256, 10 seeds;
compilation dominates on two CPU cores) or without ``--quick`` for the full table
(N = 1024, 20 seeds); ``--problems`` picks targets, ``--no-mcmc-run`` skips the end-to-end
``MCMC.run`` (one compilation fewer per move).
"""

import argparse
import json
import math
import pathlib
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from blackjax.smc.resampling import systematic
from jax.scipy.special import logsumexp
from numpyro.infer import MCMC

from numpyro_jarzynski import HMC, UHMC, Auto, JarzynskiSMC
from numpyro_jarzynski.engine import resampling as R
from numpyro_jarzynski.engine import schedules as S
from numpyro_jarzynski.engine import weights as W
from numpyro_jarzynski.engine.kernels import as_kernel


# ----------------------------------------------------------------------------- problems
@dataclass
class Problem:
    name: str
    dim: int
    model: Callable
    model_args: tuple
    log_prior: Callable  # (d,) -> scalar, pure JAX (what a BlackJAX user writes)
    log_lik: Callable
    prior_draws: Callable  # (key, n) -> (n, d)
    log_z: float  # exact, or a cached reference (see log_z_se, ref_note)
    minor_mode: Callable = None  # (n, d) -> bool mask of the 0.25-mass mode
    # Posterior reference: marginals of constrain(u) (u = the flat unconstrained vector, sites
    # in sorted order, which is how our kernel ravels them), their means and sds.
    constrain: Callable = None  # (d,) -> (k,); None: identity
    post_mean: np.ndarray = None
    post_sd: np.ndarray = None
    names: tuple = ()
    log_z_se: float = 0.0  # 0: exact
    ref_note: str = "exact"
    # (rng, beta, n) -> (n, d) exact draws from the tempered posterior (None: not known)
    tempered_draws: Callable = None


def flatten_sites(z):
    """Our state's ``z`` (``{site: (seeds, N, ...)}``, unconstrained) as ``(seeds, N, d)``, sites
    in sorted order: the layout of our kernel's ravel and of the BlackJAX densities below."""
    return jnp.concatenate(
        [jnp.reshape(z[k], z[k].shape[:2] + (-1,)) for k in sorted(z)], axis=-1)


def gaussian_problem(dim, num_obs=4, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.standard_normal(dim) + rng.standard_normal((num_obs, dim))).astype(np.float32)
    y64 = y.astype(np.float64)
    quad = np.sum(y64**2) - np.sum(y64.sum(0) ** 2) / (1 + num_obs)
    log_z = -0.5 * (dim * num_obs * math.log(2 * math.pi) + dim * math.log(1 + num_obs) + quad)

    def model(y):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([dim]).to_event(1))
        with numpyro.plate("obs", y.shape[0]):
            numpyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y)

    yj = jnp.asarray(y)

    def tempered_draws(rng, beta, n):  # π_β ∝ N(0, I)·L^β is Gaussian: N(β Σy/p, I/p)
        prec = 1.0 + beta * num_obs
        return beta * y64.sum(0) / prec + rng.standard_normal((n, dim)) / math.sqrt(prec)

    return Problem(
        post_mean=y64.sum(0) / (1 + num_obs),
        post_sd=np.full(dim, 1 / math.sqrt(1 + num_obs)),
        name=f"gauss{dim}",
        dim=dim,
        model=model,
        model_args=(yj,),
        log_prior=lambda z: jnp.sum(dist.Normal(0.0, 1.0).log_prob(z)),
        log_lik=lambda z: jnp.sum(dist.Normal(z, 1.0).log_prob(yj)),
        prior_draws=lambda key, n: jax.random.normal(key, (n, dim)),
        log_z=float(log_z),
        tempered_draws=tempered_draws,
    )


def two_mode_problem(dim=5, prior_scale=2.0, lik_scale=0.5, offset=1.5, weights=(0.25, 0.75)):
    mu = np.full(dim, offset)
    var = prior_scale**2 + lik_scale**2
    log_z = -0.5 * dim * math.log(2 * math.pi * var) - 0.5 * float(mu @ mu) / var
    locs = jnp.asarray(np.stack([mu, -mu]), jnp.float32)
    log_w = jnp.log(jnp.asarray(weights, jnp.float32))

    def log_lik(z):
        comp = jnp.sum(dist.Normal(locs, lik_scale).log_prob(z), axis=-1)
        return logsumexp(log_w + comp)

    def model():
        z = numpyro.sample("z", dist.Normal(0.0, prior_scale).expand([dim]).to_event(1))
        numpyro.factor("mixture_likelihood", log_lik(z))

    return Problem(
        name="twomode",
        dim=dim,
        model=model,
        model_args=(),
        log_prior=lambda z: jnp.sum(dist.Normal(0.0, prior_scale).log_prob(z)),
        log_lik=log_lik,
        prior_draws=lambda key, n: prior_scale * jax.random.normal(key, (n, dim)),
        log_z=float(log_z),
        minor_mode=lambda z: z @ locs[0] > 0,
        # each component's posterior N(m, v), masses exactly w (equal marginals at ±μ)
        post_mean=np.full(dim, (weights[0] - weights[1]) * offset * prior_scale**2 / var),
        post_sd=np.full(dim, math.sqrt(
            (prior_scale * lik_scale) ** 2 / var
            + (offset * prior_scale**2 / var) ** 2 * (1 - (weights[0] - weights[1]) ** 2))),
    )


# ------------------------------------------------- targets with cached references (issue 11)
HERE = pathlib.Path(__file__).resolve().parent
REFERENCES = HERE / "peer_references.json"


def load_references():
    """Posterior and evidence references built by ``benchmarks/peer_references.py``."""
    if not REFERENCES.exists():
        raise FileNotFoundError(
            f"{REFERENCES} is missing: run `python benchmarks/peer_references.py` first.")
    return json.loads(REFERENCES.read_text())


def logistic_problem(refs=None):
    """Bayesian logistic regression on breast cancer: the model of ``trust_models.py`` (d = 31,
    standardised features plus intercept, ``w ~ N(0, 1)``), imported so the numbers agree."""
    from trust_models import breast_cancer, logistic

    x, y = breast_cancer()
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    dim = x.shape[1]
    ref = (refs or {}).get("logistic", {})

    def log_lik(w):
        return jnp.sum(dist.Bernoulli(logits=xj @ w).log_prob(yj))

    return Problem(
        name="logistic", dim=dim, model=logistic, model_args=(xj, yj),
        log_prior=lambda w: jnp.sum(dist.Normal(0.0, 1.0).log_prob(w)),
        log_lik=log_lik,
        prior_draws=lambda key, n: jax.random.normal(key, (n, dim)),
        log_z=ref.get("log_z", float("nan")), log_z_se=ref.get("log_z_se", float("nan")),
        ref_note=ref.get("log_z_note", "missing"),
        post_mean=np.asarray(ref["mean"]) if ref else None,
        post_sd=np.asarray(ref["sd"]) if ref else None,
        names=tuple(f"w[{i}]" for i in range(dim)),
    )


FUNNEL_Y = 0.5 * (-1.0) ** np.arange(1, 10)  # y_i = 0.5·(−1)^i, i = 1..9


def funnel_reference(y=FUNNEL_Y, v_scale=3.0):
    """Exact log Z and posterior moments of the funnel by 1-D quadrature over v (float64).

    Given v, ``y_i ~ N(0, e^v + 1)`` independently, and ``x_i | v, y ~ N(r y_i, r)`` with
    ``r = e^v / (e^v + 1)``, so every posterior moment is a 1-D integral over v too."""
    from scipy import integrate, stats

    y = np.asarray(y, np.float64)

    def log_joint(v):  # log N(v; 0, 3²) + Σ log N(y_i; 0, e^v + 1)
        return stats.norm.logpdf(v, 0, v_scale) + stats.norm.logpdf(
            y, 0, np.sqrt(np.exp(v) + 1)).sum()

    shift = log_joint(-3.0)
    lo, hi = -12 * v_scale, 12 * v_scale

    def integral(f):
        val, _err = integrate.quad(lambda v: f(v) * np.exp(log_joint(v) - shift), lo, hi,
                                  points=[-10, -5, -2, 0, 2], epsabs=0, epsrel=1e-13, limit=500)
        return val

    z = integral(lambda v: 1.0)
    r = lambda v: np.exp(v) / (np.exp(v) + 1)
    ev = integral(lambda v: v) / z
    ev2 = integral(lambda v: v * v) / z
    ex = np.array([integral(lambda v, yi=yi: r(v) * yi) / z for yi in y])
    ex2 = np.array([integral(lambda v, yi=yi: r(v) + (r(v) * yi) ** 2) / z for yi in y])
    p_low = integral(lambda v: float(v < -2)) / z
    return {
        "log_z": float(np.log(z) + shift),
        "mean": np.concatenate([[ev], ex]), "sd": np.sqrt(np.concatenate(
            [[ev2 - ev**2], ex2 - ex**2])),
        "p_v_below_-2": float(p_low),
    }


def funnel_problem(y=FUNNEL_Y, v_scale=3.0):
    """Neal's funnel, d = 10, centred: ``v ~ N(0, 3²)``, ``x_i | v ~ N(0, e^v)``, observed
    ``y_i ~ N(x_i, 1)``; flat layout ``[v, x_1..x_9]`` (sites "v", "x" in sorted order)."""
    ref = funnel_reference(y, v_scale)
    yj = jnp.asarray(y, jnp.float32)
    k = len(y)

    def model(y):
        v = numpyro.sample("v", dist.Normal(0.0, v_scale))
        x = numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([k]).to_event(1))
        numpyro.sample("y", dist.Normal(x, 1.0).to_event(1), obs=y)

    def log_prior(u):
        v, x = u[0], u[1:]
        return dist.Normal(0.0, v_scale).log_prob(v) + jnp.sum(
            dist.Normal(0.0, jnp.exp(v / 2)).log_prob(x))

    def prior_draws(key, n):
        kv, kx = jax.random.split(key)
        v = v_scale * jax.random.normal(kv, (n, 1))
        return jnp.concatenate([v, jnp.exp(v / 2) * jax.random.normal(kx, (n, k))], axis=1)

    return Problem(
        name="funnel", dim=k + 1, model=model, model_args=(yj,), log_prior=log_prior,
        log_lik=lambda u: jnp.sum(dist.Normal(u[1:], 1.0).log_prob(yj)),
        prior_draws=prior_draws, log_z=ref["log_z"],
        ref_note=f"quadrature; P(v < -2 | y) = {ref['p_v_below_-2']:.3f}",
        post_mean=ref["mean"], post_sd=ref["sd"],
        names=("v",) + tuple(f"x[{i}]" for i in range(1, k + 1)),
    )


def sp500_returns(num=100):
    data = json.loads((HERE / "sp500_first100.json").read_text())
    return np.asarray(data["returns"][:num], np.float32)


def sv_model(returns):
    """NumPyro's examples/stochastic_volatility.py model, unchanged."""
    step_size = numpyro.sample("sigma", dist.Exponential(50.0))
    s = numpyro.sample(
        "s", dist.GaussianRandomWalk(scale=step_size, num_steps=jnp.shape(returns)[0]))
    nu = numpyro.sample("nu", dist.Exponential(0.1))
    return numpyro.sample("r", dist.StudentT(df=nu, loc=0.0, scale=jnp.exp(s)), obs=returns)


def sv_problem(refs=None, num=100):
    """Stochastic volatility, T = 100 (first 100 S&P 500 returns of the example's data set).

    Flat unconstrained layout (sorted sites "nu", "s", "sigma"): ``[log ν, s_1..s_T, log σ]``;
    reported marginals ``[ν, s_1..s_T, σ]``."""
    r = jnp.asarray(sp500_returns(num))
    t = r.shape[0]
    ref = (refs or {}).get("sv", {})

    def log_prior(u):
        log_nu, s, log_sigma = u[0], u[1:t + 1], u[t + 1]
        nu, sigma = jnp.exp(log_nu), jnp.exp(log_sigma)
        return (dist.Exponential(0.1).log_prob(nu) + log_nu
                + dist.Exponential(50.0).log_prob(sigma) + log_sigma
                + dist.GaussianRandomWalk(scale=sigma, num_steps=t).log_prob(s))

    def log_lik(u):
        nu, s = jnp.exp(u[0]), u[1:t + 1]
        return jnp.sum(dist.StudentT(nu, 0.0, jnp.exp(s)).log_prob(r))

    def prior_draws(key, n):
        k1, k2, k3 = jax.random.split(key, 3)
        sigma = jax.random.exponential(k1, (n, 1)) / 50.0
        nu = jax.random.exponential(k2, (n, 1)) / 0.1
        s = jnp.cumsum(sigma * jax.random.normal(k3, (n, t)), axis=1)
        return jnp.concatenate([jnp.log(nu), s, jnp.log(sigma)], axis=1)

    def constrain(u):
        return jnp.concatenate([jnp.exp(u[:1]), u[1:t + 1], jnp.exp(u[t + 1:])])

    return Problem(
        name="sv", dim=t + 2, model=sv_model, model_args=(r,), log_prior=log_prior,
        log_lik=log_lik, prior_draws=prior_draws,
        log_z=ref.get("log_z", float("nan")), log_z_se=ref.get("log_z_se", float("nan")),
        ref_note=ref.get("log_z_note", "missing"), constrain=constrain,
        post_mean=np.asarray(ref["mean"]) if ref else None,
        post_sd=np.asarray(ref["sd"]) if ref else None,
        names=("nu",) + tuple(f"s[{i}]" for i in range(t)) + ("sigma",),
    )


# ----------------------------------------------------------------------------- runners
def mixing_floor(problem, n, seeds, target_ess, seed=0):
    """log-Z RMSE of tempered SMC whose moves mix *perfectly*: at every stage the particles are
    exact, independent draws from the current tempered posterior, β is chosen adaptively at the
    same conditional-ESS target and log Z is the product of the stages' mean weights. No move
    at this schedule can do better (resampling is immaterial with fresh draws), so it is the
    floor of every method's RMSE at the stage count it reports. ``(RMSE, mean stages)``."""
    rng = np.random.default_rng(seed)
    log_lik = jax.jit(jax.vmap(problem.log_lik))
    errors, stages = [], []
    for _ in range(seeds):
        beta, log_z, k = 0.0, 0.0, 0
        while beta < 1.0:
            ll = np.asarray(log_lik(jnp.asarray(problem.tempered_draws(rng, beta, n),
                                                jnp.float32)), np.float64)

            def cess(db, ll=ll):
                a = db * ll
                w = np.exp(a - a.max())
                return w.sum() ** 2 / (n * np.sum(w**2))

            lo, hi = 0.0, 1.0 - beta
            if cess(hi) < target_ess:
                for _ in range(60):
                    mid = 0.5 * (lo + hi)
                    lo, hi = (mid, hi) if cess(mid) >= target_ess else (lo, mid)
                hi = lo
            a = hi * ll
            log_z += a.max() + math.log(np.mean(np.exp(a - a.max())))
            beta, k = beta + hi, k + 1
        errors.append(log_z - problem.log_z)
        stages.append(k)
    return float(np.sqrt(np.mean(np.square(errors)))), float(np.mean(stages))


def compile_timed(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def run_timed(compiled, *args, repeats=1):
    """Best of ``repeats``: (output, wall seconds, CPU seconds of this process).

    CPU time is reported next to wall time because it is robust to other jobs on a shared
    machine (on a quiet machine with all cores busy, wall ≈ CPU / cores)."""
    best_wall, best_cpu = math.inf, math.inf
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(compiled(*args))
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return out, best_wall, best_cpu


def run_ours(problem, move, keys, n, num_warmup, num_moves, target_ess, repeats,
             mcmc_run=True):
    """MCMC.run for the user-facing numbers, then the same init/sample loop compiled AOT.

    ``mcmc_run=False`` skips ``MCMC.run`` (its tracing and compilation cost minutes on a loaded
    two-core machine) and reports the timed loop's log Z, from the same chain keys."""
    num_seeds = keys.shape[0]

    def kernel():
        return JarzynskiSMC(
            problem.model, num_particles=n, move=move, num_moves=num_moves, target_ess=target_ess
        )

    mcmc = MCMC(
        kernel(), num_warmup=num_warmup, num_samples=1, num_chains=num_seeds,
        chain_method="vectorized", progress_bar=False,
    )
    t0 = time.perf_counter()
    if mcmc_run:
        mcmc.run(keys[0], *problem.model_args)
        log_z = np.asarray(jax.block_until_ready(mcmc.last_state.log_evidence))
    mcmc_wall = time.perf_counter() - t0 if mcmc_run else float("nan")
    chain_keys = jax.random.split(keys[0], num_seeds)  # what MCMC gives the vectorized chains

    k = kernel()
    args = problem.model_args

    def loop(chain_keys):
        state = k.init(chain_keys, num_warmup, None, args, {})
        step = lambda s: k.sample(s, args, {})  # vmaps over the runs itself
        state = jax.lax.fori_loop(0, num_warmup + 1, lambda i, s: step(s), state)
        beta_one = jnp.argmax(state.history.beta >= 1.0, axis=-1) + 1  # stages to reach β = 1
        return (state.log_evidence, flatten_sites(state.z), state.log_weights, beta_one,
                (state.history.move_index, state.history.trial_index))

    compiled, compile_s = compile_timed(loop, chain_keys)
    (lz_loop, z, log_w, natural, (move_index, trial_index)), run_s, cpu_s = run_timed(
        compiled, chain_keys, repeats=repeats)
    # Same keys, same kernel functions: most runs agree to float32 rounding, but XLA fuses the
    # two programs differently and one flipped accept/resample decision sends a run down
    # another (equally valid) path. So compare the two sets of runs statistically.
    lz_loop = np.asarray(lz_loop)
    if not mcmc_run:
        log_z = lz_loop
    diff = np.abs(lz_loop - np.asarray(log_z))
    se = np.sqrt((lz_loop.var(ddof=1) + np.var(log_z, ddof=1)) / len(log_z))
    if abs(lz_loop.mean() - np.mean(log_z)) > 4 * se + 1e-3:
        raise AssertionError(f"timed loop and MCMC.run disagree: {lz_loop} vs {log_z}")
    stages = num_warmup + 1
    kernel_ = as_kernel(move)
    out = {
        "log_z": log_z, "z": np.asarray(z), "log_w": np.asarray(log_w), "compile_s": compile_s,
        "run_s": run_s, "cpu_s": cpu_s, "mcmc_wall_s": mcmc_wall, "stages": float(stages),
        "natural_stages": float(np.mean(np.asarray(natural))), "loop_diff": float(diff.max()),
    }
    if isinstance(kernel_, Auto):
        # Gradients of the candidate it ran at each recorded stage (the history holds the
        # num_warmup warmup stages; the final stage is counted at the mean of the others).
        per_cand = np.array([m * c.grads_per_move for c, m in zip(
            kernel_.candidates, kernel_.moves_per_stage(num_moves))], np.float64)
        # A shadow trial (trial_index >= 0) spends its candidate's gradients too.
        idx, tri = np.asarray(move_index), np.asarray(trial_index)  # (seeds, num_warmup)
        per_run = per_cand[idx].sum(-1)
        per_run = per_run + (stages - idx.shape[-1]) * per_run / max(idx.shape[-1], 1)
        per_run = per_run + np.where(tri >= 0, per_cand[np.maximum(tri, 0)], 0.0).sum(-1)
        out.update(grads=float(per_run.mean() + 1), move_index=idx,
                   candidates=tuple(auto_label(c) for c in kernel_.candidates),
                   grads_per_candidate=per_cand)
    else:
        out["grads"] = float(stages * num_moves * kernel_.grads_per_move + 1)
    return out


def auto_label(move):
    steps = getattr(move, "num_steps", None)
    return type(move).__name__ + ("" if steps is None else f"({steps})")


AUTO_LETTERS = {"ULA": "L", "MALA": "M", "HMC": "H", "UHMC": "U"}


def auto_choices(res, explore):
    """How often ``move="auto"`` ran each candidate: over all recorded stages of all runs, and
    over the ``free`` stages (after the first trial of every candidate, and not the forced
    exploration of every ``explore``-th stage, which reruns the stalest candidate); plus the
    most frequent candidate over the runs at each stage, one letter per stage (L = ULA,
    M = MALA, H = HMC, U = unadjusted HMC)."""
    idx, names = res["move_index"], res["candidates"]
    k = len(names)
    stage = np.arange(idx.shape[-1])
    free = (stage >= k) & (stage % explore != explore - 1)
    freq = lambda sel: [float(np.mean(sel == c)) for c in range(k)]
    letters = [AUTO_LETTERS.get(name.split("(")[0], "?") for name in names]
    modal = "".join(letters[int(np.bincount(col, minlength=k).argmax())] for col in idx.T)
    return {"names": names, "all": freq(idx), "free": freq(idx[:, free]) if free.any() else
            [float("nan")] * k, "modal_per_stage": modal}


def blackjax_algorithm(problem, inner, n, steps, leapfrog, target_ess):
    d = problem.dim
    if inner == "mala":
        step_fn, init_fn = blackjax.mala.build_kernel(), blackjax.mala.init

        def params(particles):
            var = jnp.mean(jnp.var(particles, axis=0))
            return {"step_size": (var * d ** (-1.0 / 3.0))[None]}

    else:
        step_fn, init_fn = blackjax.hmc.build_kernel(), blackjax.hmc.init

        def params(particles):
            return {
                "step_size": jnp.full((1,), min(1.0, 1.2 * d ** (-0.25))),
                "inverse_mass_matrix": jnp.var(particles, axis=0)[None],
                "num_integration_steps": jnp.full((1,), leapfrog, jnp.int32),
            }

    algo = blackjax.inner_kernel_tuning(
        smc_algorithm=blackjax.adaptive_tempered_smc,
        logprior_fn=problem.log_prior,
        loglikelihood_fn=problem.log_lik,
        mcmc_step_fn=step_fn,
        mcmc_init_fn=init_fn,
        resampling_fn=systematic,
        mcmc_parameter_update_fn=lambda key, state, info: params(state.particles),
        initial_parameter_value=params(problem.prior_draws(jax.random.key(0), n)),
        num_mcmc_steps=steps,
        target_ess=target_ess,
    )
    grads_per_stage = steps * (leapfrog if inner == "hmc" else 1) + 1
    return algo, grads_per_stage


def run_blackjax(problem, inner, keys, n, steps, leapfrog, target_ess, repeats, max_stages=500):
    algo, grads_per_stage = blackjax_algorithm(problem, inner, n, steps, leapfrog, target_ess)

    def one(key):
        k_init, k_run = jax.random.split(key)
        state = algo.init(problem.prior_draws(k_init, n))

        def cond(c):
            state, _, i, _ = c
            return (state.sampler_state.tempering_param < 1.0) & (i < max_stages)

        def body(c):
            state, log_z, i, key = c
            key, sub = jax.random.split(key)
            state, info = algo.step(sub, state)
            return state, log_z + info.log_likelihood_increment, i + 1, key

        init = (state, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), k_run)
        state, log_z, stages, _ = jax.lax.while_loop(cond, body, init)
        s = state.sampler_state
        return log_z, s.particles, jnp.log(s.weights), stages

    compiled, compile_s = compile_timed(jax.vmap(one), keys)
    (log_z, z, log_w, stages), run_s, cpu_s = run_timed(compiled, keys, repeats=repeats)
    stages = np.asarray(stages)
    if np.any(stages >= max_stages):
        raise RuntimeError(f"BlackJAX {inner} on {problem.name} did not reach β = 1.")
    return {
        "log_z": np.asarray(log_z), "z": np.asarray(z), "log_w": np.asarray(log_w),
        "compile_s": compile_s, "run_s": run_s, "cpu_s": cpu_s, "mcmc_wall_s": float("nan"),
        "stages": float(stages.mean()), "grads": float(stages.mean() * grads_per_stage),
        "natural_stages": float(stages.mean()),
    }


def gradient_floor(problem, keys, n, repeats, chain=50):
    """One jitted, vmapped value-and-gradient of ``log γ_β`` for all particles of all seeds.

    Timed inside a compiled loop of ``chain`` dependent evaluations (each nudges the particles
    along the gradient, so none can be hoisted), divided by ``chain``: a lone call of a model
    this small would mostly time the dispatch, not the gradient."""

    def log_density(z, beta):
        return problem.log_prior(z) + beta * problem.log_lik(z)

    vg = jax.vmap(jax.vmap(jax.value_and_grad(log_density), (0, None)), (0, None))

    def evaluations(x, beta):
        def body(_, x):
            _, grad = vg(x, beta)
            return x + 1e-6 * grad

        return jax.lax.fori_loop(0, chain, body, x)

    x = jax.vmap(lambda k: problem.prior_draws(k, n))(keys)
    compiled, _ = compile_timed(evaluations, x, jnp.float32(0.5))
    _, wall, cpu = run_timed(compiled, x, jnp.float32(0.5), repeats=max(repeats, 5))
    return wall / chain, cpu / chain


# ----------------------------------------------------------------------------- profile
def profile_ours(problem, keys, n, move, repeats):
    """CPU cost of the pieces of one of our stages, for all seeds at once (seconds per call)."""
    k = JarzynskiSMC(problem.model, num_particles=n, move=move)
    args = problem.model_args
    state = k.init(keys, 10, None, args, {})
    evaluate = k._evaluate_fn(args, {})  # private, for profiling only
    x = flatten_sites(state.z)
    disc = {}
    lw = jax.random.normal(keys[0], x.shape[:2])
    lik = state.cache.log_lik
    out = {}

    def timed(name, fn, *a):
        compiled, _ = compile_timed(fn, *a)
        out[name] = run_timed(compiled, *a, repeats=max(repeats, 20))[2]  # CPU seconds

    timed("evaluate: prior + likelihood value_and_grad via the model", jax.vmap(lambda x: evaluate(x, disc)), x)
    timed("weight tail record (k-hat fitted after the run)", jax.vmap(W.weight_tail), lw)
    timed("resample (systematic) + gather", jax.vmap(
        lambda key, lw, x: x[R.get_scheme("systematic")(key, lw, lw.shape[0])]), keys, lw, x)
    timed("adaptive beta (bisection on CESS)", jax.vmap(
        lambda lw, ll: S.solve_next_beta(lambda b: W.conditional_ess(lw, b * ll), 0.0, 0.9, 1e-6)),
        lw, lik)
    timed("weighted_std (preconditioner)", jax.vmap(W.weighted_std), lw, x)
    timed("one full stage (smc_step)", jax.vmap(lambda s: k.sample(s, args, {})), state)
    return out


# ----------------------------------------------------------------------------- report
def posterior_errors(problem, z, log_w):
    """Weighted posterior marginals of every run against the reference, in reference sds.

    Returns ``run_err`` (per run: the worst marginal's ``|mean − ref mean| / ref sd``),
    ``pooled_err`` (the same for the mean over runs: the bias that more runs do not remove),
    the per-marginal ratio of the runs' mean weighted sd to the reference sd, and the index of
    the worst marginal (pooled)."""
    z, log_w = jnp.asarray(z), jnp.asarray(log_w)
    c = jax.vmap(jax.vmap(problem.constrain))(z) if problem.constrain is not None else z
    w = jax.nn.softmax(jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf), axis=-1)[..., None]
    mean = jnp.sum(w * c, axis=1)
    sd = jnp.sqrt(jnp.sum(w * (c - mean[:, None]) ** 2, axis=1))
    mean, sd = np.asarray(mean, np.float64), np.asarray(sd, np.float64)
    ref_m, ref_s = np.asarray(problem.post_mean), np.asarray(problem.post_sd)
    per_run = np.abs(mean - ref_m) / ref_s
    pooled = np.abs(mean.mean(0) - ref_m) / ref_s
    ratio = sd.mean(0) / ref_s
    return {"run_err": per_run.max(1), "pooled_err": float(pooled.max()),
            "worst": int(pooled.argmax()), "sd_ratio": ratio}


def summarise(problem, res):
    err = res["log_z"] - problem.log_z
    row = {
        "rmse": float(np.sqrt(np.mean(err**2))), "bias": float(err.mean()), "sd": float(err.std(ddof=1)),
        "finite": bool(np.all(np.isfinite(err))),
    }
    if problem.post_mean is not None:
        pe = posterior_errors(problem, res["z"], res["log_w"])
        row.update(post_med=float(np.median(pe["run_err"])), post_max=float(pe["run_err"].max()),
                   post_pool=pe["pooled_err"], worst=pe["worst"],
                   sd_lo=float(pe["sd_ratio"].min()), sd_hi=float(pe["sd_ratio"].max()))
    if problem.minor_mode is not None:
        w = jax.nn.softmax(jnp.asarray(res["log_w"]), axis=-1)
        mass = np.asarray(jnp.sum(w * jax.vmap(problem.minor_mode)(jnp.asarray(res["z"])), -1))
        row["mass_rmse"] = float(np.sqrt(np.mean((mass - 0.25) ** 2)))
    return row


# Budgets: the original targets keep the 5-gradient stage of the first table (BlackJAX HMC: one
# 4-step trajectory); the harder targets use issue 11's BlackJAX HMC of K = 5 steps of L = 10
# leapfrog per stage (51 gradients per stage with its re-initialisation).
OUR_METHODS = ("mala", "ula", "hmc", "uhmc", "auto")
DEFAULT_BUDGET = {"gauss10": (5, 4), "gauss50": (5, 4), "twomode": (5, 4),
                  "logistic": (51, 10), "funnel": (51, 10), "sv": (51, 10)}


def progress(method, res, log_z):
    """One line as each method finishes, so that a run stopped part-way still leaves them."""
    rmse = float(np.sqrt(np.mean((np.asarray(res["log_z"], np.float64) - log_z) ** 2)))
    print(f"  [{method} done: log-Z RMSE {rmse:.3f}, {res['stages']:.1f} stages, "
          f"{res['grads']:.0f} grads, compile "
          f"{res['compile_s']:.0f} s, run {res['run_s']:.1f} s wall, {res['cpu_s']:.1f} s cpu]",
          flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small smoke run (N=256, 10 seeds, 1 timed repetition)")
    p.add_argument("--particles", type=int, default=None, help="N (default 1024; quick 256)")
    p.add_argument("--seeds", type=int, default=None, help="independent runs (>= 10)")
    p.add_argument("--grads-per-stage", type=int, default=None,
                   help="gradients per particle per stage (default per target: 5 for "
                        "gauss10/gauss50/twomode, 51 for logistic/funnel/sv)")
    p.add_argument("--leapfrog", type=int, default=None,
                   help="HMC integration steps (default 4, or 10 on logistic/funnel/sv)")
    p.add_argument("--target-ess", type=float, default=0.9, help="adaptive (C)ESS target, both")
    p.add_argument("--problems", default="gauss10,gauss50,twomode,logistic,funnel,sv")
    p.add_argument("--methods", default=",".join(OUR_METHODS),
                   help="our methods to run, of " + ",".join(OUR_METHODS) + " (BlackJAX's "
                        "MALA and HMC always run: they set the budget and the ratios)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repetitions (best of; default 3, quick 1)")
    p.add_argument("--profile", action="store_true", help="time the pieces of our stage")
    p.add_argument("--no-mcmc-run", action="store_true",
                   help="skip the end-to-end MCMC.run of our kernel (saves one tracing and "
                        "compilation per move); report the timed loop's log Z")
    p.add_argument("--save", default=None,
                   help="write every run's log Z and each method's timings here (JSON)")
    a = p.parse_args(argv)
    n = a.particles or (256 if a.quick else 1024)
    seeds = a.seeds or (10 if a.quick else 20)
    repeats = a.repeats or (1 if a.quick else 3)
    if seeds < 10:
        p.error("--seeds must be at least 10 (the RMSE needs independent runs).")
    names = a.problems.split(",")
    methods = a.methods.split(",")
    if set(methods) - set(OUR_METHODS):
        p.error(f"unknown methods {sorted(set(methods) - set(OUR_METHODS))}; choose from "
                f"{','.join(OUR_METHODS)}")
    unknown = set(names) - set(DEFAULT_BUDGET)
    if unknown:
        p.error(f"unknown problems {sorted(unknown)}; choose from {sorted(DEFAULT_BUDGET)}")
    budgets = {}
    for name in names:
        g = a.grads_per_stage or DEFAULT_BUDGET[name][0]
        leap = a.leapfrog or DEFAULT_BUDGET[name][1]
        if g < 2 or (g - 1) % leap:
            p.error("--grads-per-stage minus 1 must be a positive multiple of --leapfrog "
                    "(BlackJAX HMC spends one gradient per stage re-initialising).")
        budgets[name] = (g, leap)

    makers = {"gauss10": lambda: gaussian_problem(10), "gauss50": lambda: gaussian_problem(50),
              "twomode": lambda: two_mode_problem(),
              "logistic": lambda: logistic_problem(load_references()),
              "funnel": lambda: funnel_problem(), "sv": lambda: sv_problem(load_references())}
    print(f"# smc_vs_blackjax: N={n}, seeds={seeds}, target ESS={a.target_ess}, "
          f"repeats={repeats}, jax {jax.__version__}, numpyro {numpyro.__version__}, "
          f"blackjax {blackjax.__version__}, {jax.devices()[0].platform}, {platform.machine()}")
    keys = jax.random.split(jax.random.key(2024), seeds)
    summary = []
    for name in names:
        w_start, c_start = time.perf_counter(), time.process_time()
        problem = makers[name]()
        g, leap = budgets[name]
        kind = "exact" if problem.log_z_se == 0 else f"reference ± {problem.log_z_se:.4f}"
        print(f"\n## {problem.name} (d={problem.dim}, {kind} log Z = {problem.log_z:.4f}; "
              f"{problem.ref_note})")
        auto = Auto()
        auto_unit = max(c.grads_per_move for c in auto.candidates)
        auto_moves = max(1, round(g / auto_unit))
        auto_split = ", ".join(f"{auto_label(c)} x{m}" for c, m in zip(
            auto.candidates, auto.moves_per_stage(auto_moves)))
        print(f"budget: {g} gradients per particle per stage; BlackJAX MALA {g - 1} steps, "
              f"BlackJAX HMC {(g - 1) // leap} steps of L={leap}; ours MALA/ULA {g} moves, "
              f"HMC/UHMC {(g - 1) // leap} moves of L={leap}; auto num_moves={auto_moves}: "
              f"{auto_moves * auto_unit} gradients per stage ({auto_split})")
        results = {}
        results["bj-mala"] = run_blackjax(problem, "mala", keys, n, g - 1, 1, a.target_ess, repeats)
        progress("bj-mala", results["bj-mala"], problem.log_z)
        results["bj-hmc"] = run_blackjax(
            problem, "hmc", keys, n, (g - 1) // leap, leap, a.target_ess, repeats)
        progress("bj-hmc", results["bj-hmc"], problem.log_z)
        # Same budget: our stage count K + 1 = BlackJAX's mean stage count, g moves per stage.
        stages = max(2, round(results["bj-mala"]["stages"]))
        # Hamiltonian moves: (g − 1) // L moves of L leapfrog steps (one gradient fewer per
        # stage than the others: our cache makes BlackJAX's re-initialising gradient free).
        # move="auto" (its default candidates): num_moves × (largest grads_per_move) gradients
        # per stage for whichever candidate it runs, the nearest to g.
        ours = {"mala": ("mala", g), "ula": ("ula", g),
                "hmc": (HMC(num_steps=leap), (g - 1) // leap),
                "uhmc": (UHMC(num_steps=leap), (g - 1) // leap),
                "auto": (auto, auto_moves)}
        ours = {m: ours[m] for m in OUR_METHODS if m in methods}
        for name_, (move, moves) in ours.items():
            results[f"ours-{name_}"] = run_ours(
                problem, move, keys, n, stages - 1, moves, a.target_ess, repeats,
                mcmc_run=not a.no_mcmc_run)
            progress(f"ours-{name_}", results[f"ours-{name_}"], problem.log_z)
        floor_wall, floor = gradient_floor(problem, keys, n, repeats)

        # "/floor": CPU seconds per gradient evaluation over the CPU seconds of the floor.
        head = (f"{'method':10s} {'RMSE':>7s} {'bias':>7s} {'sd':>6s} {'stages':>6s} {'grads':>6s} "
                f"{'compile s':>9s} {'run s':>7s} {'cpu s':>7s} {'/floor':>6s}")
        has_post = problem.post_mean is not None
        if has_post:
            head += f" {'post med':>8s} {'post max':>8s} {'pooled':>6s} {'sd ratio':>11s}"
        if problem.minor_mode is not None:
            head += f" {'mass RMSE':>9s}"
        print(head)
        rows = {}
        for m, res in results.items():
            r = rows[m] = summarise(problem, res)
            per_grad = res["cpu_s"] / res["grads"]
            line = (f"{m:10s} {r['rmse']:7.3f} {r['bias']:+7.3f} {r['sd']:6.3f} "
                    f"{res['stages']:6.1f} {res['grads']:6.0f} {res['compile_s']:9.1f} "
                    f"{res['run_s']:7.2f} {res['cpu_s']:7.2f} {per_grad / floor:6.1f}")
            if has_post:
                line += (f" {r['post_med']:8.3f} {r['post_max']:8.3f} {r['post_pool']:6.3f} "
                         f"{r['sd_lo']:5.2f}-{r['sd_hi']:<5.2f}")
            if "mass_rmse" in r:
                line += f" {r['mass_rmse']:9.3f}"
            print(line + ("" if r["finite"] else "  NON-FINITE log Z"))
        print(f"gradient floor (one vmapped value_and_grad, {seeds}x{n} particles): "
              f"{floor_wall:.2e} s wall, {floor:.2e} s cpu")
        floor_rmse = None
        if problem.tempered_draws is not None:
            # Cheap (no moves): 200 runs, so that the floor carries ~5 % error, not ~16 %.
            floor_runs = max(seeds, 200)
            floor_rmse, floor_stages = mixing_floor(problem, n, floor_runs, a.target_ess)
            print(f"perfect-mixing floor (exact draws from every tempered target, same ESS "
                  f"target, N={n}, {floor_runs} runs): log-Z RMSE {floor_rmse:.3f} = "
                  f"{floor_rmse / rows['bj-hmc']['rmse']:.2f}x BlackJAX-HMC's, "
                  f"{floor_stages:.1f} stages")
        if has_post and problem.names:
            print("worst marginal (pooled): " + ", ".join(
                f"{m} {problem.names[rows[m]['worst']]}" for m in results))
        ours_methods = [f"ours-{m}" for m in ours]
        for m in ours_methods:
            res = results[m]
            print(f"{m}: stages to reach beta=1 on its own {res['natural_stages']:.1f} of "
                  f"{res['stages']:.0f}; MCMC.run end to end (trace+compile+run) "
                  f"{res['mcmc_wall_s']:.1f} s; max |log Z(timed loop) - log Z(MCMC.run)| "
                  f"{res['loop_diff']:.1e}")
        if "ours-auto" in results:
            ch = auto_choices(results["ours-auto"], auto.explore)
            results["ours-auto"]["choices"] = ch
            share = lambda f, names=ch["names"]: ", ".join(
                f"{c} {x:.0%}" for c, x in zip(names, f))
            print(f"ours-auto choices (fraction of stages x runs): {share(ch['all'])}; free "
                  f"stages only (not the first trials nor every {auto.explore}th "
                  f"exploration): {share(ch['free'])}")
            print(f"ours-auto most frequent choice per stage (L=ULA M=MALA H=HMC U=UHMC): "
                  f"{ch['modal_per_stage']}")
        print("ratios ours/BlackJAX (RMSE, wall time, CPU time, grads):")
        for m in ours_methods:
            for b in ("bj-mala", "bj-hmc"):
                print(f"  {m} / {b}: RMSE {rows[m]['rmse'] / rows[b]['rmse']:.2f}, "
                      f"time {results[m]['run_s'] / results[b]['run_s']:.2f}, "
                      f"cpu {results[m]['cpu_s'] / results[b]['cpu_s']:.2f}, "
                      f"grads {results[m]['grads'] / results[b]['grads']:.2f}")
        if a.profile:
            print("profile of one of our stages (all seeds, seconds per call):")
            for move in ("mala", "ula"):
                for part, t in profile_ours(problem, keys, n, move, repeats).items():
                    print(f"  [{move}] {part:55s} {t:.2e}  ({t / floor:.1f} floors)")
        print(f"({problem.name}: {time.perf_counter() - w_start:.0f} s wall, "
              f"{time.process_time() - c_start:.0f} s cpu for this section, compile included)")
        summary.append((problem.name, rows, floor_rmse))
        if a.save:
            path = pathlib.Path(a.save)
            saved = json.loads(path.read_text()) if path.exists() else {}
            saved[problem.name] = {
                "log_z_ref": problem.log_z, "N": n, "seeds": seeds, "grads_per_stage": g,
                "leapfrog": leap, "methods": {m: {
                    "log_z": np.asarray(res["log_z"], np.float64).tolist(),
                    **{k: float(res[k]) for k in ("grads", "stages", "run_s", "cpu_s",
                                                   "compile_s")},
                    **{k: v for k, v in rows[m].items() if k != "finite"},
                    **({"choices": res["choices"]} if "choices" in res else {})}
                    for m, res in results.items()}}
            path.write_text(json.dumps(saved, indent=1))

    # One line per target: our RMSE over BlackJAX-HMC's (the target is <= 0.7).
    print("\n## summary: log-Z RMSE ours / BlackJAX-HMC (target <= 0.7), BlackJAX-HMC RMSE")
    ours_names = [m for m in OUR_METHODS if m in methods]
    # "floor": the perfect-mixing floor over BlackJAX-HMC's RMSE (where the tempered
    # posteriors can be drawn exactly): no method can go below it at this schedule.
    print(f"{'target':9s} " + " ".join(f"{m:>6s}" for m in ours_names)
          + f" {'bj-hmc':>7s} {'floor':>6s}")
    for name, rows, floor_rmse in summary:
        b = rows["bj-hmc"]["rmse"]
        fl = "     -" if floor_rmse is None else f"{floor_rmse / b:6.2f}"
        print(f"{name:9s} " + " ".join(f"{rows[f'ours-{m}']['rmse'] / b:6.2f}"
                                      for m in ours_names) + f" {b:7.3f} {fl}")


if __name__ == "__main__":
    main()
