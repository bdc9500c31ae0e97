"""A deterministic reference for the stochastic-volatility log evidence (``smc_vs_blackjax``'s
``sv``: NumPyro's example model on the first T = 100 S&P 500 returns).

The model is ``σ ~ Exp(50)``, ``ν ~ Exp(0.1)``, ``s ~ GaussianRandomWalk(σ, T)`` (``s_1 ~
N(0, σ²)``, ``s_t − s_{t−1} ~ N(0, σ²)``), ``r_t ~ StudentT(ν, 0, exp(s_t))``. Given
``(ν, σ)`` the latent path is a one-dimensional Markov chain, so

    p(r | ν, σ) = ∫ N(s_1; 0, σ²) p(r_1|s_1) Π_t N(s_t; s_{t−1}, σ²) p(r_t|s_t) ds

is computed by the forward algorithm on a grid: ``s`` on ``[−K σ √T, K σ √T]`` with spacing
``h = σ / m`` (so the Gaussian transition is resolved whatever σ), the transition applied as
a convolution with the sampled kernel ``N(δ; 0, σ²)·h`` (the trapezoid rule on a Gaussian at
``h ≤ σ/4`` is exact to far below float64 rounding; the truncation at ``K`` prior sds of
``s_T`` is the error to check). The two remaining dimensions are integrated by the trapezoid
rule on a grid in ``(log ν, log σ)`` (with the Jacobian) over the region where the integrand
is above ``e^{-30}`` of its maximum. Everything is float64.

The script prints log Z for several resolutions (the grid sizes of both integrals and the
truncation ``K``): their agreement is the reference's error bar. It is the reference that
settles the dispute recorded in docs/benchmarks.md (importance sampling −76.1 against long
SMC runs −76.7 and −77.1).

    python benchmarks/sv_reference.py [--quick]
"""

import argparse
import json
import math
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, logsumexp

HERE = Path(__file__).resolve().parent


def returns(num=100):
    data = json.loads((HERE / "sp500_first100.json").read_text())
    # The benchmark's model sees the float32 returns: the same numbers, in float64.
    return np.asarray(np.asarray(data["returns"][:num], np.float32), np.float64)


def student_t_logpdf(x, nu, scale):
    z = x / scale
    return (gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * jnp.log(nu * math.pi)
            - jnp.log(scale) - (nu + 1) / 2 * jnp.log1p(z * z / nu))


def log_lik_given(r, nu, sigma, k_sd=8.0, per_sd=8):
    """``log p(r | ν, σ)`` by the forward algorithm on the grid described above."""
    t = r.shape[0]
    half = math.ceil(k_sd * math.sqrt(t) * per_sd)
    h = sigma / per_sd
    s = jnp.arange(-half, half + 1) * h  # (G,)
    # N(δ; 0, σ²)·h at δ = k h = k σ/m does not depend on σ: one constant kernel, to ±10 σ.
    k = np.arange(-10 * per_sd, 10 * per_sd + 1) / per_sd
    kernel = jnp.asarray(np.exp(-0.5 * k**2) / (math.sqrt(2 * math.pi) * per_sd))

    def obs(rt):
        return student_t_logpdf(rt, nu, jnp.exp(s))

    # s_1 ~ N(0, σ²): the initial density on the grid (times h, the quadrature weight).
    log_a = -0.5 * (s / sigma) ** 2 - jnp.log(sigma * math.sqrt(2 * math.pi)) + jnp.log(h)
    log_a = log_a + obs(r[0])
    c = logsumexp(log_a)
    a = jnp.exp(log_a - c)

    def step(carry, rt):
        a, total = carry
        pred = jnp.convolve(a, kernel, mode="same")  # ∫ N(s; s', σ²) a(s') ds'
        log_b = jnp.log(jnp.maximum(pred, 1e-300)) + obs(rt)
        m = logsumexp(log_b)
        return (jnp.exp(log_b - m), total + m), None

    (a, total), _ = jax.lax.scan(step, (a, c), r[1:])
    return total


