r"""Preconditioners (mass matrices): how they are applied and how they are fitted.

A preconditioner is a square-root factor ``L`` of the inverse mass matrix,
``M⁻¹ = L Lᵀ`` (the covariance the moves expect). Every gradient move works in the whitened
coordinates ``y = L⁻¹ x``: the Langevin step is ``x' = x + h L Lᵀ∇log γ + √(2h) L ξ`` and the
leapfrog ``p += ε/2·Lᵀ∇log γ``, ``x += ε L p`` with ``p ~ N(0, I)``. This module is the one
place that knows how a factor is applied:

* :func:`mul` — ``L v`` (whitened → x-space: noise, momentum, drift);
* :func:`mul_t` — ``Lᵀ g`` (gradients into whitened space);
* :func:`solve` — ``L⁻¹ v`` (x-space displacements into whitened units: the jump statistic);
* :func:`inverse_mass` — ``L Lᵀ g`` and :func:`sq_norm_t` — ``|Lᵀ g|²`` (the Langevin
  drift and the quadratic term of its density).

Three forms, dispatched on the type:

* a plain array ``s`` (``(d,)``, or per particle ``(N, d)``): the diagonal ``L = diag(s)``.
  The expressions are the ones the moves used before this module existed, so a diagonal
  preconditioner gives the same numbers bit for bit (the EBM walkers and the interpolant
  sampler pass arrays);
* :class:`Dense` — a lower-triangular ``L`` (the Cholesky factor of a regularised weighted
  covariance), ``O(N d²)`` per application;
* :class:`LowRank` — ``L = D^{1/2}(I + U(Λ^{1/2} − I)Uᵀ)`` with ``D`` a diagonal of variances
  (fitted: the geometric mean of the marginal and the conditional ones) and ``U`` (``d × k``,
  orthonormal columns) ``k`` eigenvectors of the standardised covariance
  ``D^{-1/2} Σ D^{-1/2}`` with eigenvalues ``Λ``: ``L Lᵀ = D^{1/2}(I + U(Λ − I)Uᵀ)D^{1/2}``.
  Its inverse is closed form, ``L⁻¹ = (I + U(Λ^{-1/2} − I)Uᵀ) D^{-1/2}``, and every
  application costs ``O(N d k)`` (the form of BlackJAX's ``gaussian_euclidean_low_rank``).

**Cross-fitting.** A :class:`Dense` or :class:`LowRank` whose leaves carry a leading axis of
2 holds two factors: the first ``n // 2`` particles of a batch of ``n`` are moved with factor
``[0]``, the rest with factor ``[1]`` — two GEMMs on the two halves, never an ``(N, d, d)``
tensor. :func:`crossfit` fits factor ``[0]`` on the *second* half of the population and
factor ``[1]`` on the first, so no particle's kernel depends on its own position
(``DESIGN.md`` §2; resampled indices are sorted, so the copies of one ancestor sit in one
half).

**Exactness for any factor.** For a stage-fixed ``L`` the moves stay exact: the Langevin
proposal is ``N(x + h L Lᵀ∇log γ, 2h L Lᵀ)`` and its backward twin has the same covariance,
so ``log|det L|`` cancels in the Crooks/Metropolis ratio, and the ``|x' − x|²_{(LLᵀ)⁻¹}``
terms cancel too, leaving ``(y − x)·∇U`` and ``h/4·|Lᵀ∇U|²`` (no solve needed). The
leapfrog is the ordinary leapfrog in ``(y, p)``; ``x = L y`` is linear with a constant
Jacobian, so it stays volume preserving and reversible in ``(x, p)`` and ``−ΔH`` is
unchanged. Each particle uses one factor for its forward and backward kernels (its half's).

**Fitting** (:func:`fit`). The weighted covariance ``Σ`` of a half, standardised by its
diagonal (``C = D^{-1/2} Σ D^{-1/2}``, the diagonal fit's spread, with the same fallback
where a coordinate has no spread), is shrunk toward the identity as NumPyro's
``welford_covariance`` does: ``C ← (n/(n+5)) C + (5/(n+5)) I`` with ``n`` the half's Kish
ESS. So a covariance that is rank deficient (``d ≥ N/2``) or carried by a few particles
stays positive definite (smallest eigenvalue ≥ ``5/(n+5)``), and with little weight
information the fit is nearly the diagonal one. NumPyro adds ``10⁻³·5/(n+5)`` absolutely;
here the shrinkage is relative (in units of ``D``), so it does not depend on the model's
units. A factor that still comes out non-finite (all particles dead, NaN positions) falls
back to the diagonal ``diag(s)``; the weight put on the identity (1 for a fallback) is
returned so that the run can record it.
"""

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from numpyro_jarzynski.engine import weights as W

