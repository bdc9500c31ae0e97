"""Does the adaptive schedule spend the budget it is given? ``budget_fill`` on and off.

The adaptive schedule takes each β step as large as ``target_ess`` allows. With the default
``num_warmup=100`` on an easy path, β reaches 1 after 10–20 stages and the other 80–90 stages
only mix at the posterior: they add nothing to the evidence. ``budget_fill=ρ`` raises each
stage's conditional-ESS target so that the rest of the path is spread evenly (in thermodynamic
length, estimated from the current population) over the stages left before ``ρ·num_warmup``;
it never lowers the target below ``target_ess``, so a short budget behaves as before.

For every target of ``smc_vs_blackjax.py`` with an exact or cached reference log Z (and the
GMM tutorial model of ``discrete_mixture.py``) and every move, both settings run at the same
``num_warmup``, N and seeds (so the same gradient budget and nearly the same CPU time), one
compiled program per setting, seeds vmapped. Printed: log-Z RMSE against the reference, the
ratio fill / no fill, the mean stage at which β reached 1, process CPU time of the compiled
run (compilation excluded) beside wall time.

Run: ``MPLBACKEND=Agg python benchmarks/budget_fill.py`` (``--quick``: N = 500, 8 seeds).
"""

import argparse
import datetime
import json
import math
import pathlib
import platform
import sys

import jax.numpy as jnp
import numpy as np

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))

import discrete_mixture as dm
import smc_vs_blackjax as sb


def problems(names):
    refs = sb.load_references()
    make = {
        "gauss10": lambda: sb.gaussian_problem(10),
        "gauss50": lambda: sb.gaussian_problem(50),
        "twomode": sb.two_mode_problem,
        "logistic": lambda: sb.logistic_problem(refs),
        "funnel": sb.funnel_problem,
        "sv": lambda: sb.sv_problem(refs),
    }
    out = {}
    for name in names:
        if name == "gmm":
            out[name] = (dm.gmm_model, (jnp.asarray(dm.GMM_DATA),), dm.GMM_REF)
        else:
            p = make[name]()
            out[name] = (p.model, p.model_args, p.log_z)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", default="gauss10,gauss50,twomode,logistic,funnel,gmm")
    ap.add_argument("--moves", default="mala,ula,hmc,uhmc")
    ap.add_argument("--fill", type=float, default=0.9)
    ap.add_argument("--num-warmup", type=int, default=100)
    ap.add_argument("--num-particles", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.num_particles, a.seeds = 500, 8
    print(f"# budget_fill: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
          f"{platform.node()}, N={a.num_particles}, seeds={a.seeds}, num_warmup={a.num_warmup}, "
          f"fill={a.fill}; CPU/wall: compiled run only", flush=True)
    print(f"{'target':9s} {'move':5s} {'RMSE off':>9s} {'RMSE on':>8s} {'on/off':>7s} "
          f"{'β=1 off':>8s} {'β=1 on':>7s} {'CPU off':>8s} {'CPU on':>7s} {'wall on':>8s}")
    rows = []
    for name, (model, args, ref) in problems(a.problems.split(",")).items():
        for move in a.moves.split(","):
            kw = {"move": move} if name != "gmm" else {}
            if name == "gmm" and move != a.moves.split(",")[0]:
                continue  # the mixture runs its default [MALA(), Gibbs()] once
            res = {}
            for fill in (None, a.fill):
                r = dm.run_smc(model, args, a.seeds, 0, a.num_warmup,
                               num_particles=a.num_particles, budget_fill=fill, **kw)
                lz = np.asarray(r["state"].log_evidence, np.float64)
                res[fill] = {"rmse": float(math.sqrt(np.mean((lz - ref) ** 2))),
                             "bias": float(lz.mean() - ref), "sd": float(lz.std(ddof=1)),
                             "beta_one": float(np.mean(r["beta_one"])), "cpu_s": r["cpu_s"],
                             "wall_s": r["run_s"], "warnings": len(r["warnings"])}
            off, on = res[None], res[a.fill]
            label = "gibbs" if name == "gmm" else move
            print(f"{name:9s} {label:5s} {off['rmse']:9.3f} {on['rmse']:8.3f} "
                  f"{on['rmse'] / off['rmse']:7.2f} {off['beta_one']:8.1f} {on['beta_one']:7.1f} "
                  f"{off['cpu_s']:8.2f} {on['cpu_s']:7.2f} {on['wall_s']:8.2f}", flush=True)
            rows.append({"target": name, "move": label, "off": off, "on": on})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
