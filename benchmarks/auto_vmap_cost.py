"""Reproducer of a cost defect of ``move="auto"`` under vectorised chains.

``JarzynskiSMC.sample`` is vmapped over chains by ``MCMC(..., chain_method="vectorized")`` (and
here by ``init`` on a batch of keys); ``Auto`` picks its candidate with ``lax.switch`` on an
index that is then batched, and JAX runs every branch and selects one. So each stage pays for
every candidate's moves. Prints the CPU time (compilation excluded) of ``auto`` over MALA at
the same 5 gradients per stage, for 1 and 8 chains: about 1.0 with one chain, about 3 with 8
(2026-12-01: 1.0 and 3.1).

    python benchmarks/auto_vmap_cost.py
"""

import time

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from numpyro_jarzynski import JarzynskiSMC


def model():
    numpyro.sample("z", dist.Normal(0.0, 1.0).expand([10]).to_event(1))
    w = numpyro.sample("w", dist.Normal(0, 1).expand([10]).to_event(1))
    numpyro.factor("lik", -0.5 * jnp.sum((w - 1.0) ** 2))


def cost(move, chains, num_moves, stages=20, n=1024):
    k = JarzynskiSMC(model, num_particles=n, move=move, num_moves=num_moves)
    keys = jax.random.split(jax.random.key(0), chains) if chains > 1 else jax.random.key(0)

    def loop(keys):
        s = k.init(keys, stages, None, (), {})
        return jax.lax.fori_loop(0, stages + 1, lambda i, s: k.sample(s, (), {}), s).log_evidence

    c = jax.jit(loop).lower(keys).compile()
    jax.block_until_ready(c(keys))
    t = time.process_time()
    jax.block_until_ready(c(keys))
    return time.process_time() - t


if __name__ == "__main__":
    for chains in (1, 8):
        m, a = cost("mala", chains, 5), cost("auto", chains, 1)
        print(f"chains={chains}: cpu s mala {m:.2f}, auto {a:.2f}, auto/mala {a / m:.1f} "
              "(same 5 gradients per stage)")