# NumPyro's shrinkage constant (hmc_util.welford_covariance): (n/(n+5))Σ + (5/(n+5))·I.
SHRINK_COUNT = 5.0
# A coordinate whose weighted spread is at most this is degenerate: the fallback is used.
MIN_SPREAD = 1e-12


class Dense(NamedTuple):
    """Lower-triangular factor ``L`` ``(d, d)``; ``(2, d, d)`` cross-fitted (module doc)."""

    chol: jax.Array


class LowRank(NamedTuple):
    """``L = diag(s)(I + U(√λ − 1)Uᵀ)``: ``sqrt_diag`` ``s`` ``(d,)``, ``basis`` ``U``
    ``(d, k)``, ``sqrt_eig`` ``√λ`` ``(k,)``; each with a leading 2 when cross-fitted."""

    sqrt_diag: jax.Array
    basis: jax.Array
    sqrt_eig: jax.Array


@dataclass(frozen=True)
class MassMatrix:
    """Which preconditioner a run fits (static): ``"diagonal"`` (default), ``"dense"``, or
    ``"low_rank"`` with ``rank`` directions."""

    kind: str = "diagonal"
    rank: int | None = None

    def __post_init__(self):
        if self.kind not in ("diagonal", "dense", "low_rank"):
            raise ValueError(f"MassMatrix kind must be 'diagonal', 'dense' or 'low_rank', "
                             f"got {self.kind!r}.")
        if (self.kind == "low_rank") != (self.rank is not None):
            raise ValueError("MassMatrix: a rank is given exactly for kind='low_rank'.")
        if self.rank is not None and (isinstance(self.rank, bool)
                                      or not isinstance(self.rank, int) or self.rank < 1):
            raise ValueError(f"MassMatrix rank must be an integer >= 1, got {self.rank!r}.")

    @property
    def name(self):
        return self.kind if self.rank is None else f"low_rank({self.rank})"


DIAGONAL = MassMatrix()


def is_diagonal(scale):
    return not isinstance(scale, (Dense, LowRank))


def _stacked(scale):
    return (scale.chol.ndim == 3) if isinstance(scale, Dense) else (scale.basis.ndim == 3)


def _by_half(fn, scale, v):
    """``fn(factor, v)`` with one factor, or per half of the batch when cross-fitted."""
    if not _stacked(scale):
        return fn(scale, v)
    h = v.shape[0] // 2
    first = jax.tree.map(lambda a: a[0], scale)
    second = jax.tree.map(lambda a: a[1], scale)
    return jnp.concatenate([fn(first, v[:h]), fn(second, v[h:])], axis=0)


def _low_rank_sym(v, basis, diag):
    """``(I + U diag(c) Uᵀ) v`` for a batch ``v`` ``(n, d)``, with ``c = diag``: O(n d k)."""
    return v + ((v @ basis) * diag) @ basis.T


def _mul(f, v):
    if isinstance(f, Dense):
        return v @ f.chol.T
    return f.sqrt_diag * _low_rank_sym(v, f.basis, f.sqrt_eig - 1.0)


