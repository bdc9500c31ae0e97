r"""Paths as values: ``log γ(x, t)`` along the points ``t`` of a front-end's path.

A stage (:func:`numpyro_jarzynski.engine.stage.advance`) takes walkers weighted for ``γ_a`` to
walkers weighted for ``γ_b``. What it needs from the path is two things, and a path is a value
that supplies exactly those:

* ``increment(x, cache, a, b)``: the work ``ΔA(x) = log γ_b(x) − log γ_a(x)`` at fixed walkers
  (``(N,)``; ``cache`` is what the target at ``a`` evaluated at ``x``, so that a path whose
  split makes the work cheap can read it from there);
* ``target(point)``: the :class:`~numpyro_jarzynski.engine.kernels.Target` of ``γ`` at a point,
  for the moves (or a function ``extra -> Target`` when ``γ`` depends on a carried per-walker
  tree, the discrete sites of a mixed model).

A path whose cache serves every point (``shared_cache = True``: tempering's cache holds the
prior and likelihood parts, and the target at any ``β`` reads its density off it) lets the
stage carry the cache across the stage; any other path's cache is re-evaluated at ``b``.

The three paths of the package:

============== ======================================= ==========================================
path           ``log γ(x, t)``                          work ``ΔA`` at fixed ``x``
============== ======================================= ==========================================
tempering      ``log prior(x) + β·log lik(x)``, β ∈ [0,1] ``(β_b − β_a)·log lik(x)``, from the cache
training       ``log γ_θ(x) = −U_θ(x)`` (+ the base)     ``log γ_{θ_b}(x) − log γ_{θ_a}(x)``
generation     ``log ρ_t(x)``, t ∈ [0, 1]                 ``log ρ_{t_b}(x) − log ρ_{t_a}(x)``
============== ======================================= ==========================================

A move may also cross the path itself (``bridging = True``: the interpolant's Euler–Maruyama
step from ``t_a`` to ``t_b``); its increment is then the whole Crooks term
``log γ_b(x')L(x|x') − log γ_a(x)M(x'|x)`` and the stage books no work at fixed ``x``. Such a
move sees both ends through a :class:`Crossing`.
"""

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from numpyro_jarzynski.engine import kernels as K


@runtime_checkable
class Path(Protocol):
    """What a stage reads off a path (module docstring)."""

    def increment(self, x, cache, a, b):
        """``log γ_b(x) − log γ_a(x)`` per walker, ``(N,)``."""

    def target(self, point):
        """The :class:`~.kernels.Target` of ``γ`` at ``point`` (or ``extra -> Target``)."""


class Crossing(NamedTuple):
    """The two ends of a stage as a bridging move sees them: the targets at ``a`` and ``b``
    and the points themselves (for the interpolant, the times ``t_a`` and ``t_b``)."""

    start: Any
    end: Any
    a: Any
    b: Any


def _finite_or_dead(v):
    return jnp.where(jnp.isfinite(v), v, -jnp.inf)


# --------------------------------------------------------------------------------- tempering
class SplitCache(NamedTuple):
    """``log γ_β = log prior + β·log lik`` split at every walker, with the gradients of both
    parts (``None`` for a path that is not differentiated, e.g. a lattice)."""

    log_prior: jax.Array  # (N,)
    log_lik: jax.Array  # (N,)
    grad_log_prior: Any = None  # (N, d)
    grad_log_lik: Any = None  # (N, d)

    def log_density(self, beta):
        return self.log_prior + beta * self.log_lik

    def grad(self, beta):
        return self.grad_log_prior + beta * self.grad_log_lik


def split_evaluator(log_prior, log_lik, differentiable=True):
    """``evaluate(x, extra) -> SplitCache`` from ``log_prior`` and ``log_lik``: per walker
    ``x_i`` with one vmapped ``value_and_grad`` of each, or, with ``differentiable=False``
    (discrete walkers), the values only, on the whole batch (the functions must broadcast over
    the leading axis, as NumPyro ``log_prob`` methods do)."""
    if differentiable:
        vg_p, vg_l = jax.vmap(jax.value_and_grad(log_prior)), jax.vmap(jax.value_and_grad(log_lik))

        def evaluate(x, extra=None):
            (lp, gp), (ll, gl) = vg_p(x), vg_l(x)
            return SplitCache(lp, ll, gp, gl)
    else:
        def evaluate(x, extra=None):
            return SplitCache(log_prior(x), log_lik(x))
    return evaluate


