"""What a call of ``mcmc.run`` costs: first call, second call, and many data sets at once.

In one process, interleaved repetition by repetition, process CPU time (``time.process_time``,
the machines are shared) beside wall time, compilation *included* (it is the point here):

* **ours, first call**: a new ``JarzynskiSMC`` kernel (so a new program), ``MCMC.run``
  end to end: model inspection, trace, compile, run.
* **ours, second call**: the same ``MCMC`` object, a new key (and, with
  ``jit_model_args=True``, new data of the same shapes).
* **ours, compiled loop**: the program the second call runs, called directly (its own CPU
  time: the floor a second call can reach).
* **NumPyro NUTS**, first and second ``mcmc.run`` (500 warmup + 1000 samples, one chain).
  NumPyro's ``MCMC.run`` retraces and recompiles its loop on every call.
* **BlackJAX**: ``adaptive_tempered_smc`` with the same inner move (MALA, or HMC with the
  same leapfrog steps), the same N and moves per stage, ``jit`` + first call (compile + run).

Targets (issue 11): second call ≤ 1.1× the compiled loop, ≤ 1.0× NUTS' second call; first
call ≤ 1.0× BlackJAX's compile + run.

**Many data sets.** The eight-schools model on 100 simulated data sets × 1000 particles:
``jax.jit(jax.vmap(smc(model).run))`` in one compiled call, against 100 sequential
``mcmc.run`` calls (which reuse one program since the reruns are cached).

Run: ``python benchmarks/rerun_cost.py`` (``--quick``: 2 repetitions, 20 data sets).
"""

import argparse
import os
import platform
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

import blackjax
import numpyro
import numpyro.distributions as dist
from blackjax.smc.resampling import systematic
from numpyro.infer import MCMC, NUTS
from trust_models import S8, Y8, breast_cancer, logistic, schools_noncentred

import numpyro_jarzynski as nj
from numpyro_jarzynski import JarzynskiSMC

N = 1000
NUM_MOVES = 2


def timed(fn):
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return out, time.process_time() - c, time.perf_counter() - w


def problems():
    x, y = breast_cancer()
    return {
        "eight schools": (schools_noncentred, (jnp.asarray(S8), jnp.asarray(Y8)), 30),
        "logistic": (logistic, (jnp.asarray(x), jnp.asarray(y)), 40),
    }


def log_densities(name, args):
    """``(log prior, log likelihood, d)`` of the flat unconstrained parameters, written out
    (the same densities JarzynskiSMC tempers)."""
    if name == "eight schools":
        sigma, y = args

        def log_prior(x):
            mu, log_tau, eta = x[0], x[1], x[2:]
            return (dist.Normal(0.0, 5.0).log_prob(mu)
                    + dist.HalfCauchy(5.0).log_prob(jnp.exp(log_tau)) + log_tau
                    + jnp.sum(dist.Normal(0.0, 1.0).log_prob(eta)))

        def log_lik(x):
            return jnp.sum(dist.Normal(x[0] + jnp.exp(x[1]) * x[2:], sigma).log_prob(y))

        return log_prior, log_lik, 10
    xs, y = args

    def log_prior(w):
        return jnp.sum(dist.Normal(0.0, 1.0).log_prob(w))

    def log_lik(w):
        return jnp.sum(dist.Bernoulli(logits=xs @ w).log_prob(y))

    return log_prior, log_lik, xs.shape[1]


