"""Ising and Potts lattices with JarzynskiSMC: log partition functions against exact values.

Both models are latent sites with their own exact checkerboard Gibbs sweep
(``IsingLattice``, ``PottsLattice``); there are no observations, so the log evidence is
``log Z − nm log q`` (uniform base, ``q = 2`` for the Ising spins). The exact answers come from
enumerating all 2^16 Ising states of the 4×4 torus and from the row-to-row transfer matrix of
the 4×4, 3-state Potts torus (itself checked against enumeration on a 2×4 torus).
Run with ``MPLBACKEND=Agg .venv/bin/python examples/ising.py``; the figure goes to
``examples/figures/ising.png``.
"""

import itertools
import pathlib

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro
from numpyro.infer import MCMC
from scipy.special import logsumexp

from numpyro_jarzynski import IsingLattice, JarzynskiSMC, PottsLattice
from numpyro_jarzynski.distributions.lattice import bond_sum, equal_bond_count

N_SIDE = 4
K_ISING = 0.5 * np.log(1 + np.sqrt(2))  # critical coupling of the infinite lattice
Q = 3
K_POTTS = np.log(1 + np.sqrt(Q))  # critical coupling of the infinite 3-state lattice
NUM_RUNS, NUM_PARTICLES, NUM_STAGES = 4, 2000, 100


def ising(coupling):
    numpyro.sample("s", IsingLattice((N_SIDE, N_SIDE), coupling))


def potts(coupling):
    numpyro.sample("s", PottsLattice((N_SIDE, N_SIDE), Q, coupling))


def ising_log_z_by_enumeration(n, coupling):
    """log Σ_s exp(K Σ_<ij> s_i s_j) over all 2^{n²} spin configurations."""
    bits = (np.arange(2 ** (n * n))[:, None] >> np.arange(n * n)) & 1
    states = jnp.asarray(1.0 - 2.0 * bits.reshape(-1, n, n), jnp.float32)
    return logsumexp(coupling * np.asarray(bond_sum(states), np.float64))


def ising_bond_sum_distribution(n, coupling):
    """Exact distribution of Σ_<ij> s_i s_j under the Ising model, by enumeration."""
    bits = (np.arange(2 ** (n * n))[:, None] >> np.arange(n * n)) & 1
    states = jnp.asarray(1.0 - 2.0 * bits.reshape(-1, n, n), jnp.float32)
    bonds = np.asarray(bond_sum(states), np.float64)
    p = np.exp(coupling * bonds - logsumexp(coupling * bonds))
    values = np.unique(bonds)
    return values, np.array([p[bonds == v].sum() for v in values])


def potts_log_z_transfer(n, m, q, coupling):
    """log Z of the q-state Potts model on an n×m torus (n rows of m sites) as Tr(T^n),
    T[a, b] = exp(K (h(a)/2 + v(a, b) + h(b)/2)) over the q^m row states."""
    rows = np.array(list(itertools.product(range(q), repeat=m)))
    horizontal = np.sum(rows == np.roll(rows, -1, axis=1), axis=1)
    vertical = np.sum(rows[:, None, :] == rows[None, :, :], axis=2)
    t = np.exp(coupling * (0.5 * horizontal[:, None] + vertical + 0.5 * horizontal[None, :]))
    lam = np.linalg.eigvalsh(t)
    top = np.max(np.abs(lam))
    return n * np.log(top) + np.log(np.sum((lam / top) ** n))


def potts_log_z_by_enumeration(n, m, q, coupling):
    states = np.array(list(itertools.product(range(q), repeat=n * m))).reshape(-1, n, m)
    return logsumexp(coupling * np.asarray(equal_bond_count(jnp.asarray(states)), np.float64))


def run_smc(model, coupling, seed):
    kernel = JarzynskiSMC(model, num_particles=NUM_PARTICLES)  # defaults: budget_fill=0.9
    mcmc = MCMC(kernel, num_warmup=NUM_STAGES, num_samples=1, num_chains=NUM_RUNS,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(seed), coupling)
    return mcmc


def report(name, mcmc, log_z, num_sites, q):
    runs = np.asarray(mcmc.last_state.log_evidence, np.float64) + num_sites * np.log(q)
    beta = np.asarray(mcmc.last_state.history.beta[0])
    stages = int(np.argmax(beta >= 1.0)) + 1
    print(f"{name}: log Z = {runs.mean():.4f} ± {runs.std(ddof=1) / np.sqrt(runs.size):.4f} "
          f"(runs: {np.round(runs, 3)}), exact {log_z:.4f}; beta = 1 after {stages} stages")
    return runs, stages


