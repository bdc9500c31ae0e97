"""Langevin moves and their weight increments (the paper's "role of the kernel").

Every function works on a batch: ``x`` has shape ``(N, d)``, ``log_p`` shape ``(N,)``,
``grad`` shape ``(N, d)``, and ``scale`` is the preconditioner, a factor ``L`` with
``M = L Lᵀ`` (:mod:`numpyro_jarzynski.engine.preconditioner`: an array ``s`` ``(d,)`` or
``(N, d)`` for the diagonal ``L = diag(s)``, or a dense or low-rank factor). ``step_size``
``h`` is dimensionless: the move is

.. math::  x' = x + h M \\nabla \\log \\gamma_a(x) + \\sqrt{2h}\\, L \\xi .

**Crooks increment.** With forward kernel ``M = ULA(γ_a)`` and backward kernel
``L = ULA(γ_b)`` (Carbone et al., NeurIPS 2023, arXiv:2305.19414),

.. math::

    \\Delta A = \\log\\frac{\\gamma_b(x') L(x | x')}{\\gamma_a(x) M(x' | x)}
              = -\\alpha_{U_b}(x', x) + \\alpha_{U_a}(x, x'),\\qquad
    \\alpha_U(x, y) = U(x) + \\tfrac12 (y - x)\\cdot\\nabla U(x) + \\tfrac h4 |\\nabla U(x)|_M^2,

with ``U = -log γ`` and ``|v|²_M = vᵀMv = |Lᵀv|²``. The proposal's ``log|det L|`` and its
``|x' − x|²_{M⁻¹}/(4h)`` term are the same forward and backward and cancel, so this holds
for any stage-fixed factor ``L`` (dense, low rank) with no solve. With this increment the weighted walkers are exact for ``γ_b`` whatever
``h``; without it ULA is biased by ``O(h)``. With ``a = b`` it is the Metropolis–Hastings log
ratio of MALA, which is how :func:`mala_accept` uses it.
"""

import jax
import jax.numpy as jnp

from numpyro_jarzynski.engine import noise as Z
from numpyro_jarzynski.engine import preconditioner as P


def langevin_proposal(rng_key, x, grad, step_size, scale):
    """One unadjusted Langevin (Euler–Maruyama) step, preconditioned by ``M = L Lᵀ``."""
    noise = Z.normal(rng_key, x.shape, x.dtype)
    return (x + P.inverse_mass(scale, grad, step_size)
            + P.mul(scale, noise, jnp.sqrt(2 * step_size)))


def _alpha(log_p, grad, x_from, x_to, step_size, scale):
    # α_U(x_from, x_to) with U = -log p, ∇U = -grad.
    return (
        -log_p
        - 0.5 * jnp.sum((x_to - x_from) * grad, axis=-1)
        + 0.25 * step_size * P.sq_norm_t(scale, grad)
    )


def langevin_log_increment(x, x_new, log_p_a, grad_a, log_p_b_new, grad_b_new, step_size, scale):
    """Crooks weight increment ``log γ_b(x') L(x|x') / (γ_a(x) M(x'|x))`` of a ULA move.

    ``log_p_a, grad_a`` are ``log γ_a`` and its gradient at ``x``; ``log_p_b_new, grad_b_new``
    are ``log γ_b`` and its gradient at ``x_new``. NaN or infinite inputs give ``-inf``.
    """
    inc = _alpha(log_p_a, grad_a, x, x_new, step_size, scale) - _alpha(
        log_p_b_new, grad_b_new, x_new, x, step_size, scale
    )
    return jnp.where(jnp.isfinite(inc), inc, -jnp.inf)


def mala_accept(rng_key, log_ratio):
    """Metropolis–Hastings test on ``log_ratio``; returns (accepted mask, acceptance prob)."""
    prob = jnp.where(jnp.isfinite(log_ratio), jnp.exp(jnp.minimum(log_ratio, 0.0)), 0.0)
    u = Z.uniform(rng_key, log_ratio.shape, log_ratio.dtype)
    return u < prob, prob


def select(mask, new, old):
    """Per-particle ``where`` over pytrees whose leaves have a leading particle axis."""

    def pick(a, b):
        m = mask.reshape(mask.shape + (1,) * (a.ndim - 1))
        return jnp.where(m, a, b)

    return jax.tree.map(pick, new, old)


def adapt_step_size(step_size, acceptance, target, rate=1.0, max_step=1.0):
    """Multiplicative step-size rule: ``log h ← log h + rate·(acc − target)``.

    ``acceptance`` comes from the previous stage's moves, so the step used on a population
    never depends on the moves it is about to make (the design notes warn that tuning on the
    particles being moved biases log Z). Capped at ``max_step`` (ULA is unstable past
    ``h = 1`` on a preconditioned Gaussian).
    """
    return jnp.minimum(step_size * jnp.exp(rate * (acceptance - target)), max_step)