def blackjax_first_call(name, args, move, key):
    """``adaptive_tempered_smc`` with ``inner_kernel_tuning`` on the same densities, the same
    N and moves per stage: ``jax.jit`` + first call (compile + run)."""
    log_prior, log_lik, d = log_densities(name, args)

    if move == "mala":
        step_fn, init_fn = blackjax.mala.build_kernel(), blackjax.mala.init

        def params(p):
            return {"step_size": (jnp.mean(jnp.var(p, axis=0)) * d ** (-1 / 3))[None]}
    else:
        step_fn, init_fn = blackjax.hmc.build_kernel(), blackjax.hmc.init

        def params(p):
            return {"step_size": jnp.full((1,), min(1.0, 1.2 * d ** -0.25)),
                    "inverse_mass_matrix": jnp.var(p, axis=0)[None],
                    "num_integration_steps": jnp.full((1,), 5, jnp.int32)}

    def run(key):
        k0, k1 = jax.random.split(key)
        x0 = jax.random.normal(k0, (N, d))  # a proposal, not the prior: cost only
        algo = blackjax.inner_kernel_tuning(
            smc_algorithm=blackjax.adaptive_tempered_smc, logprior_fn=log_prior,
            loglikelihood_fn=log_lik, mcmc_step_fn=step_fn, mcmc_init_fn=init_fn,
            resampling_fn=systematic,
            mcmc_parameter_update_fn=lambda key, state, info: params(state.particles),
            initial_parameter_value=params(x0), num_mcmc_steps=NUM_MOVES, target_ess=0.9)
        state = algo.init(x0)

        def cond(c):
            return (c[0].sampler_state.tempering_param < 1.0) & (c[2] < 500)

        def body(c):
            state, log_z, i, key = c
            key, sub = jax.random.split(key)
            state, info = algo.step(sub, state)
            return state, log_z + info.log_likelihood_increment, i + 1, key

        return jax.lax.while_loop(cond, body, (state, 0.0, 0, k1))[1]

    return timed(lambda: jax.jit(run)(key))


