"""Annealing schedules: fixed (linear, geometric, user array) and adaptive (bisection on the
conditional ESS). A schedule is a sequence ``0 < β_1 < … < β_K = 1`` of stage targets."""

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_jarzynski.engine.weights import weighted_mean, weighted_std


def linear(num_stages):
    """``β_k = k / K`` for ``k = 1..K``."""
    return np.arange(1, num_stages + 1) / num_stages


def geometric(num_stages, beta_min=1e-4):
    """``β_k`` evenly spaced in ``log β`` from ``beta_min`` to 1 (``K`` stages)."""
    if num_stages == 1:
        return np.ones(1)
    return np.geomspace(beta_min, 1.0, num_stages)


def validate(schedule, num_stages):
    """Check a user schedule: increasing, in ``(0, 1]``, ending at 1, one entry per stage."""
    s = np.asarray(schedule, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"schedule must be one-dimensional, got shape {s.shape}.")
    if s.size == num_stages + 1 and s[0] == 0.0:
        s = s[1:]  # a schedule that lists β_0 = 0 too
    if s.size != num_stages:
        raise ValueError(
            f"schedule has {s.size} entries but num_warmup={num_stages} annealing stages; "
            "give one β per warmup step (optionally preceded by 0), or change num_warmup."
        )
    if not np.all(np.isfinite(s)):
        bad = np.flatnonzero(~np.isfinite(s)).tolist()
        raise ValueError(
            f"schedule has non-finite entries (NaN or inf) at positions {bad}; every β must be "
            "a number in (0, 1], non-decreasing, ending at 1."
        )
    if np.any(np.diff(s) < 0) or s[0] <= 0 or not np.isclose(s[-1], 1.0):
        raise ValueError(
            "schedule must be non-decreasing, start above 0 and end at exactly 1 "
            f"(got first={s[0]}, last={s[-1]})."
        )
    s[-1] = 1.0
    return s


def solve_next_beta(cess_fn, beta, target, min_increment=1e-20, num_iter=20):
    """Largest ``β' ∈ (β, 1]`` with ``cess_fn(β') ≥ target``, by bisection on ``log(β' − β)``.

    ``cess_fn`` maps a candidate ``β'`` to the conditional ESS of the increment it implies.
    The bisection runs on the logarithm of the increment ``Δβ ∈ [min_increment, 1 − β]``:
    a posterior much narrower than the prior needs first steps of ``1e-14`` or less, which a
    bisection on ``β'`` itself cannot resolve in float32 (its resolution near 0.5 is 3e-8, and
    24 halvings of [0, 1] stop at 6e-8). If even ``β' = 1`` keeps the CESS above target,
    returns 1. If even ``min_increment`` does not, returns ``β + min_increment``; the stage
    then records a conditional ESS below target, which the run report flags.
    """
    beta = jnp.asarray(beta)
    dtype = beta.dtype
    room = jnp.maximum(1.0 - beta, jnp.finfo(dtype).tiny)
    lo0 = jnp.log(jnp.minimum(jnp.asarray(min_increment, dtype), room))
    hi0 = jnp.log(room)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = cess_fn(beta + jnp.exp(mid)) >= target
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, num_iter, body, (lo0, hi0))
    one = jnp.ones_like(beta)
    nxt = jnp.where(cess_fn(one) >= target, one, beta + jnp.exp(lo))
    return jnp.clip(nxt, 0.0, 1.0)


def budget_pace(beta, remaining):
    """The geometric pace ``β' = β^{(R−1)/R}`` that reaches 1 after ``R = remaining`` stages.

    The cost of a step is its thermodynamic length ``∫ sd_β(log lik) dβ`` (the conditional ESS
    of a small step is ``≈ 1/(1 + Δβ² Var_β(log lik))``). Equal steps in ``log β`` split the
    rest of the path evenly when ``Var_β(log lik) ∝ β^{-2}``, the fastest decay there is (a
    Gaussian likelihood, ``Var = d/(2β²)``), so this pace never underestimates what is left
    to do: it is never faster than needed and only binds when the budget really is short.
    ``β = 0`` gives 0 (the first step is the schedule's); one stage left gives 1.
    """
    beta = jnp.asarray(beta)
    r = jnp.maximum(jnp.asarray(remaining, beta.dtype), 1.0)
    log_b = jnp.log(jnp.maximum(beta, jnp.finfo(beta.dtype).tiny))
    out = jnp.where(beta > 0, jnp.exp(log_b * (r - 1.0) / r), 0.0)
    return jnp.clip(jnp.where(r <= 1.0, 1.0, out), beta, 1.0)


def remaining_length(log_w, log_lik, beta):
    """Estimate of the thermodynamic length ``∫_β^1 sd_b(log lik) db`` left on the path.

    From the weighted population at ``β``: its spread ``sd_β`` of the log likelihood and the
    local slope ``s = d log sd_b / d log b = β κ₃ / (2 Var_β)`` (``d Var_b/db`` is the third
    central moment κ₃), clipped to ``[−1, 0]``, extrapolated as a power law
    ``sd_b = sd_β (b/β)^s``: ``∫ = sd_β (β^{−s} − β) / (1 + s)``. The clip keeps the estimate
    between the fastest decay there is (``s = −1``: a Gaussian likelihood, ``Var ∝ β^{−2}``,
    :func:`budget_pace`) and no decay (``s = 0``: ``sd_β (1 − β)``), so it does not shrink
    because of an unusually fast local decay; at ``β = 0``, ``s = 0``.
    """
    beta = jnp.asarray(beta)
    dtype = beta.dtype
    tiny = jnp.finfo(dtype).tiny
    sd = jnp.maximum(weighted_std(log_w, log_lik), jnp.sqrt(tiny))
    u = (log_lik - weighted_mean(log_w, log_lik)) / sd  # standardised, so that κ₃ = sd³ E[u³]
    # cannot overflow (float32, spreads of 1e13)
    s = jnp.clip(beta * sd * weighted_mean(log_w, u * u * u) / 2, -1.0, 0.0)
    s = jnp.where(jnp.isfinite(s), s, 0.0)
    b = jnp.maximum(beta, tiny)
    near = (1 + s) < 1e-3  # s = -1: sd_β β log(1/β)
    power = (jnp.power(b, -s) - beta) / jnp.maximum(1 + s, 1e-3)
    length = sd * jnp.where(near, beta * -jnp.log(b), power)  # β = 0: s = 0, power = 1
    return jnp.where(jnp.isfinite(length), jnp.maximum(length, 0.0), jnp.inf)


def fill_target(log_w, log_lik, beta, stages, target):
    """The conditional ESS per stage that spends the rest of the path evenly over ``stages``
    stages (:func:`remaining_length`; a step of thermodynamic length δ keeps the conditional
    ESS at ``≈ exp(−δ²)``), never below ``target``."""
    beta = jnp.asarray(beta)
    dtype = beta.dtype
    stages = jnp.maximum(jnp.asarray(stages, dtype), 1.0)
    delta = remaining_length(log_w, log_lik, beta) / stages
    cap = 1.0 - 100 * jnp.finfo(dtype).eps
    return jnp.clip(jnp.exp(-delta * delta), target, cap)
