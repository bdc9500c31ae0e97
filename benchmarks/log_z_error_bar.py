"""Is one run's error bar on log Z right? ``state.log_evidence_se`` against many runs.

``SMCState.log_evidence_se`` is Lee & Whiteley's (2018) single-run estimate of the Monte Carlo
error of ``log Ẑ`` from the particles' genealogy (each walker's ancestor in the initial
population, carried through every resampling). It is unbiased for the variance of ``Ẑ`` when
the resampling is multinomial, the package's default since this script; with systematic
resampling (the default before) it has no such guarantee.

For each target and each scheme this runs 32 independent runs (chains vmapped, the kernel's
own ``init`` + ``sample`` loop compiled ahead of time, as ``benchmarks/discrete_mixture.py``
does) and prints:

* the real error: the sd of the 32 log-Z estimates and their RMSE against the exact value;
* the error bar: the root mean square of the 32 runs' ``log_evidence_se``, and the ratio
  RMSE / error bar (1 when the error bar is right; above 1 when it is too small);
* coverage: the fraction of runs whose log Z is within 2 error bars of the truth (0.95 for
  a right error bar and Gaussian errors);
* the runs' agreement check (``report.disagreement``) on the 8 groups of 4 runs a user would
  run as ``num_chains=4``: how many of the 8 it flags (0–1 expected when the runs are right);
* the resamplings per run and the CPU seconds of the 32 runs (compilation excluded).

Targets: the conjugate Gaussians d = 10 and d = 50 (MALA, 2 moves per stage; UHMC, one
trajectory of 4 steps, on d = 50), the two-mode target of ``smc_vs_blackjax.py`` (MALA),
N = 1024, 37 stages; NumPyro's GMM tutorial model (``discrete_mixture.py``: N = 2000,
101 stages, exact log Z −17.1255) at the defaults and with ``num_moves=10``. The two schemes
are interleaved target by target.

``--resampling-cost``: instead, the CPU time of one resampling of N particles, compiled
(compilation excluded; 20 calls, the two schemes interleaved), for the engine's multinomial scheme (inverse
CDF at sorted uniforms), its systematic scheme and the ``jax.random.categorical(key, log_w,
shape=(N,))`` draw that the multinomial scheme used before (a Gumbel per particle and
candidate: N² of them).

Also available, not run by default (:func:`targets`): ``toy200-defaults``, ``funnel-mala``,
``logistic-mala``, and ``sv-quick``, ``sv-long`` (stochastic volatility, where the short
budget leaves every run several nats low).

Run: ``python benchmarks/log_z_error_bar.py`` (``--targets`` picks some, ``--seeds`` the runs).
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import discrete_mixture as dm
import jax
import jax.numpy as jnp
import numpy as np
import smc_vs_blackjax as sb

from numpyro_jarzynski.infer import report

DEFAULT_TARGETS = ("gauss10-mala", "gauss50-mala", "gauss50-uhmc", "twomode-mala", "gmm-defaults",
                   "gmm-10-moves")


def targets():
    """Every target: ``name -> (model, args, exact log Z, num_warmup, kernel settings)``.

    Run by default (:data:`DEFAULT_TARGETS`): the conjugate Gaussians d = 10 and 50 and the
    two-mode target of ``smc_vs_blackjax.py``, and the GMM tutorial model of
    ``discrete_mixture.py``. Also available: NumPyro's toy mixture at n = 200 (a Bernoulli
    assignment per observation, summed out of the path by the default ``Gibbs()``; reference
    −209.9198, ``discrete_mixture.py``) at the defaults, N = 1000, 51 stages; the centred
    funnel d = 10 (exact log Z) and the breast-cancer logistic regression d = 31 (reference
    −55.2234), both with MALA; the stochastic-volatility model (d = 102, reference −76.1007)
    at the budgets of ``smc_vs_blackjax.py``: quick (N = 256, 15 stages of 5 HMC(10)
    trajectories, where every method is several nats low) and long (N = 2000, 200 stages
    of 2)."""
    from numpyro_jarzynski import HMC, UHMC

    refs = sb.load_references()
    g10, g50, two = sb.gaussian_problem(10), sb.gaussian_problem(50), sb.two_mode_problem()
    sv, funnel, logistic = sb.sv_problem(refs), sb.funnel_problem(), sb.logistic_problem(refs)
    gmm = (dm.gmm_model, (jnp.asarray(dm.GMM_DATA),), dm.GMM_REF, 100)
    toy_ref = json.loads(dm.REF_PATH.read_text())["200"]["log_z"]

    def on(problem, warmup, n, move, moves, **kw):
        return (problem.model, problem.model_args, problem.log_z, warmup,
                {"num_particles": n, "move": move, "num_moves": moves, **kw})

    return {
        "gauss10-mala": on(g10, 36, 1024, "mala", 2),
        "gauss50-mala": on(g50, 36, 1024, "mala", 2),
        "gauss50-uhmc": on(g50, 36, 1024, UHMC(num_steps=4), 1),
        "twomode-mala": on(two, 36, 1024, "mala", 2),
        "gmm-defaults": (*gmm, {"num_particles": 2000}),
        "gmm-10-moves": (*gmm, {"num_particles": 2000, "num_moves": 10}),
        "toy200-defaults": (dm.toy_model, dm.toy_args(200), toy_ref, 50, {"num_particles": 1000}),
        "funnel-mala": on(funnel, 36, 1024, "mala", 10),
        "logistic-mala": on(logistic, 36, 512, "mala", 5),
        "sv-quick": on(sv, 15, 256, HMC(num_steps=10), 5),
        "sv-long": on(sv, 200, 2000, HMC(num_steps=10), 2, target_ess=0.99),
    }


def flagged_groups(log_z, se, size=4):
    """How many groups of ``size`` runs the runs' agreement check flags."""
    groups = len(log_z) // size
    flagged = sum(report.disagreement(log_z[g * size:(g + 1) * size],
                                      se[g * size:(g + 1) * size]) is not None
                  for g in range(groups))
    return flagged, groups


