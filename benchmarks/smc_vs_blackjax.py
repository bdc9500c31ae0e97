"""Peer benchmark: ``JarzynskiSMC`` (through ``numpyro.infer.MCMC``) vs BlackJAX 1.7's adaptive
tempered SMC, on targets with an exact log evidence.

Targets (float32, exact log Z in float64):

* ``gauss10`` / ``gauss50``: ``z ~ N(0, I_d)``, ``y_j ~ N(z, I_d)`` for ``j = 1..n``. Each
  coordinate of the data is ``N(0, I_n + 11ᵀ)``, so
  ``log Z = -½ [d n log 2π + d log(1 + n) + Σ_k y_kᵀ (I − 11ᵀ/(1+n)) y_k]``.
* ``twomode``: prior ``N(0, s² I_d)``, likelihood ``L(z) = Σ_j w_j N(z; μ_j, σ² I_d)`` with
  ``μ_2 = −μ_1`` and ``w = (0.25, 0.75)``. Then ``Z = Σ_j w_j N(μ_j; 0, (s² + σ²) I_d)``
  ``= N(μ_1; 0, (s² + σ²) I_d)`` and the posterior mode masses are exactly ``w``.

Both samplers run at the same N, the same adaptive target ESS and (as near as adaptivity allows)
the same number of gradient evaluations of the log density per particle:

* ours: MALA and ULA with ``m = G`` moves per stage, HMC and unadjusted HMC (``UHMC``) with
  ``(G − 1) / L`` moves of ``L`` leapfrog steps (prior and likelihood parts are cached, so
  changing β costs no gradient), ``K`` stages, plus the initial evaluation;
* BlackJAX: each stage re-initialises its inner kernel at the new temperature (one gradient),
  then MALA costs one gradient per step and HMC ``L`` per step: ``T·(steps·L + 1)``, where
  ``T`` is the number of adaptive stages it needed (measured).

BlackJAX does not return log Z: it is accumulated from ``info.log_likelihood_increment`` and
checked against the exact value. Its inner kernels are tuned from the particles with
``blackjax.inner_kernel_tuning`` (the scalar MALA step scaled by the mean particle variance;
HMC with the diagonal inverse mass matrix of the particles), as its documentation does.

Timings: every configuration is compiled ahead of time (``jit(...).lower(...).compile()``),
so the reported compile time and run time are separate; seeds are ``vmap``-ed into one call.
Our timed program is the kernel's own ``init`` + ``sample`` loop that ``MCMC`` runs (same keys,
checked to give the same log Z); ``MCMC.run`` itself is also timed end to end.

Run: ``MPLBACKEND=Agg python benchmarks/smc_vs_blackjax.py --quick`` (a few minutes on two CPU
cores) or without ``--quick`` for the full table.
"""

import argparse
import math
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

from numpyro_jarzynski import HMC, UHMC, JarzynskiSMC
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
    log_z: float  # exact
    minor_mode: Callable = None  # (n, d) -> bool mask of the 0.25-mass mode


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
    return Problem(
        name=f"gauss{dim}",
        dim=dim,
        model=model,
        model_args=(yj,),
        log_prior=lambda z: jnp.sum(dist.Normal(0.0, 1.0).log_prob(z)),
        log_lik=lambda z: jnp.sum(dist.Normal(z, 1.0).log_prob(yj)),
        prior_draws=lambda key, n: jax.random.normal(key, (n, dim)),
        log_z=float(log_z),
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
    )


# ----------------------------------------------------------------------------- runners
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