class TemperingPath(NamedTuple):
    """``log γ_β(x) = log prior(x) + β log lik(x)`` at point ``β``.

    ``evaluate(x, extra) -> cache``: a cache with ``log_lik`` and the readers
    ``log_density(β)``, ``grad(β)`` (:class:`SplitCache`, or ``JarzynskiSMC``'s
    ``ParticleCache``); ``extra`` is the carried discrete state of a mixed model (``None``
    otherwise). The work of ``β_a → β_b`` is ``(β_b − β_a)·log lik(x)``, read from the cache
    (no evaluation); a walker whose likelihood is not finite dies."""

    evaluate: Callable

    shared_cache = True  # the cache holds both parts: the target at any β reads it

    def increment(self, x, cache, a, b):
        return (b - a) * _finite_or_dead(cache.log_lik)

    def target(self, point):
        return lambda extra: K.Target(lambda x: self.evaluate(x, extra),
                                      lambda c: c.log_density(point), lambda c: c.grad(point),
                                      lambda c: c.log_lik)


# ---------------------------------------------------------------------------------- training
class ParameterPath(NamedTuple):
    """``log γ_θ(x)`` along the parameters of an energy model (``γ_θ = exp(−U_θ)``, times the
    base when it is part of the density): point ``θ`` is whatever ``log_density`` takes
    (the EBM trainer passes the energy distribution at ``θ``).

    ``log_density(θ, x)``: ``log γ_θ`` at walkers ``x`` (any batch shape, like a NumPyro
    ``log_prob``). The work of ``θ_a → θ_b`` is ``log γ_{θ_b}(x) − log γ_{θ_a}(x)``: one
    evaluation at ``θ_b``, ``log γ_{θ_a}`` read from the cache of the target at ``θ_a``
    (evaluated when there is none). ``differentiable=False`` (walkers moved by an exact
    sweep): the target evaluates the point's ``gibbs_cache(x)`` where it has one (an RBM's
    :class:`~numpyro_jarzynski.ebm.rbm.GibbsCache`: ``log γ`` and the hidden logits, which
    its sweep starts from), and nothing otherwise (``evaluate=None``, no cache)."""

    log_density: Callable
    differentiable: bool = True

    def increment(self, x, cache, a, b):
        log_a = self.log_density(a, x) if cache is None else cache[0]
        return self.log_density(b, x) - log_a

    def target(self, point):
        if self.differentiable:
            return K.density_target(lambda xi: self.log_density(point, xi))
        cached = getattr(point, "gibbs_cache", None)
        if cached is not None:
            return K.Target(cached, lambda c: c[0], None)
        return K.Target(None, None, None)


# -------------------------------------------------------------------------------- generation
class TimeCache(NamedTuple):
    """``log ρ_t``, its score and (for the interpolant's scheme A) the velocity ``b_t`` at
    every walker; ``velocity`` is ``None`` where nothing needs it."""

    log_p: jax.Array  # (N,)
    score: jax.Array  # (N, d)
    velocity: Any = None  # (N, d)


class GenerationPath(NamedTuple):
    """``log γ(x, t) = log ρ_t(x)``, ``t ∈ [0, 1]``: the path of a stochastic interpolant.

    ``log_density(t, x_i)`` for one walker (may be unnormalised); ``score(t, x_i)`` its
    gradient (``None``: autodiff). The target at ``t`` evaluates a :class:`TimeCache`. The work
    at fixed walkers is ``log ρ_{t_b}(x) − log ρ_{t_a}(x)`` (one evaluation at ``t_b``, ``t_a``
    from the cache); the interpolant's own moves bridge the path instead (module docstring)."""

    log_density: Callable
    score: Callable | None = None

    def density_and_score(self, t, x):
        if self.score is None:
            return jax.vmap(jax.value_and_grad(self.log_density, argnums=1), (None, 0))(t, x)
        return (jax.vmap(self.log_density, (None, 0))(t, x),
                jax.vmap(self.score, (None, 0))(t, x))

    def evaluate(self, t, x):
        return TimeCache(*self.density_and_score(t, x))

    def increment(self, x, cache, a, b):
        log_p = jax.vmap(self.log_density, (None, 0))
        return log_p(b, x) - (log_p(a, x) if cache is None else cache.log_p)

    def target(self, point):
        return K.Target(lambda x: self.evaluate(point, x), lambda c: c.log_p, lambda c: c.score)


__all__ = ["Crossing", "GenerationPath", "ParameterPath", "Path", "SplitCache",
           "TemperingPath", "TimeCache", "split_evaluator"]
