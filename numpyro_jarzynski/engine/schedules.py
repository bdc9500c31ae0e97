"""Annealing schedules: fixed (linear, geometric, user array) and adaptive (bisection on the
conditional ESS). A schedule is a sequence ``0 < β_1 < … < β_K = 1`` of stage targets."""

import jax
import jax.numpy as jnp
import numpy as np


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
    if np.any(np.diff(s) < 0) or s[0] <= 0 or not np.isclose(s[-1], 1.0):
        raise ValueError(
            "schedule must be non-decreasing, start above 0 and end at exactly 1 "
            f"(got first={s[0]}, last={s[-1]})."
        )
    s[-1] = 1.0
    return s


def solve_next_beta(cess_fn, beta, target, min_increment=1e-6, num_iter=24):
    """Largest ``β' ∈ (β, 1]`` with ``cess_fn(β') ≥ target``, found by bisection.

    ``cess_fn`` maps a candidate ``β'`` to the conditional ESS of the increment it implies.
    If even ``β' = 1`` keeps the CESS above target, returns 1. The result is at least
    ``β + min_increment`` (the stall guard: a schedule that could not move would otherwise
    loop forever; the caller reports the stall, see :func:`check_progress`).
    """
    beta = jnp.asarray(beta)
    one = jnp.ones_like(beta)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = cess_fn(mid) >= target
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, num_iter, body, (beta, one))
    nxt = jnp.where(cess_fn(one) >= target, one, lo)
    return jnp.clip(jnp.maximum(nxt, beta + min_increment), 0.0, 1.0)


class ScheduleStalled(RuntimeError):
    """Raised when an adaptive schedule cannot reach β = 1 within its stage budget."""


def check_progress(beta, num_stages, min_increment):
    """Host-side check used after a run: a clear error instead of a silent, unfinished anneal."""
    if float(beta) < 1.0:
        raise ScheduleStalled(
            f"The adaptive schedule reached only beta={float(beta):.4g} after {num_stages} "
            f"stages (min_increment={min_increment}). Increase the number of stages "
            "(num_warmup), lower target_ess, or use more moves per stage."
        )