def run_ours(problem, move, keys, n, num_warmup, num_moves, target_ess, repeats):
    """MCMC.run for the user-facing numbers, then the same init/sample loop compiled AOT."""
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
    mcmc.run(keys[0], *problem.model_args)
    log_z = np.asarray(jax.block_until_ready(mcmc.last_state.log_evidence))
    mcmc_wall = time.perf_counter() - t0
    chain_keys = jax.random.split(keys[0], num_seeds)  # what MCMC gives the vectorized chains

    k = kernel()
    args = problem.model_args

    def loop(chain_keys):
        state = k.init(chain_keys, num_warmup, None, args, {})
        step = lambda s: k.sample(s, args, {})  # vmaps over the runs itself
        state = jax.lax.fori_loop(0, num_warmup + 1, lambda i, s: step(s), state)
        beta_one = jnp.argmax(state.history.beta >= 1.0, axis=-1) + 1  # stages to reach β = 1
        return state.log_evidence, state.z["z"], state.log_weights, beta_one

    compiled, compile_s = compile_timed(loop, chain_keys)
    (lz_loop, z, log_w, natural), run_s, cpu_s = run_timed(compiled, chain_keys, repeats=repeats)
    # Same keys, same kernel functions: most runs agree to float32 rounding, but XLA fuses the
    # two programs differently and one flipped accept/resample decision sends a run down
    # another (equally valid) path. So compare the two sets of runs statistically.
    lz_loop = np.asarray(lz_loop)
    diff = np.abs(lz_loop - np.asarray(log_z))
    se = np.sqrt((lz_loop.var(ddof=1) + np.var(log_z, ddof=1)) / len(log_z))
    if abs(lz_loop.mean() - np.mean(log_z)) > 4 * se + 1e-3:
        raise AssertionError(f"timed loop and MCMC.run disagree: {lz_loop} vs {log_z}")
    stages = num_warmup + 1
    return {
        "log_z": log_z, "z": np.asarray(z), "log_w": np.asarray(log_w), "compile_s": compile_s, "run_s": run_s,
        "cpu_s": cpu_s, "mcmc_wall_s": mcmc_wall, "stages": float(stages), "grads": float(stages * num_moves * as_kernel(move).grads_per_move + 1),
        "natural_stages": float(np.mean(np.asarray(natural))), "loop_diff": float(diff.max()),
    }


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
    x = state.z["z"]
    disc = {}
    lw = jax.random.normal(keys[0], x.shape[:2])
    lik = state.cache.log_lik
    out = {}

    def timed(name, fn, *a):
        compiled, _ = compile_timed(fn, *a)
        out[name] = run_timed(compiled, *a, repeats=max(repeats, 20))[2]  # CPU seconds

    timed("evaluate: prior + likelihood value_and_grad via the model", jax.vmap(lambda x: evaluate(x, disc)), x)
    timed("pareto_khat", jax.vmap(W.pareto_khat), lw)
    timed("resample (systematic) + gather", jax.vmap(
        lambda key, lw, x: x[R.get_scheme("systematic")(key, lw, lw.shape[0])]), keys, lw, x)
    timed("adaptive beta (bisection on CESS)", jax.vmap(
        lambda lw, ll: S.solve_next_beta(lambda b: W.conditional_ess(lw, b * ll), 0.0, 0.9, 1e-6)),
        lw, lik)
    timed("weighted_std (preconditioner)", jax.vmap(W.weighted_std), lw, x)
    timed("one full stage (smc_step)", jax.vmap(lambda s: k.sample(s, args, {})), state)
    return out


