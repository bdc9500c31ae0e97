"""Generic coordinate sweep vs the checkerboard block-Gibbs protocol on a periodic Ising model.

    MPLBACKEND=Agg python benchmarks/ising_gibbs.py                 # 16×16, N = 1000
    python benchmarks/ising_gibbs.py --size 4 --particles 200 --stages 10 --runs 2   # smoke test

Prints, for each sweep: time per sweep over all N particles (compiled, after warm-up), and
the log Z estimate of JarzynskiSMC at the critical coupling against the exact value
(``log Z = log evidence + nm log 2``; exact values from the row transfer matrix for n ≤ 10,
or the tabulated 16×16 value).
"""

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from numpyro.infer import MCMC

from numpyro_jarzynski import JarzynskiSMC
from numpyro_jarzynski.distributions import IsingLattice
from numpyro_jarzynski.distributions.lattice import bond_sum
from numpyro_jarzynski.infer import model_bridge as bridge
from numpyro_jarzynski.infer.gibbs import make_discrete_move

K_C = 0.4406868
TABULATED = {4: 15.5219155, 8: 60.1417808, 16: 238.6422566}


def exact_log_z(n, coupling=K_C):
    if n in TABULATED and coupling == K_C:
        return TABULATED[n]
    rows = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    horizontal = np.sum(rows * np.roll(rows, 1, axis=1), axis=1)
    t = np.exp(coupling * (0.5 * horizontal[:, None] + rows @ rows.T + 0.5 * horizontal[None]))
    lam = np.linalg.eigvalsh(t)
    top = np.max(np.abs(lam))
    return n * np.log(top) + np.log(np.sum((lam / top) ** n))


def block_model(n, coupling):
    numpyro.sample("s", IsingLattice((n, n), coupling))


def generic_model(n, coupling):
    b = numpyro.sample("s", dist.Bernoulli(0.5).expand([n, n]))
    numpyro.factor("coupling", coupling * bond_sum(2.0 * b - 1.0))


def time_sweep(model, n, num_particles, repeats=5):
    spec = bridge.inspect_model(model, (n, K_C), {})
    move = jax.jit(make_discrete_move(model, (n, K_C), {}, spec, ravel_pytree({})[1]))
    x = jnp.zeros((num_particles, 0))
    start = jnp.ones((num_particles, n, n)) if model is block_model else jnp.ones(
        (num_particles, n, n), jnp.int32)
    s = start
    for k in jax.random.split(jax.random.key(0), 3):  # compile and warm up
        s = move(k, jnp.float32(1.0), x, {"s": s})["s"]
    s.block_until_ready()
    t0 = time.perf_counter()
    for k in jax.random.split(jax.random.key(1), repeats):
        s = move(k, jnp.float32(1.0), x, {"s": s})["s"]
    s.block_until_ready()
    return (time.perf_counter() - t0) / repeats


def log_z_runs(model, n, num_particles, stages, runs):
    mcmc = MCMC(JarzynskiSMC(model, num_particles=num_particles, schedule="linear"),
                num_warmup=stages, num_samples=1, num_chains=runs, chain_method="vectorized",
                progress_bar=False)
    t0 = time.perf_counter()
    mcmc.run(jax.random.key(0), n, K_C)
    lz = np.asarray(mcmc.last_state.log_evidence, np.float64) + n * n * math.log(2.0)
    return lz, time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--particles", type=int, default=1000)
    p.add_argument("--stages", type=int, default=40)
    p.add_argument("--runs", type=int, default=4)
    a = p.parse_args()
    exact = exact_log_z(a.size)
    print(f"{a.size}x{a.size} Ising at K_c, N = {a.particles}, {a.stages} linear stages, "
          f"{a.runs} runs; exact log Z = {exact:.4f}  (device: {jax.devices()[0].platform})")
    print(f"{'sweep':8s} {'ms/sweep':>9s} {'log Z mean':>11s} {'sd':>7s} {'error':>8s} "
          f"{'error/se':>9s} {'run s':>7s}")
    for name, model in (("block", block_model), ("generic", generic_model)):
        per_sweep = time_sweep(model, a.size, a.particles)
        lz, secs = log_z_runs(model, a.size, a.particles, a.stages, a.runs)
        sd = lz.std(ddof=1) if lz.size > 1 else float("nan")
        err = lz.mean() - exact
        print(f"{name:8s} {1e3 * per_sweep:9.2f} {lz.mean():11.4f} {sd:7.4f} {err:8.4f} "
              f"{err / (sd / math.sqrt(lz.size)):9.2f} {secs:7.1f}")


if __name__ == "__main__":
    main()