def rerun_rows(reps, move):
    rows = []
    for name, (model, args, num_stages) in problems().items():
        # new data of the same shapes: schools' y shifted, the logistic labels flipped
        y2 = args[1] + 1.0 if name == "eight schools" else 1.0 - args[1]
        data2 = (args[0], y2)
        for r in range(reps):
            row = {"model": name, "move": move, "rep": r}
            kernel = JarzynskiSMC(model, num_particles=N, move=move, num_moves=NUM_MOVES)
            mcmc = MCMC(kernel, num_warmup=num_stages, num_samples=1, progress_bar=False,
                        jit_model_args=True)
            def run_mcmc(m, key, data):
                m.run(key, *data)
                return m.last_state.log_evidence if hasattr(m.last_state, "log_evidence") \
                    else m.get_samples()

            _, row["ours_first_cpu"], row["ours_first_wall"] = timed(
                partial(run_mcmc, mcmc, jax.random.key(r), args))
            _, row["ours_second_cpu"], row["ours_second_wall"] = timed(
                partial(run_mcmc, mcmc, jax.random.key(100 + r), data2))
            program = next(reversed(kernel._programs.values()))
            dyn = tuple(jax.tree.leaves((data2, {})))
            _, row["loop_cpu"], row["loop_wall"] = timed(
                partial(program, jax.random.key(200 + r), dyn))
            nuts = MCMC(NUTS(model), num_warmup=500, num_samples=1000, progress_bar=False,
                        jit_model_args=True)
            _, row["nuts_first_cpu"], row["nuts_first_wall"] = timed(
                partial(run_mcmc, nuts, jax.random.key(r), args))
            _, row["nuts_second_cpu"], row["nuts_second_wall"] = timed(
                partial(run_mcmc, nuts, jax.random.key(100 + r), data2))
            _, row["bj_first_cpu"], row["bj_first_wall"] = blackjax_first_call(
                name, args, move, jax.random.key(r))
            rows.append(row)
            print(f"{name:14s} {move} rep {r}: " + ", ".join(
                f"{k} {v:.2f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    return rows


def sbc_row(num_data):
    """Eight schools on ``num_data`` simulated data sets: one vmapped call against
    ``num_data`` sequential ``mcmc.run`` calls."""
    sigma = jnp.asarray(S8)

    def simulate(key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        mu = 5.0 * jax.random.normal(k1)
        tau = jnp.abs(5.0 * jax.random.cauchy(k2))
        theta = mu + tau * jax.random.normal(k3, (8,))
        return theta + sigma * jax.random.normal(k4, (8,))

    ys = jax.vmap(simulate)(jax.random.split(jax.random.key(0), num_data))
    keys = jax.random.split(jax.random.key(1), num_data)
    algo = nj.smc(schools_noncentred, num_stages=30, num_particles=N, num_moves=NUM_MOVES)
    run = jax.jit(jax.vmap(lambda k, y: algo.run(k, sigma, y)))
    _, v_cpu, v_wall = timed(lambda: run(keys, ys).log_evidence)
    _, v2_cpu, v2_wall = timed(lambda: run(keys, ys).log_evidence)
    mcmc = MCMC(JarzynskiSMC(schools_noncentred, num_particles=N, num_moves=NUM_MOVES),
                num_warmup=30, num_samples=1, progress_bar=False, jit_model_args=True)

    mcmc.run(keys[0], sigma, ys[0])  # compile once (the reruns reuse the program)

    def sequential():
        out = []
        for i in range(num_data):
            mcmc.run(keys[i], sigma, ys[i])
            out.append(mcmc.last_state.log_evidence)
        return jnp.stack(out)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # simulated data sets with huge tau warn; cost only
        _, s_cpu, s_wall = timed(sequential)
    return {"num_data": num_data, "vmap_cpu": v_cpu, "vmap_wall": v_wall,
            "vmap_again_cpu": v2_cpu, "vmap_again_wall": v2_wall, "seq_cpu": s_cpu,
            "seq_wall": s_wall}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sbc-only", action="store_true", help="only the many-data-sets part")
    a = p.parse_args(argv)
    reps, num_data = (2, 20) if a.quick else (3, 100)
    if a.sbc_only:
        return print_sbc(sbc_row(num_data))
    print(f"jax {jax.__version__}, numpyro {numpyro.__version__}, blackjax "
          f"{blackjax.__version__}, {platform.machine()}, {os.cpu_count()} cores; N={N}, "
          f"{NUM_MOVES} moves/stage; compilation included")
    rows = rerun_rows(reps, "mala") + rerun_rows(reps, "hmc")
    print("\nmedian over repetitions (CPU s; wall s in brackets); ratios on CPU")
    print(f"{'model':14s} {'move':5s} {'ours 1st':>14s} {'BJ 1st':>14s} {'1st/BJ':>7s} "
          f"{'ours 2nd':>13s} {'loop':>13s} {'2nd/loop':>8s} {'NUTS 2nd':>13s} "
          f"{'2nd/NUTS':>8s}")
    for name in problems():
        for move in ("mala", "hmc"):
            sel = [r for r in rows if r["model"] == name and r["move"] == move]

            def med(k, sel=sel):
                return float(np.median([r[k] for r in sel]))

            print(f"{name:14s} {move:5s} "
                  f"{med('ours_first_cpu'):6.2f} ({med('ours_first_wall'):5.2f}) "
                  f"{med('bj_first_cpu'):6.2f} ({med('bj_first_wall'):5.2f}) "
                  f"{med('ours_first_cpu') / med('bj_first_cpu'):7.2f} "
                  f"{med('ours_second_cpu'):5.3f} ({med('ours_second_wall'):5.3f}) "
                  f"{med('loop_cpu'):5.3f} ({med('loop_wall'):5.3f}) "
                  f"{med('ours_second_cpu') / med('loop_cpu'):8.2f} "
                  f"{med('nuts_second_cpu'):5.2f} ({med('nuts_second_wall'):5.2f}) "
                  f"{med('ours_second_cpu') / med('nuts_second_cpu'):8.3f}")
            print(f"{'':20s} NUTS first call {med('nuts_first_cpu'):.2f} CPU s")
    print_sbc(sbc_row(num_data))


def print_sbc(s):
    print(f"\neight schools, {s['num_data']} data sets x {N} particles, 30 stages:")
    print(f"  one vmapped compiled call (incl. compile): {s['vmap_cpu']:.2f} CPU s "
          f"({s['vmap_wall']:.2f} wall); again, compiled: {s['vmap_again_cpu']:.2f} CPU s")
    print(f"  {s['num_data']} sequential mcmc.run calls on one compiled program (compile "
          f"excluded): {s['seq_cpu']:.2f} CPU s ({s['seq_wall']:.2f} wall)")
    print(f"  ratio sequential / vmapped, both compiled: {s['seq_cpu'] / s['vmap_again_cpu']:.2f}")


if __name__ == "__main__":
    main()
