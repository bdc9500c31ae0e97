"""Weight variance against mixing, per gradient: every move of ``engine.kernels`` at equal cost.

One stage of a tempered SMC on a Gaussian path in ``d = 20`` (float32):

* ``γ_a = N(0, I)``, ``γ_b = N(m, diag σ²)`` with ``σ_j`` log-spaced in ``[0.7, 1.2]`` and
  ``m_j = ±0.2`` (alternating). Both are normalised, so ``log Z_b/Z_a = 0``. (A wider ``σ``,
  e.g. ``[0.5, 2]``, gives work weights of infinite variance from ``N(0, I)`` — ``σ² > 2`` — and
  an ESS below 1e-4 · N in ``d = 20``: no single stage survives it.)
* Protocol, the same for every move (what ``infer/tempering.py:_move_stage`` does): ``N = 4096``
  exact draws of ``γ_a``; annealing work ``W_0 = log γ_b − log γ_a`` (work ESS ≈ 0.16 N);
  systematic resampling (sorted ancestors); then a fixed budget of ``G = 20`` gradient
  evaluations per particle at ``γ_b`` (``num_moves = G // grads_per_move``, no resampling in
  between) with the preconditioner ``scale = 1`` for every move. The log-weights after the
  stage are the summed Crooks increments ``ΔA`` (zero for MALA and HMC). The weighted particles
  are exact for ``γ_b`` for every move and step; what differs is their variance.
* Step sizes: 12 log-spaced leapfrog-equivalent steps ``ε`` in [0.06, 1.6]. A Langevin move
  (ULA, MALA) runs at ``h = ε²/2`` (one leapfrog step from a fresh momentum is a Langevin step
  with ``h = ε²/2``, so ``UHMC(num_steps=1, jitter=0)`` is ULA: a check). In units of the
  spread: the Langevin chain diverges at ``h = 2σ_min² ≈ 0.98`` (``ε ≈ 1.4``), the leapfrog at
  ``ε = 2σ_min = 1.4`` (with the default jitter ``±20 %`` some particles pass it from
  ``ε ≈ 1.17``).

Measured per move and step (averaged over seeds, the same seeds — hence the same initial draws
and resampling — for every move):

* ``var/G``: variance of the summed Crooks log-weights per gradient; ``ess``: their
  normalised Kish ESS; ``1-acc``: one minus the mean Metropolis probability (unadjusted:
  ``min(1, e^{ΔA})``);
* ``msjd/G``: mean squared jump ``|x_G − x_0|²/d`` of the particles over the budget, per
  gradient (``x_0`` the resampled particles);
* ``err``: the error of the weighted estimates of ``E_b[x]`` and ``Var_b[x]``,
  ``err² = (1/d) Σ_j [ (μ̂_j − m_j)²/σ_j² + (v̂_j/σ_j² − 1)²/2 ]`` (mean over seeds, then the root).
  For ``N`` independent exact draws ``E err² = 2/N``, so ``n_eff/N = 2/(N err²)`` reads as the
  efficiency of the stage's output against i.i.d. draws of ``γ_b``;
  (``±``: its standard error over the seeds);
* ``err_unw``: the same error ignoring the weights (the bias an unadjusted kernel has without
  its increment); ``lz``: RMS error of the stage's ``log Z`` estimate ``lme(W_0) + lme(ΔA)``.

Reference rows: the resampled population without moves, the importance-weighted draws (no
resampling, no moves), and ``N`` i.i.d. draws of ``γ_b``.

Run: ``MPLBACKEND=Agg python benchmarks/move_weight_variance.py`` (32 seeds: about 100 s of
process CPU time, 2.5 minutes wall on two shared cores);
``--seeds S`` to change the number of seeds, ``--out PATH`` for the figure.
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_jarzynski.engine import kernels as K
from numpyro_jarzynski.engine import weights as W
from numpyro_jarzynski.engine.resampling import get_scheme

D, N, G = 20, 4096, 20
SD = np.geomspace(0.7, 1.2, D).astype(np.float32)
MEAN = (0.2 * np.where(np.arange(D) % 2 == 0, 1.0, -1.0)).astype(np.float32)
EPS = np.geomspace(0.06, 1.6, 12).astype(np.float32)  # leapfrog-equivalent steps

MOVES = [
    ("ULA", K.ULA()),
    ("MALA", K.MALA()),
    ("HMC(L=5)", K.HMC(num_steps=5)),
    ("UHMC(L=5)", K.UHMC(num_steps=5)),
    ("UHMC(L=1, jitter=0)", K.UHMC(num_steps=1, jitter=0.0)),
]


def is_langevin(move):
    return isinstance(move, (K.ULA, K.MALA))


def log_gamma_a(x):
    return -0.5 * jnp.sum(x**2, -1) - 0.5 * D * jnp.log(2 * jnp.pi)


def log_gamma_b(x):
    z = (x - MEAN) / SD
    return -0.5 * jnp.sum(z**2, -1) - jnp.sum(jnp.log(SD)) - 0.5 * D * jnp.log(2 * jnp.pi)


TARGET = K.density_target(log_gamma_b)
SCALE = jnp.ones((D,), jnp.float32)


def moment_err2(log_w, x):
    """``(1/d) Σ_j [(μ̂_j − m_j)²/σ_j² + (v̂_j/σ_j² − 1)²/2]`` of the weighted estimates."""
    w = W.normalized_weights(log_w)
    mu = w @ x
    var = w @ (x - mu) ** 2
    return jnp.mean(((mu - MEAN) / SD) ** 2 + 0.5 * (var / SD**2 - 1.0) ** 2)


def start(key):
    """Exact draws of γ_a, the annealing work, systematic resampling."""
    k_x, k_r = jax.random.split(key)
    x0 = jax.random.normal(k_x, (N, D), jnp.float32)
    cache = TARGET.evaluate(x0)
    work = TARGET.log_density(cache) - log_gamma_a(x0)
    idx = jnp.sort(get_scheme("systematic")(k_r, work, N))
    x, cache = x0[idx], jax.tree.map(lambda v: v[idx], cache)
    return x0, work, x, cache, idx


def stage(move, key, step):
    """One stage: start, then ``G // grads_per_move`` moves at γ_b. Returns its metrics."""
    k_start, k_move = jax.random.split(key)
    _, work, x, cache, _ = start(k_start)
    num_moves = G // move.grads_per_move

    def body(carry, k):
        x, cache, inc = carry
        out = move.step(k, x, cache, TARGET, step, SCALE)
        return (out.x, out.cache, inc + out.log_increment), (
            jnp.mean(out.acceptance), jnp.mean(out.diverged))

    zero = jnp.zeros((N,), jnp.float32)
    (x_g, _, inc), (acc, div) = jax.lax.scan(body, (x, cache, zero),
                                             jax.random.split(k_move, num_moves))
    inc = jnp.where(jnp.isfinite(inc), inc, -jnp.inf)
    return {
        "var": jnp.var(jnp.where(jnp.isfinite(inc), inc, 0.0)),
        "ess": W.ess(inc),
        "acc": jnp.mean(acc),
        "div": jnp.mean(div),
        "msjd": jnp.mean(jnp.sum((x_g - x) ** 2, -1)) / D,
        "err2": moment_err2(inc, x_g),
        "err2_unw": moment_err2(jnp.zeros_like(inc), x_g),
        "log_z": W.log_mean_exp(work) + W.log_mean_exp(inc),
    }


