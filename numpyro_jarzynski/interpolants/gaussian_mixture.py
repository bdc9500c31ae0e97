"""Closed-form reference interpolant: linear interpolant from ``N(0, I)`` to a Gaussian mixture.

With ``x_t = (1 − t) x_0 + t x_1``, ``x_0 ~ N(0, I)`` and ``x_1 ~ Σ_j p_j N(μ_j, Σ_j)``
independent, each component stays Gaussian along the path:

.. math::

    ρ_t(x) = Σ_j p_j\\, N(x;\\, t μ_j,\\, C_j(t)), \\qquad C_j(t) = (1 − t)^2 I + t^2 Σ_j .

The velocity ``b_t(x) = E[x_1 − x_0 | x_t = x]`` and the score ``s_t = ∇ \\log ρ_t`` are
responsibility-weighted sums of the per-component Gaussian terms

.. math::

    b_j(x) = μ_j + \\tfrac12 \\dot C_j C_j^{-1} (x − t μ_j), \\qquad
    s_j(x) = −C_j^{-1} (x − t μ_j),

with responsibilities ``r_j(x) ∝ p_j N(x; t μ_j, C_j)``. Each ``Σ_j`` is diagonalised once
(``Σ_j = U_j diag(λ_j) U_jᵀ``), so that ``C_j(t) = U_j diag((1 − t)² + t² λ_j) U_jᵀ`` costs no
factorisation per evaluation. ``ρ_t`` is normalised, so ``Z_1 / Z_0 = 1`` exactly: a correctly
weighted integrator must give ``E[exp(A)] = 1`` at any step size.
"""

from math import erf, sqrt

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp


class GaussianMixtureInterpolant:
    """``ρ_t``, velocity, score and exact draws of the linear interpolant ``N(0, I) → mixture``.

    Args:
        weights: mixture weights ``p_j``, shape ``(J,)``, positive (normalised here).
        means: ``μ_j``, shape ``(J, d)``.
        covariances: ``Σ_j``: shape ``(J,)`` for isotropic ``c_j I``, or ``(J, d, d)``
            symmetric positive definite.

    All methods take a scalar time ``t`` in ``[0, 1]`` and a single point ``x`` of shape
    ``(d,)`` (``vmap`` them over walkers), matching :class:`InterpolantSampler`'s signatures.
    """

    def __init__(self, weights, means, covariances):
        weights = np.asarray(weights, dtype=np.float64)
        means = np.asarray(means, dtype=np.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (J, d); got shape {means.shape}.")
        num, dim = means.shape
        if weights.shape != (num,) or np.any(weights <= 0) or not np.all(np.isfinite(weights)):
            raise ValueError(
                f"weights must be {num} positive finite numbers (one per mean); got {weights}."
            )
        cov = np.asarray(covariances, dtype=np.float64)
        if cov.shape == (num,):
            cov = cov[:, None, None] * np.eye(dim)
        if cov.shape != (num, dim, dim):
            raise ValueError(
                f"covariances must have shape ({num},) (isotropic c_j I) or ({num}, {dim}, {dim}); "
                f"got shape {cov.shape}."
            )
        if not np.allclose(cov, np.swapaxes(cov, -1, -2)):
            raise ValueError("covariances must be symmetric.")
        eigval, eigvec = np.linalg.eigh(cov)
        if np.any(eigval <= 0):
            raise ValueError("covariances must be positive definite (all eigenvalues > 0).")
        self.weights = weights / weights.sum()
        self.means = means
        self.covariances = cov
        self.dim = dim
        dtype = jnp.result_type(float)
        self._log_p = jnp.asarray(np.log(self.weights), dtype)
        self._mu = jnp.asarray(means, dtype)
        self._lam = jnp.asarray(eigval, dtype)
        self._u = jnp.asarray(eigvec, dtype)

    @classmethod
    def gaussian(cls, mean, covariance):
        """A single Gaussian endpoint ``N(mean, covariance)``: ``ρ_t = N(tμ, (1−t)² I + t² Σ)``."""
        mean = np.asarray(mean, dtype=np.float64)
        return cls([1.0], mean[None], np.asarray(covariance, dtype=np.float64)[None])

    # --- per-component pieces in each component's eigenbasis --------------------------------
    def _components(self, t, x):
        t = jnp.asarray(t, x.dtype)
        var = (1 - t) ** 2 + t**2 * self._lam  # (J, d): eigenvalues of C_j(t)
        dvar = -2 * (1 - t) + 2 * t * self._lam  # their time derivatives
        y = jnp.einsum("jab,ja->jb", self._u, x - t * self._mu)  # U_jᵀ (x − tμ_j)
        log_comp = self._log_p - 0.5 * jnp.sum(
            y**2 / var + jnp.log(var) + jnp.log(2 * jnp.pi), axis=-1
        )
        return var, dvar, y, log_comp

    def log_density(self, t, x):
        """``log ρ_t(x)`` (normalised)."""
        return logsumexp(self._components(t, x)[3])

    def score(self, t, x):
        """``∇ log ρ_t(x) = −Σ_j r_j C_j^{-1} (x − tμ_j)``."""
        var, _, y, log_comp = self._components(t, x)
        r = jax.nn.softmax(log_comp)
        per = -jnp.einsum("jab,jb->ja", self._u, y / var)
        return r @ per

    def velocity(self, t, x):
        """``b_t(x) = Σ_j r_j [μ_j + ½ Ċ_j C_j^{-1} (x − tμ_j)]``."""
        var, dvar, y, log_comp = self._components(t, x)
        r = jax.nn.softmax(log_comp)
        per = self._mu + jnp.einsum("jab,jb->ja", self._u, 0.5 * dvar / var * y)
        return r @ per

    # --- exact draws and exact endpoint statistics ------------------------------------------
    def sample(self, rng_key, t, num_samples):
        """``num_samples`` exact draws from ``ρ_t`` (``t = 0`` gives the ``N(0, I)`` start)."""
        key_j, key_z = jax.random.split(rng_key)
        dtype = self._mu.dtype
        j = jax.random.categorical(key_j, self._log_p, shape=(num_samples,))
        z = jax.random.normal(key_z, (num_samples, self.dim), dtype)
        t = jnp.asarray(t, dtype)
        std = jnp.sqrt((1 - t) ** 2 + t**2 * self._lam[j])
        return t * self._mu[j] + jnp.einsum("nab,nb->na", self._u[j], std * z)

    def mean(self):
        """Exact endpoint mean ``Σ_j p_j μ_j``."""
        return self.weights @ self.means

    def covariance(self):
        """Exact endpoint covariance ``Σ_j p_j (Σ_j + μ_j μ_jᵀ) − m mᵀ``."""
        m = self.mean()
        second = np.einsum("j,jab->ab", self.weights, self.covariances)
        second = second + np.einsum("j,ja,jb->ab", self.weights, self.means, self.means)
        return second - np.outer(m, m)

    def halfspace_mass(self, direction, offset=0.0):
        """Exact endpoint mass ``P(direction · x_1 > offset) = Σ_j p_j Φ((u·μ_j − c)/√(uᵀΣ_j u))``.

        With ``direction`` pointing from one mode to another this is the mode mass that an
        integrator with a time-discretisation bias gets wrong.
        """
        u = np.asarray(direction, dtype=np.float64)
        sd = np.sqrt(np.einsum("a,jab,b->j", u, self.covariances, u))
        z = (self.means @ u - offset) / sd
        return float(self.weights @ np.array([0.5 * (1 + erf(v / sqrt(2))) for v in z]))
