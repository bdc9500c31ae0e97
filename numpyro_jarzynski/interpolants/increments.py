"""Weight increments of one step of the generative SDE ``dX = (b_t + ε s_t)(X) dt + √(2ε) dW``.

Both are Crooks increments ``ΔA = log ρ_{t+h}(x') L(x | x') − log ρ_t(x) M(x' | x)`` (design
notes §1) for a step ``t → t + h`` with one noise level ``ε`` per step; both make the weighted
walkers exact for ``ρ_{t+h}`` whatever ``h``.

**Scheme A (plain Euler–Maruyama).** Forward ``M(x'|x) = N(x'; x + h F, 2εh I)`` with
``F = b_t(x) + ε s_t(x)``; backward ``L(x|x') = N(x; x' − h G, 2εh I)``, the EM step of the
time-reversed SDE, with ``G = b_{t+h}(x') − ε s_{t+h}(x')``. Writing ``δ = x' − x``, the
``|δ|²/(4εh)`` terms of the two Gaussian exponents cancel exactly:

.. math::

    \\log\\frac{L(x|x')}{M(x'|x)} = \\frac{δ·(G − F)}{2ε} + \\frac{h}{4ε}(|F|^2 − |G|^2),

which is what is computed (no ``O(1)/h`` terms to cancel in float32). With ``b ≡ 0, ε ≡ 1``
it is the ULA increment of :func:`numpyro_jarzynski.engine.moves.langevin_log_increment`.
Pathwise ``ΔA = O(h)`` (mean ``O(h²)``).

**Scheme B (transport + Langevin splitting).** The deterministic transport
``x̃ = x + h b_t(x)`` has increment ``log ρ_{t+h}(x̃) − log ρ_t(x) + log|det(I + h ∇b_t(x))|``
(change of variables); by the continuity equation ``∂_t log ρ + b·s + ∇·b = 0`` it is
``O(h²)``. Then an unadjusted Langevin step at ``ρ_{t+h}`` with step ``εh`` and its Crooks
increment (the Metropolis log-ratio of MALA, pathwise ``O(h^{3/2})``). Pathwise the total is
``O(h^{3/2})``, the form in which the paper's ``A_{k+1} − A_k = O(h^{3/2})`` holds.
"""

import jax.numpy as jnp


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