# ----------------------------------------------------------------------------- report
def summarise(problem, res):
    err = res["log_z"] - problem.log_z
    row = {
        "rmse": float(np.sqrt(np.mean(err**2))), "bias": float(err.mean()), "sd": float(err.std(ddof=1)),
        "finite": bool(np.all(np.isfinite(err))),
    }
    if problem.minor_mode is not None:
        w = jax.nn.softmax(jnp.asarray(res["log_w"]), axis=-1)
        mass = np.asarray(jnp.sum(w * jax.vmap(problem.minor_mode)(jnp.asarray(res["z"])), -1))
        row["mass_rmse"] = float(np.sqrt(np.mean((mass - 0.25) ** 2)))
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke run (N=256, 10 seeds)")
    p.add_argument("--particles", type=int, default=None, help="N (default 1024; quick 256)")
    p.add_argument("--seeds", type=int, default=None, help="independent runs (>= 10)")
    p.add_argument("--grads-per-stage", type=int, default=5, help="gradients per particle per stage")
    p.add_argument("--leapfrog", type=int, default=4, help="HMC integration steps")
    p.add_argument("--target-ess", type=float, default=0.9, help="adaptive (C)ESS target, both")
    p.add_argument("--problems", default="gauss10,gauss50,twomode")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions (best of)")
    p.add_argument("--profile", action="store_true", help="time the pieces of our stage")
    a = p.parse_args(argv)
    n = a.particles or (256 if a.quick else 1024)
    seeds = a.seeds or (10 if a.quick else 20)
    repeats = a.repeats or 3
    if seeds < 10:
        p.error("--seeds must be at least 10 (the RMSE needs independent runs).")
    g = a.grads_per_stage
    if g < 2 or (g - 1) % a.leapfrog:
        p.error("--grads-per-stage minus 1 must be a positive multiple of --leapfrog "
                "(BlackJAX HMC spends one gradient per stage re-initialising).")

    makers = {"gauss10": lambda: gaussian_problem(10), "gauss50": lambda: gaussian_problem(50),
              "twomode": lambda: two_mode_problem()}
    print(f"# smc_vs_blackjax: N={n}, seeds={seeds}, grads/stage={g}, target ESS={a.target_ess}, "
          f"jax {jax.__version__}, numpyro {numpyro.__version__}, blackjax {blackjax.__version__}, "
          f"{jax.devices()[0].platform}, {platform.machine()}")
    keys = jax.random.split(jax.random.key(2024), seeds)
    for name in a.problems.split(","):
        problem = makers[name]()
        print(f"\n## {problem.name} (d={problem.dim}, exact log Z = {problem.log_z:.4f})")
        results = {}
        results["bj-mala"] = run_blackjax(problem, "mala", keys, n, g - 1, 1, a.target_ess, repeats)
        results["bj-hmc"] = run_blackjax(
            problem, "hmc", keys, n, (g - 1) // a.leapfrog, a.leapfrog, a.target_ess, repeats)
        # Same budget: our stage count K + 1 = BlackJAX's mean stage count, g moves per stage.
        stages = max(2, round(results["bj-mala"]["stages"]))
        # Hamiltonian moves: (g − 1) // L moves of L leapfrog steps (one gradient fewer per
        # stage than the others: our cache makes BlackJAX's re-initialising gradient free).
        ours = {"mala": ("mala", g), "ula": ("ula", g),
                "hmc": (HMC(num_steps=a.leapfrog), (g - 1) // a.leapfrog),
                "uhmc": (UHMC(num_steps=a.leapfrog), (g - 1) // a.leapfrog)}
        for name_, (move, moves) in ours.items():
            results[f"ours-{name_}"] = run_ours(
                problem, move, keys, n, stages - 1, moves, a.target_ess, repeats)
        floor_wall, floor = gradient_floor(problem, keys, n, repeats)

        # "/floor": CPU seconds per gradient evaluation over the CPU seconds of the floor.
        head = (f"{'method':10s} {'RMSE':>7s} {'bias':>7s} {'sd':>6s} {'stages':>6s} {'grads':>6s} "
                f"{'compile s':>9s} {'run s':>7s} {'cpu s':>7s} {'/floor':>6s}")
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
            if "mass_rmse" in r:
                line += f" {r['mass_rmse']:9.3f}"
            print(line + ("" if r["finite"] else "  NON-FINITE log Z"))
        print(f"gradient floor (one vmapped value_and_grad, {seeds}x{n} particles): "
              f"{floor_wall:.2e} s wall, {floor:.2e} s cpu")
        for m in ("ours-mala", "ours-ula", "ours-hmc", "ours-uhmc"):
            res = results[m]
            print(f"{m}: stages to reach beta=1 on its own {res['natural_stages']:.1f} of "
                  f"{res['stages']:.0f}; MCMC.run end to end (trace+compile+run) "
                  f"{res['mcmc_wall_s']:.1f} s; max |log Z(timed loop) - log Z(MCMC.run)| "
                  f"{res['loop_diff']:.1e}")
        print("ratios ours/BlackJAX (RMSE, wall time, CPU time, grads):")
        for m in ("ours-mala", "ours-ula", "ours-hmc", "ours-uhmc"):
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


if __name__ == "__main__":
    main()