def moves_for_renewal(num_moves, renewal, target, lo, hi):
    r"""Moves for the next stage, from this stage's ``renewal`` (of the log likelihood,
    :func:`numpyro_jarzynski.engine.stage.renewal`) over its ``num_moves`` moves, so that the
    next stage's renewal reaches ``target``.

    Model: after ``m`` moves the statistic's correlation with its start is ``ρ^m`` (a chain
    whose autocorrelation decays geometrically), so its renewal is ``1 − ρ^m`` and

    .. math:: m' = m \, \frac{\log(1 - r^*)}{\log(1 - r)},

    rounded and kept in ``[lo, hi]``. A renewal that is not finite (a likelihood that does
    not vary) keeps ``m``. The count is read from the *previous* stage, never from the moves
    it sets, so it does not depend on the particles it is about to move."""
    r = jnp.clip(renewal, 1e-3, 0.99)
    want = num_moves * (jnp.log1p(-target) / jnp.log1p(-r))
    m = jnp.clip(jnp.round(want), lo, hi)
    return jnp.where(jnp.isfinite(renewal), m, num_moves).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# Increments of the generative-SDE steps used by the interpolant front-end.
#
# Weight increments of one step of the generative SDE ``dX = (b_t + ε s_t)(X) dt + √(2ε) dW``.
#
# Both are Crooks increments ``ΔA = log ρ_{t+h}(x') L(x | x') − log ρ_t(x) M(x' | x)`` (design
# notes §1) for a step ``t → t + h`` with one noise level ``ε`` per step; both make the weighted
# walkers exact for ``ρ_{t+h}`` whatever ``h``.
#
# **Scheme A (plain Euler–Maruyama).** Forward ``M(x'|x) = N(x'; x + h F, 2εh I)`` with
# ``F = b_t(x) + ε s_t(x)``; backward ``L(x|x') = N(x; x' − h G, 2εh I)``, the EM step of the
# time-reversed SDE, with ``G = b_{t+h}(x') − ε s_{t+h}(x')``. Writing ``δ = x' − x``, the
# ``|δ|²/(4εh)`` terms of the two Gaussian exponents cancel exactly:
#
# .. math::
#
#     \\log\\frac{L(x|x')}{M(x'|x)} = \\frac{δ·(G − F)}{2ε} + \\frac{h}{4ε}(|F|^2 − |G|^2),
#
# which is what is computed (no ``O(1)/h`` terms to cancel in float32). With ``b ≡ 0, ε ≡ 1``
# it is the ULA increment of :func:`numpyro_jarzynski.engine.moves.langevin_log_increment`.
# Pathwise ``ΔA = O(h)`` (mean ``O(h²)``).
#
# **Scheme B (transport + Langevin splitting).** The deterministic transport
# ``x̃ = x + h b_t(x)`` has increment ``log ρ_{t+h}(x̃) − log ρ_t(x) + log|det(I + h ∇b_t(x))|``
# (change of variables); by the continuity equation ``∂_t log ρ + b·s + ∇·b = 0`` it is
# ``O(h²)``. Then an unadjusted Langevin step at ``ρ_{t+h}`` with step ``εh`` and its Crooks
# increment (the Metropolis log-ratio of MALA, pathwise ``O(h^{3/2})``). Pathwise the total is
# ``O(h^{3/2})``, the form in which the paper's ``A_{k+1} − A_k = O(h^{3/2})`` holds.


def em_log_increment(x, x_new, log_p, log_p_new, drift_fwd, drift_bwd, step, noise):
    """Scheme A Crooks increment for a batch (``x`` ``(N, d)``, ``log_p`` ``(N,)``).

    ``drift_fwd = b_t(x) + ε s_t(x)`` at the old state, ``drift_bwd = b_{t+h}(x') − ε s_{t+h}(x')``
    at the new one, ``step = h``, ``noise = ε``. NaN or infinite terms give ``-inf`` (dead walker).
    """
    delta = x_new - x
    kernel_ratio = jnp.sum(delta * (drift_bwd - drift_fwd), axis=-1) / (2 * noise) + (
        step / (4 * noise)
    ) * (jnp.sum(drift_fwd**2, axis=-1) - jnp.sum(drift_bwd**2, axis=-1))
    inc = log_p_new - log_p + kernel_ratio
    return jnp.where(jnp.isfinite(inc), inc, -jnp.inf)


def transport_log_increment(log_p, log_p_moved, jacobian, step):
    """Scheme B transport increment ``log ρ_{t+h}(x̃) − log ρ_t(x) + log|det(I + h ∇b)|``.

    ``jacobian`` is ``∇b_t(x)``, shape ``(N, d, d)``: the exact log-determinant costs ``d``
    Jacobian-vector products and an ``O(d³)`` factorisation per walker.
    """
    eye = jnp.eye(jacobian.shape[-1], dtype=jacobian.dtype)
    _, log_abs_det = jnp.linalg.slogdet(eye + step * jacobian)
    inc = log_p_moved - log_p + log_abs_det
    return jnp.where(jnp.isfinite(inc), inc, -jnp.inf)
