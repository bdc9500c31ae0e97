"""The cost of ``move="auto"`` on vectorised chains, against MALA at equal gradients.

``Auto`` picks its candidate per run with ``lax.switch``. Under ``jax.vmap`` over chains the
index is batched, and JAX runs every branch and selects one, so each stage paid for every
candidate's moves (2026-12-01: auto/MALA 1.0 with one chain, 3.1 with 8). Vectorised chains
of an ``Auto`` kernel are now mapped with ``jax.lax.map`` inside the program
(``numpyro_jarzynski.infer.functional.over_chains``), so each chain runs only its own
candidate (2026-12-02: 0.9 and 1.0). Prints the CPU time (compilation excluded) of ``auto``
over MALA at the same 5 gradients per stage, for 1 and 8 chains.

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