def log_integrand(r, log_nu, log_sigma, **kw):
    nu, sigma = jnp.exp(log_nu), jnp.exp(log_sigma)
    log_prior = (jnp.log(0.1) - 0.1 * nu + log_nu) + (jnp.log(50.0) - 50.0 * sigma + log_sigma)
    return log_prior + log_lik_given(r, nu, sigma, **kw)


def trapezoid_log(values, du, dv):
    """``log ∫∫ exp(values)`` by the 2-D trapezoid rule on a regular grid."""
    w = np.ones(values.shape)
    w[0, :] *= 0.5
    w[-1, :] *= 0.5
    w[:, 0] *= 0.5
    w[:, -1] *= 0.5
    m = np.max(values)
    return float(m + np.log(np.sum(w * np.exp(values - m)) * du * dv))


def evidence(r, nu_range, sigma_range, n_grid, **kw):
    u = np.linspace(*nu_range, n_grid)
    v = np.linspace(*sigma_range, n_grid)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    f = jax.jit(jax.vmap(lambda a, b: log_integrand(jnp.asarray(r), a, b, **kw)))
    vals = np.asarray(f(jnp.asarray(uu.ravel()), jnp.asarray(vv.ravel()))).reshape(uu.shape)
    return trapezoid_log(vals, u[1] - u[0], v[1] - v[0]), vals, u, v


def support(vals, u, v, drop=30.0):
    """The box of ``(log ν, log σ)`` where the integrand is within ``e^{-drop}`` of its max,
    widened by one grid step."""
    keep = vals > np.max(vals) - drop
    iu, iv = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    du, dv = u[1] - u[0], v[1] - v[0]
    return ((u[iu[0]] - du, u[iu[-1]] + du), (v[iv[0]] - dv, v[iv[-1]] + dv))


def integration_box(r):
    """The ``(log ν, log σ)`` box to integrate over, from a wide coarse scan: log ν over
    [−3, 7] (ν from 0.05 to 1100), log σ over [−9, 0]."""
    _, vals, u, v = evidence(r, (-3.0, 7.0), (-9.0, 0.0), 41, k_sd=6.0, per_sd=4)
    return support(vals, u, v)


def reference_log_z(r=None):
    """The reference at the finest setting of :func:`main` (121² outer grid, ±10 prior sd,
    h = σ/8): ``(log Z, the box of (log ν, log σ) it integrates over)``."""
    r = returns() if r is None else r
    nu_box, sigma_box = integration_box(r)
    log_z, _, _, _ = evidence(r, nu_box, sigma_box, 121, k_sd=10.0, per_sd=8)
    return log_z, (nu_box, sigma_box)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="coarser grids only")
    args = ap.parse_args()
    r = returns()
    print(f"# sv_reference: T = {r.size}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{platform.node()}, JAX {jax.__version__} {jax.default_backend()}, float64")
    c0, w0 = time.process_time(), time.perf_counter()
    nu_box, sigma_box = integration_box(r)
    print(f"support (integrand within e^-30 of its max): log nu {nu_box[0]:.2f}..{nu_box[1]:.2f},"
          f" log sigma {sigma_box[0]:.2f}..{sigma_box[1]:.2f}")
    settings = [(41, 6.0, 4), (61, 8.0, 8)] if args.quick else [
        (41, 6.0, 4), (61, 8.0, 8), (81, 8.0, 8), (81, 10.0, 12), (121, 10.0, 8)]
    results = []
    for n_grid, k_sd, per_sd in settings:
        log_z, *_ = evidence(r, nu_box, sigma_box, n_grid, k_sd=k_sd, per_sd=per_sd)
        results.append(log_z)
        print(f"outer grid {n_grid}x{n_grid}, s grid ±{k_sd:g} prior sd of s_T at h = sigma/"
              f"{per_sd}: log Z = {log_z:.5f}")
    spread = max(results[1:]) - min(results[1:]) if len(results) > 2 else abs(
        results[-1] - results[0])
    print(f"reference log Z = {results[-1]:.4f} (spread over the finer settings {spread:.1e}); "
          f"CPU {time.process_time() - c0:.0f} s, wall {time.perf_counter() - w0:.0f} s")


if __name__ == "__main__":
    main()