def _mul_t(f, g):
    if isinstance(f, Dense):
        return g @ f.chol
    return _low_rank_sym(f.sqrt_diag * g, f.basis, f.sqrt_eig - 1.0)


def _solve(f, v):
    if isinstance(f, Dense):
        return solve_triangular(f.chol, v.T, lower=True).T
    return _low_rank_sym(v / f.sqrt_diag, f.basis, 1.0 / f.sqrt_eig - 1.0)


def _coef(coef, v):
    return v if coef is None else coef * v


def mul(scale, v, coef=None):
    """``coef · L v`` for a batch ``v`` ``(N, d)`` (``coef`` a scalar or ``(N, 1)``)."""
    if is_diagonal(scale):
        return scale * v if coef is None else coef * scale * v
    return _coef(coef, _by_half(_mul, scale, v))


def mul_t(scale, g, coef=None):
    """``coef · Lᵀ g`` (a gradient into whitened coordinates)."""
    if is_diagonal(scale):
        return scale * g if coef is None else coef * scale * g
    return _coef(coef, _by_half(_mul_t, scale, g))


def solve(scale, v):
    """``L⁻¹ v`` (an x-space displacement in whitened units)."""
    if is_diagonal(scale):
        return v / scale
    return _by_half(_solve, scale, v)


def inverse_mass(scale, g, coef):
    """``coef · L Lᵀ g``: the preconditioned gradient of the Langevin drift."""
    if is_diagonal(scale):
        return coef * scale**2 * g
    return coef * mul(scale, mul_t(scale, g))


def sq_norm_t(scale, g):
    """``|Lᵀ g|²`` summed over the last axis."""
    return jnp.sum(mul_t(scale, g) ** 2, axis=-1)


# ----------------------------------------------------------------------------------- fitting
def spread(log_w, x, fallback):
    """Weighted per-coordinate spread; ``fallback`` where it is degenerate (all dead → NaN)."""
    s = W.weighted_std(log_w, x)
    return jnp.where(s > MIN_SPREAD, s, fallback)


def weighted_covariance(log_w, x):
    """``(Σ, Kish ESS)`` of the weighted particles ``x`` ``(n, d)``; dead ones count 0."""
    w = W.normalized_weights(W.sanitize(log_w))
    mean = W.weighted_mean(log_w, x)
    xc = jnp.where(w[:, None] > 0, x - mean, 0.0)
    return (xc * w[:, None]).T @ xc, 1.0 / jnp.sum(w**2)


def _standardised(log_w, x, fallback):
    """Spread ``s``, shrunk standardised covariance ``C`` and the identity's weight in it."""
    s = spread(log_w, x, fallback)
    cov, n = weighted_covariance(log_w, x)
    raw = jnp.sqrt(jnp.maximum(jnp.diagonal(cov), 0.0))
    ok = raw > MIN_SPREAD
    eye = jnp.eye(x.shape[-1], dtype=x.dtype)
    corr = cov / (jnp.where(ok, raw, 1.0)[:, None] * jnp.where(ok, raw, 1.0)[None, :])
    corr = jnp.where(ok[:, None] & ok[None, :], corr, eye)
    a = SHRINK_COUNT / (n + SHRINK_COUNT)
    return s, (1.0 - a) * corr + a * eye, a


