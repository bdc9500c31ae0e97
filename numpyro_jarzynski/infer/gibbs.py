r"""Gibbs moves for discrete latent sites at the current temperature.

At inverse temperature β the tempered target is

.. math::  \gamma_\beta(x, s) = p(x, s)\, p(y \mid x, s)^\beta ,

with ``x`` the continuous and ``s`` the discrete latents. One call of the move made by
:func:`make_discrete_move` does ``num_sweeps`` sweeps over the discrete sites (in model
order); each site is updated from its exact conditional under ``γ_β``:

* **Generic coordinate sweep** (any site whose elements have a finite ``enumerate_support``,
  including sites written the NumPyro way, ``d.expand(shape).to_event(k)`` or ``.mask(m)``:
  the ``Independent`` / ``ExpandedDistribution`` / ``MaskedDistribution`` wrappers are
  unwrapped to the base distribution ``d``, see ``model_bridge.element_distribution``): for
  every coordinate ``j`` (one element of the site's value; an event of the unwrapped base
  distribution, e.g. a one-hot vector, counts as one coordinate) and every candidate value
  ``v_k`` of the base support, evaluate ``log γ_β`` of the whole model with ``s_j = v_k``
  (the wrapped site's own log density included, so masks and event sums are respected) and
  draw

  .. math::  P(s_j = v_k \mid \text{rest}) \propto \gamma_\beta(x, s_{-j}, v_k).

  Cost: ``K`` model evaluations per coordinate per particle (vectorised over particles and
  candidates, ``lax.scan`` over coordinates).

* **Gibbs-sweep protocol**: a distribution that implements the tempered-site protocol
  (``tempering_base()``, ``tempering_log_tilt(value)``) and

  ``gibbs_sweep(rng_key, value, beta) -> new_value``,

  an exact sweep leaving ``∝ exp(base.log_prob(value) + β · tilt(value))`` invariant, is
  updated by that method instead (e.g. the checkerboard sweep of
  :class:`~numpyro_jarzynski.distributions.IsingLattice`). This is only the site's full
  tempered conditional when **no other term of the model depends on the site's value**; the
  move checks this on the traced program (a jaxpr dependency test) and raises otherwise.

**No weight increment.** Each update samples exactly from a conditional of ``γ_β``, so it
leaves ``ρ_β`` invariant; with the annealing work already added for ``β`` (or the Crooks
increment of the ULA move into ``γ_β``), the weights stay valid and the move adds nothing
to them. ``tempering.smc_step`` calls the move after the continuous moves at the stage's β.
"""

import math

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from numpyro_jarzynski.infer import model_bridge as bridge

SCANS = ("systematic", "random")


def validate_options(num_sweeps, scan):
    """Check the user options of the discrete move; returns ``(num_sweeps, scan)``."""
    if int(num_sweeps) != num_sweeps or int(num_sweeps) < 1:
        raise ValueError(f"num_sweeps must be a positive integer, got {num_sweeps!r}.")
    if scan not in SCANS:
        raise ValueError(
            f"scan must be 'systematic' (coordinates in order) or 'random' (a fresh random "
            f"order each sweep), got {scan!r}."
        )
    return int(num_sweeps), scan


def has_gibbs_sweep(fn):
    """Whether a distribution provides its own exact tempered sweep (the protocol above)."""
    return callable(getattr(fn, "gibbs_sweep", None))


def _site_trace(model, model_args, model_kwargs, z, disc):
    return bridge.trace_model(
        model, model_args, model_kwargs or {}, bridge.unconstrained_substitute(z, disc)
    )


def _log_density_of_others(model, model_args, model_kwargs, z, disc, exclude):
    """Sum of every sample site's log density except site ``exclude`` (Jacobians omitted:
    they depend on continuous sites only)."""
    tr = _site_trace(model, model_args, model_kwargs, z, disc)
    total = jnp.zeros(())
    for name, site in tr.items():
        if site["type"] != "sample" or name == exclude:
            continue
        if not site["is_observed"] and bridge.is_tempered_site(site["fn"]):
            total = total + sum(bridge.tempered_parts(site))
        else:
            total = total + bridge.site_log_prob(site)
    return total


def _output_depends_on_input(fn, example):
    """Whether ``fn``'s output depends on its argument, from the data flow of its jaxpr.

    Conservative: an equation whose inputs depend on the argument makes all its outputs
    dependent (including through sub-programs), so a false "independent" is impossible."""
    spec = jax.ShapeDtypeStruct(jnp.shape(example), jnp.result_type(example))
    jaxpr = jax.make_jaxpr(fn)(spec).jaxpr
    dependent = set(jaxpr.invars)

    def hit(v):
        return not isinstance(v, jex_core.Literal) and v in dependent

    for eqn in jaxpr.eqns:
        if any(hit(v) for v in eqn.invars):
            dependent.update(eqn.outvars)
    return any(hit(v) for v in jaxpr.outvars)