def measure(name, spec, scheme, seeds):
    model, args, exact, warmup, kw = spec
    r = dm.run_smc(model, args, seeds, 0, warmup, resampling=scheme, **kw)
    st = r["state"]
    log_z = np.asarray(st.log_evidence, np.float64)
    se = np.asarray(st.log_evidence_se, np.float64)
    rmse = float(np.sqrt(np.mean((log_z - exact) ** 2)))
    rms_se = float(np.sqrt(np.mean(se**2)))
    # The report makes the check only with multinomial resampling (other schemes report no
    # error bar once they resample); here it is applied to the raw estimate of either.
    flagged, groups = flagged_groups(log_z, se)
    # The runs' own report (the stage checks) on each run alone: how many of them warned.
    warned = sum(bool(report.messages(h)) for h in report.run_health(
        st, kw["num_particles"], kw.get("target_ess", 0.9), num_chains=seeds))
    return {
        "target": name, "scheme": scheme, "seeds": seeds, "sd": float(log_z.std(ddof=1)),
        "rmse": rmse, "bias": float(log_z.mean() - exact), "rms_se": rms_se,
        "rmse_over_se": rmse / rms_se, "se_min": float(se.min()), "se_max": float(se.max()),
        "coverage_2se": float(np.mean(np.abs(log_z - exact) < 2 * se)),
        "groups_flagged": f"{flagged}/{groups}", "runs_warned": f"{warned}/{seeds}",
        "resamplings": float(np.median(np.asarray(st.num_resamplings))),
        "cpu_s": r["cpu_s"], "compile_s": r["compile_s"],
    }


def resampling_cost(sizes=(1024, 16384, 100000), calls=20):
    from numpyro_jarzynski.engine import resampling

    def categorical(key, log_w, n):
        return jax.random.categorical(key, log_w, shape=(n,)).astype(jnp.int32)

    schemes = {"multinomial": resampling.multinomial, "systematic": resampling.systematic,
               "categorical (before)": categorical}
    for n in sizes:
        log_w = jax.random.normal(jax.random.key(1), (n,))
        fns = {name: jax.jit(lambda k, lw, fn=fn, n=n: fn(k, lw, n)) for name, fn in schemes.items()
               if not (name.startswith("categorical") and n > 16384)}  # N² Gumbels
        cpu = dict.fromkeys(fns, 0.0)
        # The two schemes interleaved; the old draw after them, warmed up after them too (its
        # N × N Gumbel array, 1 GB at N = 16384, slowed the calls that followed it).
        for group in ([k for k in fns if not k.startswith("categorical")],
                      [k for k in fns if k.startswith("categorical")]):
            for name in group:
                jax.block_until_ready(fns[name](jax.random.key(0), log_w))
            for r in range(calls):
                for name in group:
                    c = time.process_time()
                    jax.block_until_ready(fns[name](jax.random.key(r), log_w))
                    cpu[name] += time.process_time() - c
        print(f"N = {n}: " + ", ".join(f"{k} {1e3 * v / calls:.3f} ms" for k, v in cpu.items())
              + ("" if len(fns) == 3 else ", categorical (before) not run (N² Gumbels)"),
              flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help="comma-separated names of targets() (default: DEFAULT_TARGETS)")
    p.add_argument("--schemes", default="multinomial,systematic")
    p.add_argument("--seeds", type=int, default=32)
    p.add_argument("--resampling-cost", action="store_true",
                   help="time one resampling per scheme instead (see the module docstring)")
    a = p.parse_args(argv)
    if a.resampling_cost:
        resampling_cost()
        return
    print(f"# log_z_error_bar: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, seeds={a.seeds}, "
          f"jax {jax.__version__}, {jax.devices()[0].platform}, {platform.machine()}, "
          f"{os.cpu_count()} cores", flush=True)
    specs = targets()
    rows = []
    for name in a.targets.split(","):
        for scheme in a.schemes.split(","):
            row = measure(name, specs[name], scheme, a.seeds)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'target':14s} {'scheme':12s} {'sd':>7s} {'RMSE':>7s} {'err bar':>7s} "
          f"{'RMSE/bar':>8s} {'cover 2se':>9s} {'flagged':>7s} {'warned':>7s} {'resampl':>7s} "
          f"{'cpu s':>6s}")
    for r in rows:
        print(f"{r['target']:14s} {r['scheme']:12s} {r['sd']:7.4f} {r['rmse']:7.4f} "
              f"{r['rms_se']:7.4f} {r['rmse_over_se']:8.2f} {r['coverage_2se']:9.2f} "
              f"{r['groups_flagged']:>7s} {r['runs_warned']:>7s} {r['resamplings']:7.0f} "
              f"{r['cpu_s']:6.1f}")


if __name__ == "__main__":
    main()