def fit(mass, log_w, x, fallback):
    """One factor fitted on the weighted particles ``x`` ``(n, d)``: ``(factor, shrinkage)``.

    ``diagonal``: the spread ``s`` (shrinkage 1). ``dense``: ``L = diag(s)·chol(C)``.
    ``low_rank``: ``D^{1/2}`` the geometric mean of the marginal and conditional spreads,
    ``s·(1/(C⁻¹)_ii)^{1/4}``, and the ``k`` eigenpairs of ``C`` re-standardised by it whose
    removal leaves the smallest condition number — ``a`` of the largest and ``k − a`` of the
    smallest eigenvalues, ``a`` chosen among ``0..k`` (strong correlation makes large *and*
    small ones)."""
    if mass.kind == "diagonal":
        return spread(log_w, x, fallback), jnp.ones((), x.dtype)
    s, c, a = _standardised(log_w, x, fallback)
    d = x.shape[-1]
    if mass.kind == "dense":
        chol = jnp.linalg.cholesky(c)
        ok = jnp.all(jnp.isfinite(chol)) & jnp.all(jnp.isfinite(s))
        chol = jnp.where(ok, s[:, None] * chol, jnp.diag(s))
        return Dense(chol), jnp.where(ok, a, 1.0).astype(x.dtype)
    k = mass.rank
    # The diagonal: the geometric mean of the marginal and the conditional variances
    # (``1/(C⁻¹)_ii``), for a Gaussian the ``sqrt(var x / var ∇log γ)`` of Seyboldt's low-rank
    # metric. The directions left uncorrected then sit between the two scales.
    e0, v0 = jnp.linalg.eigh(c)
    cond_var = 1.0 / jnp.sum(v0**2 / jnp.where(e0 > 0, e0, 1.0), axis=1)
    g = jnp.where(jnp.isfinite(cond_var) & (cond_var > 0), cond_var, 1.0) ** 0.25
    s = s * g
    evals, evecs = jnp.linalg.eigh(c / (g[:, None] * g[None, :]))  # ascending
    tops = jnp.arange(k + 1)  # a = number taken from the top
    big = jnp.maximum(evals[d - 1 - tops], 1.0)
    small = jnp.minimum(evals[k - tops], 1.0)
    top = jnp.argmin(big / small)
    j = jnp.arange(k)
    idx = jnp.where(j < top, d - 1 - j, j - top)
    basis, lam = evecs[:, idx], evals[idx]
    ok = (jnp.all(jnp.isfinite(basis)) & jnp.all(jnp.isfinite(lam)) & jnp.all(lam > 0)
          & jnp.all(jnp.isfinite(s)))
    basis = jnp.where(ok, basis, jnp.eye(d, k, dtype=x.dtype))
    sqrt_eig = jnp.where(ok, jnp.sqrt(jnp.where(lam > 0, lam, 1.0)), 1.0)
    return LowRank(s, basis, sqrt_eig), jnp.where(ok, a, 1.0).astype(x.dtype)


def crossfit(mass, log_w, x, fallback):
    """Cross-fitted preconditioner for the population ``(log_w, x)``: ``(scale, pooled,
    shrinkage)``.

    Each half is moved with the factor fitted on the *other* half. Diagonal: a per-particle
    ``(N, d)`` spread (the preconditioner the package has always used); dense and low rank:
    a stacked factor (module doc). ``pooled`` is the mean ``(d,)`` spread of the halves, the
    next stage's fallback; ``shrinkage`` the mean weight of the identity in the two fits."""
    n = log_w.shape[0]
    half = n // 2
    f_first, a_first = fit(mass, log_w[:half], x[:half], fallback)
    f_second, a_second = fit(mass, log_w[half:], x[half:], fallback)
    if mass.kind == "diagonal":
        in_first = (jnp.arange(n) < half)[:, None]
        scale = jnp.where(in_first, f_second, f_first)
        pooled = 0.5 * (f_first + f_second)
    else:
        scale = jax.tree.map(lambda b, a: jnp.stack([b, a]), f_second, f_first)
        pooled = 0.5 * (spread(log_w[:half], x[:half], fallback)
                        + spread(log_w[half:], x[half:], fallback))
    return scale, pooled, 0.5 * (a_first + a_second)


__all__ = ["DIAGONAL", "Dense", "LowRank", "MassMatrix", "crossfit", "fit", "inverse_mass",
           "is_diagonal", "mul", "mul_t", "solve", "spread", "sq_norm_t",
           "weighted_covariance"]