def _check_protocol_site(model, model_args, model_kwargs, z, disc, name, site):
    fn = site["fn"]
    if not bridge.is_tempered_site(fn):
        raise ValueError(
            f"Site {name!r}: its distribution ({type(fn).__name__}) has gibbs_sweep but not the "
            "tempered-site methods tempering_base() and tempering_log_tilt(value); gibbs_sweep "
            "(key, value, beta) must leave base·exp(β·tilt) invariant, so both are required."
        )
    if site["scale"] is not None:
        raise ValueError(
            f"Site {name!r} uses gibbs_sweep inside a subsampled plate (scale != 1); the sweep "
            "cannot account for the scale. Do not subsample this site."
        )

    def others(value):
        return _log_density_of_others(
            model, model_args, model_kwargs, z, {**disc, name: value}, exclude=name
        )

    if _output_depends_on_input(others, disc[name]):
        raise ValueError(
            f"Site {name!r}: its distribution's gibbs_sweep samples the site from its own "
            "tempered density only, but other terms of the model (observed sites, factors or "
            "other latent sites) depend on its value, so the sweep would not be an exact Gibbs "
            "step. Either fold those terms into the distribution (its tempering_log_tilt and "
            "gibbs_sweep), or hide gibbs_sweep (e.g. wrap the distribution) so that the "
            "generic sweep is used."
        )


def _site_layout(fn, value_shape, support):
    """Per-particle coordinates of a site for the generic sweep.

    Returns ``(cand, n_units, unit_size)``: ``cand`` has shape ``(K, n_units, unit_size)``,
    the K support values of every coordinate (a coordinate is one event of the base
    distribution under the ``.expand`` / ``.to_event`` / ``.mask`` wrappers, whose
    per-element support ``inspect_model`` recorded)."""
    unit_event_dim = bridge.element_distribution(fn).event_dim
    unit_size = math.prod(value_shape[len(value_shape) - unit_event_dim:])
    n_units = math.prod(value_shape) // max(unit_size, 1)
    support = jnp.asarray(support)
    k, rest = support.shape[0], support.shape[1:]
    pad = len(value_shape) - len(rest)
    support = support.reshape((k,) + (1,) * pad + rest)
    cand = jnp.broadcast_to(support, (k,) + tuple(value_shape))
    return cand.reshape(k, n_units, unit_size), n_units, unit_size


def make_discrete_move(model, model_args, model_kwargs, spec, unravel, num_sweeps=1,
                       scan="systematic"):
    """Build ``move(key, beta, x, disc) -> disc`` for ``TemperingConfig.discrete_move``.

    ``x``: flat unconstrained continuous particles ``(N, d)`` (``unravel`` maps one row to the
    site dict); ``disc``: dict of ``(N, ...)`` discrete values. Built from the arguments given
    to ``sample`` so that ``jit_model_args=True`` sees new data.
    """
    num_sweeps, scan = validate_options(num_sweeps, scan)
    model_kwargs = model_kwargs or {}

    def log_gamma(beta, xi, di):
        lp, ll = bridge.split_log_density(model, model_args, model_kwargs, spec, unravel(xi), di)
        return lp + beta * ll

    def generic_update(key, beta, x, disc, name, fn):
        n = x.shape[0]
        value_shape = disc[name].shape[1:]
        dtype = disc[name].dtype
        cand, n_units, unit = _site_layout(fn, value_shape, spec.discrete_support[name])
        cand = cand.astype(dtype)
        k_order, k_draw = jax.random.split(key)
        order = (jnp.arange(n_units) if scan == "systematic"
                 else jax.random.permutation(k_order, n_units))

        def logits_one(j, xi, di):  # (K,) log γ_β with coordinate j set to each candidate
            flat = di[name].reshape(n_units, unit)

            def at(v):
                return log_gamma(beta, xi, {**di, name: flat.at[j].set(v).reshape(value_shape)})

            return jax.vmap(at)(cand[:, j])

        def body(d, jk):
            j, kj = jk
            logits = jax.vmap(logits_one, (None, 0, 0))(j, x, d)  # (N, K)
            logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
            choice = jax.random.categorical(kj, logits, axis=-1)
            flat = d[name].reshape(n, n_units, unit)
            # A particle with no finite candidate (dead) keeps its value.
            ok = jnp.any(jnp.isfinite(logits), axis=-1)[:, None]
            new = jnp.where(ok, cand[choice, j], flat[:, j])
            return {**d, name: flat.at[:, j].set(new).reshape(d[name].shape)}, None

        disc, _ = jax.lax.scan(body, disc, (order, jax.random.split(k_draw, n_units)))
        return disc

    def protocol_update(key, beta, x, disc, name):
        def one(k, xi, di):
            fn = _site_trace(model, model_args, model_kwargs, unravel(xi), di)[name]["fn"]
            return fn.gibbs_sweep(k, di[name], beta).astype(di[name].dtype)

        new = jax.vmap(one)(jax.random.split(key, x.shape[0]), x, disc)
        return {**disc, name: new}

    def move(key, beta, x, disc):
        if not spec.discrete:
            return disc
        # Structure (which sites use the protocol, their base event dims) is static: read it
        # from one traced particle. The ops it creates are dead code in the compiled program.
        x0, d0 = x[0], {k: v[0] for k, v in disc.items()}
        tr = _site_trace(model, model_args, model_kwargs, unravel(x0), d0)
        plan = []
        for name in spec.discrete:
            site = tr[name]
            if has_gibbs_sweep(site["fn"]):
                _check_protocol_site(model, model_args, model_kwargs, unravel(x0), d0, name, site)
                plan.append((name, None))
            else:
                plan.append((name, site["fn"]))

        def sweep(d, k):
            for (name, fn), kk in zip(plan, jax.random.split(k, len(plan))):
                d = (protocol_update(kk, beta, x, d, name) if fn is None
                     else generic_update(kk, beta, x, d, name, fn))
            return d, None

        disc, _ = jax.lax.scan(sweep, disc, jax.random.split(key, num_sweeps))
        return disc

    return move


__all__ = ["SCANS", "has_gibbs_sweep", "make_discrete_move", "validate_options"]