def references(key):
    k_start, k_iid = jax.random.split(key)
    x0, work, x, _, idx = start(k_start)
    iid = MEAN + SD * jax.random.normal(k_iid, (N, D), jnp.float32)
    zero = jnp.zeros((N,), jnp.float32)
    return {
        "resampled": moment_err2(zero, x),
        "weighted": moment_err2(work, x0),
        "iid": moment_err2(zero, iid),
        "unique": 1 + jnp.sum(idx[1:] != idx[:-1]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--out", default="docs/figures/move_weight_variance.png")
    args = parser.parse_args()

    keys = jax.random.split(jax.random.key(20261201), args.seeds)
    print(f"d = {D}, N = {N}, G = {G} gradients per particle, {args.seeds} seeds, float32; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, {platform.machine()}")
    cpu0, wall0 = time.process_time(), time.perf_counter()

    ref = jax.tree.map(np.asarray, jax.jit(jax.vmap(references))(keys))
    work_ess = np.mean(jax.jit(jax.vmap(lambda k: W.ess(start(k)[1])))(keys))
    print(f"work γ_a → γ_b: ESS/N = {work_ess:.3f}, "
          f"distinct ancestors after resampling = {np.mean(ref['unique']):.0f} of {N}")
    for name in ("resampled", "weighted", "iid"):
        e2 = np.mean(ref[name])
        print(f"reference {name:9s}: err = {np.sqrt(e2):.4f}  n_eff/N = {2 / (N * e2):.3f}")

    results = {}
    for label, move in MOVES:
        steps = EPS**2 / 2 if is_langevin(move) else EPS
        fn = jax.jit(jax.vmap(jax.vmap(lambda k, s, m=move: stage(m, k, s),
                                       in_axes=(0, None)), in_axes=(None, 0)))
        c0 = time.process_time()
        out = jax.tree.map(np.asarray, fn(keys, jnp.asarray(steps)))  # (steps, seeds)
        results[label] = (steps, out, time.process_time() - c0)

    header = (f"{'move':21s} {'eps':>6s} {'step':>7s} {'var/G':>9s} {'ess':>6s} {'1-acc':>8s} "
              f"{'div':>6s} {'msjd/G':>8s} {'err':>7s} {'n_eff/N':>7s} {'±':>5s} {'err_unw':>7s} "
              f"{'lz':>7s}")
    print("\n" + header + "\n" + "-" * len(header))
    for label, (steps, out, cpu) in results.items():
        for i, (e, s) in enumerate(zip(EPS, steps)):
            e2 = np.mean(out["err2"][i])
            se = np.std(out["err2"][i]) / np.sqrt(len(out["err2"][i])) / e2  # relative
            print(f"{label:21s} {e:6.3f} {s:7.4f} {np.mean(out['var'][i]) / G:9.2e} "
                  f"{np.mean(out['ess'][i]):6.3f} {1 - np.mean(out['acc'][i]):8.2e} "
                  f"{np.mean(out['div'][i]):6.3f} {np.mean(out['msjd'][i]) / G:8.3g} "
                  f"{np.sqrt(e2):7.3g} {2 / (N * e2):7.3f} {2 / (N * e2) * se:5.3f} "
                  f"{np.sqrt(np.mean(out['err2_unw'][i])):7.3g} "
                  f"{np.sqrt(np.mean(out['log_z'][i] ** 2)):7.3g}")
        print(f"{'':21s} (compile + run: {cpu:.1f} s CPU)")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(f"\ntotal: {cpu:.1f} s process CPU time, {wall:.1f} s wall")

    plot(results, ref, args.out)
    print(f"figure: {args.out}")


def plot(results, ref, path):
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = {"ULA": "C0", "MALA": "C0", "HMC(L=5)": "C3", "UHMC(L=5)": "C3",
              "UHMC(L=1, jitter=0)": "C2"}
    for label, (_, out, _) in results.items():
        move = dict(MOVES)[label]
        c = colors[label]
        if move.invariant:
            y = 1.0 - out["acc"].mean(1)
            ax0.plot(EPS, np.maximum(y, 1e-7), "--", color=c, marker="s", ms=4,
                     label=f"{label}: rejection rate 1 − acc")
        else:
            y = out["var"].mean(1) / G
            ax0.plot(EPS, np.maximum(y, 1e-7), "-", color=c, marker="o", ms=4,
                     label=f"{label}: Var(log w) / gradient",
                     lw=1 if "L=1" in label else 2, alpha=0.7 if "L=1" in label else 1)
        e = np.sqrt(out["err2"].mean(1))
        ax1.plot(EPS, e, "--" if move.invariant else "-", color=c,
                 marker="s" if move.invariant else "o", ms=4, label=label,
                 lw=1 if "L=1" in label else 2, alpha=0.7 if "L=1" in label else 1)
    for name, ls, txt in (("resampled", ":", "no move (resampled)"),
                          ("weighted", "-.", "no move, not resampled"),
                          ("iid", "-", f"{N} i.i.d. draws of γ_b")):
        ax1.axhline(np.sqrt(np.mean(ref[name])), color="0.5", ls=ls, lw=1, label=txt)
    ax0.set(xscale="log", yscale="log", ylim=(1e-7, 30),
            xlabel="leapfrog-equivalent step ε (Langevin: h = ε²/2); scale = 1",
            ylabel="weight noise or rejections",
            title=f"Weight cost over a budget of {G} gradients")
    ax1.set(xscale="log", yscale="log", ylim=(0.015, 0.3),
            xlabel="leapfrog-equivalent step ε (Langevin: h = ε²/2); scale = 1",
            ylabel="RMS standardised error of weighted mean and variance",
            title=f"Error of weighted γ_b moments at {G} gradients")
    sec = ax1.secondary_yaxis("right", functions=(
        lambda e: 2.0 / (N * np.maximum(e, 1e-9) ** 2),
        lambda n: np.sqrt(2.0 / (N * np.maximum(n, 1e-9)))))
    sec.set_ylabel("n_eff / N = 2 / (N err²)")
    ax0.legend(fontsize=7, loc="upper left")
    ax1.legend(fontsize=7, loc="upper left")
    for ax in (ax0, ax1):
        ax.grid(True, which="both", alpha=0.25)
    fig.suptitle(f"Gaussian path N(0, I) → N(m, diag σ²), d = {D}, N = {N}, σ ∈ [0.7, 1.2], "
                 f"scale = 1; solid: unadjusted (weighted), dashed: adjusted", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