def main():
    exact_ising = ising_log_z_by_enumeration(N_SIDE, K_ISING)
    check_tm = potts_log_z_transfer(2, 4, Q, K_POTTS)
    check_enum = potts_log_z_by_enumeration(2, 4, Q, K_POTTS)
    print(f"transfer-matrix check, 2x4 Potts torus: {check_tm:.6f} vs enumeration "
          f"{check_enum:.6f}")
    assert abs(check_tm - check_enum) < 1e-6
    exact_potts = potts_log_z_transfer(N_SIDE, N_SIDE, Q, K_POTTS)

    print(f"\nJarzynskiSMC, {NUM_RUNS} independent runs x {NUM_PARTICLES} particles, adaptive "
          f"schedule (defaults: beta = 1 near 90% of {NUM_STAGES} stages); "
          "log Z = log evidence + nm log q")
    results = {}
    for name, model, k, q, seed, exact in [
        (f"Ising {N_SIDE}x{N_SIDE}, K = {K_ISING:.4f}", ising, K_ISING, 2, 0, exact_ising),
        (f"Potts {N_SIDE}x{N_SIDE}, q = {Q}, K = {K_POTTS:.4f}", potts, K_POTTS, Q, 1,
         exact_potts),
    ]:
        mcmc = run_smc(model, k, seed)
        runs, stages = report(name, mcmc, exact, N_SIDE * N_SIDE, q)
        results[name] = (mcmc, runs, stages, exact)

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.5))
    for name, (mcmc, runs, stages, exact) in results.items():
        hist = mcmc.last_state.history
        axes[0].plot(np.arange(1, stages + 1), np.asarray(hist.beta[0])[:stages], ".-",
                     label=name)
        axes[1].plot(np.arange(1, stages + 1), np.asarray(hist.ess[0])[:stages], ".-",
                     label=name)
    axes[0].set(xlabel="stage", ylabel="beta", title="adaptive schedule (run 0)")
    axes[1].set(xlabel="stage", ylabel="normalised ESS", title="ESS after each stage (run 0)",
                ylim=(0, 1.05))
    axes[0].legend(fontsize=7)
    # Ising: weighted distribution of the bond sum at beta = 1 against enumeration.
    (mcmc_i, runs_i, _, _), (mcmc_p, runs_p, _, _) = results.values()
    bonds_i = np.asarray(bond_sum(mcmc_i.get_samples(group_by_chain=True)["s"][:, -1]))
    w_i = np.asarray(jax.nn.softmax(mcmc_i.last_state.log_weights, axis=-1))  # (runs, N)
    values, p_exact = ising_bond_sum_distribution(N_SIDE, K_ISING)
    p_smc = np.array([np.sum(w_i * (bonds_i == v)) for v in values]) / NUM_RUNS
    axes[2].bar(values, p_smc, width=3.0, alpha=0.6, label="weighted particles")
    axes[2].plot(values, p_exact, "k.", label="exact (2^16 states)")
    axes[2].set(xlabel="bond sum", ylabel="probability",
                title=f"Ising: log Z {runs_i.mean():.3f} (exact {exact_ising:.3f})")
    axes[2].legend(fontsize=7)
    # Potts: twelve particles drawn by weight (run 0).
    s_p = np.asarray(mcmc_p.get_samples(group_by_chain=True)["s"][0, -1])  # (N, n, n)
    w_p = np.asarray(jax.nn.softmax(mcmc_p.last_state.log_weights[0]))
    pick = np.random.default_rng(0).choice(w_p.size, size=12, p=w_p / w_p.sum())
    pad = np.full((3 * (N_SIDE + 1) - 1, 4 * (N_SIDE + 1) - 1), np.nan)
    for j, i in enumerate(pick):
        r, c = divmod(j, 4)
        pad[r * (N_SIDE + 1):r * (N_SIDE + 1) + N_SIDE,
            c * (N_SIDE + 1):c * (N_SIDE + 1) + N_SIDE] = s_p[i]
    axes[3].imshow(pad, cmap="viridis", vmin=0, vmax=Q - 1, interpolation="nearest")
    axes[3].set_title(f"Potts q = {Q}: 12 weighted draws\n"
                      f"log Z {runs_p.mean():.3f} (exact {exact_potts:.3f})", fontsize=10)
    axes[3].set_xticks([]), axes[3].set_yticks([])
    fig.tight_layout()
    out = pathlib.Path(__file__).parent / "figures" / "ising.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"figure saved to {out}")


if __name__ == "__main__":
    main()
