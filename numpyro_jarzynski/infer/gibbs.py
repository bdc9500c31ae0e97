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

* **Plate blocks** (the default, ``Gibbs(blocks="plate")``): a site declared inside
  ``numpyro.plate`` s has elements that are conditionally independent given everything outside
  those plates — that is what a plate declares. When every term of the model that depends on
  the site lies inside all of the site's plates (checked on the traced program: a jaxpr
  dependency test per site), the whole site is one block: for each candidate value ``v_k``
  the model is evaluated once with *every* element set to ``v_k``, each dependent term is
  kept per plate element (summed over its other dimensions), and every element is drawn
  from its own conditional at once,

  .. math::  P(s_i = v_k \mid \text{rest}) \propto \prod_{t \ni i} \gamma_{\beta,t}(x, s)
     \big|_{s \equiv v_k} ,

  where the product runs over the terms ``t`` at element ``i`` (its own prior term, the
  observations and latents of the same plate element). Exact for the same reason the
  coordinate sweep is — each element is drawn from its conditional under ``γ_β`` — and the
  elements of a block do not interact. Cost: ``K`` model evaluations per site per particle,
  linear in the number of observations (the coordinate sweep is quadratic). A site that
  fails the check (a term outside its plates depends on it, e.g. a prior on ``Σ_i s_i``;
  elements grouped by ``.to_event``; a batch dimension not declared by a plate) falls back to
  the coordinate sweep; ``gibbs_plan`` says which update each site gets.

* **Collapsed plate blocks** (the default, ``Gibbs(collapse=True)``): a plate block whose
  only dependent terms are its own prior and likelihood observations (no other latent site,
  no prior factor, and no other discrete site read by those observations) is summed out of the
  tempered path: :func:`collapsed_log_likelihood` gives
  ``Σ_i log Σ_k p(s_i = v_k | x) p(y_i | x, s_i = v_k)``, the block's part of
  ``log p(y | x)``, and the path is ``p(x) · p(y | x)^β`` (same evidence, the marginalised
  model's path). Its elements are drawn from their posterior conditional (the block update at
  β = 1): the path's joint is ``γ_β(x) · p(s | x, y)``, which that draw leaves invariant.

* **Gibbs-sweep protocol**: a distribution that implements the tempered-site protocol
  (``tempering_base()``, ``tempering_log_tilt(value)``) and

  ``gibbs_sweep(rng_key, value, beta) -> new_value``,

  an exact sweep leaving ``∝ exp(base.log_prob(value) + β · tilt(value))`` invariant, is
  updated by that method instead (e.g. the checkerboard sweep of
  :class:`~numpyro_jarzynski.distributions.IsingLattice`). This is only the site's full
  tempered conditional when **no other term of the model depends on the site's value**; the
  move checks this on the traced program (a jaxpr dependency test) and raises otherwise.

The move is a value, :class:`Gibbs` (``num_sweeps``, ``scan``, ``blocks``), composed with a
continuous move in a list: ``JarzynskiSMC(model, move=[MALA(), Gibbs()])``.

**No weight increment.** Each update samples exactly from a conditional of ``γ_β``, so it
leaves ``ρ_β`` invariant; with the annealing work already added for ``β`` (or the Crooks
increment of the ULA move into ``γ_β``), the weights stay valid and the move adds nothing
to them. ``tempering.smc_step`` applies the sequence (continuous move, then Gibbs, or the order of
the list) ``num_moves`` times per stage at the stage's β.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from numpyro_jarzynski.engine import noise
from numpyro_jarzynski.infer import model_bridge as bridge

SCANS = ("systematic", "random")
# A plate block with at most this many candidate values evaluates the model once per candidate
# as separate programs rather than vmapped over the candidates: XLA's CPU code for the
# batched gathers (and their scatter-add gradients) of `locs[z]` was several times slower.
UNROLL_CANDIDATES = 8
BLOCKS = ("plate", "coordinate")


def validate_options(num_sweeps, scan, blocks="plate", collapse=True):
    """Check the user options of the discrete move; returns ``(num_sweeps, scan, blocks)``."""
    if not isinstance(collapse, bool):
        raise TypeError(
            f"collapse must be True (plate blocks read only by observations are summed out of "
            f"the tempered path) or False (they are sampled along it), got {collapse!r}."
        )
    if isinstance(num_sweeps, bool) or int(num_sweeps) != num_sweeps or int(num_sweeps) < 1:
        raise ValueError(f"num_sweeps must be a positive integer, got {num_sweeps!r}.")
    if scan not in SCANS:
        raise ValueError(
            f"scan must be 'systematic' (coordinates in order) or 'random' (a fresh random "
            f"order each sweep), got {scan!r}."
        )
    if blocks not in BLOCKS:
        raise ValueError(
            f"blocks must be 'plate' (whole plates at once where the model allows it, the "
            f"coordinate sweep elsewhere) or 'coordinate' (one element at a time), got "
            f"{blocks!r}."
        )
    return int(num_sweeps), scan, blocks


@dataclasses.dataclass(frozen=True)
class Gibbs:
    """Exact Gibbs updates of the model's discrete latent sites at the stage's β (a move value).

    :param int num_sweeps: sweeps over all discrete sites per application.
    :param str scan: coordinate order of the coordinate sweep, ``"systematic"`` or
        ``"random"`` (a fresh random order per sweep).
    :param str blocks: ``"plate"`` (default): a site inside plates whose elements are
        conditionally independent is drawn as one vectorised block (cost linear in its
        size); other sites, and all sites with ``"coordinate"``, get the coordinate sweep.
    :param bool collapse: ``True`` (default): a plate block whose only dependent terms are
        its own prior and observations (a mixture assignment, a per-observation indicator)
        is **summed out of the tempered path** — the weights and the continuous moves see
        ``p(x) · p(y | x)^β`` with ``p(y | x) = Σ_s p(s | x) p(y | x, s)``, computed per
        plate element at ``K`` model evaluations — and its elements are drawn from their
        exact posterior conditional ``p(s | x, y)`` for the output (Rao–Blackwellisation:
        the same log Z, with the assignment noise taken out of the weights and no
        slow continuous/discrete coupling to mix). ``False``: every block is sampled along
        the path at the stage's β (the data-augmentation scheme).

    Invariant for ``γ_β``: no weight increment. Compose it with the continuous move,
    ``move=[MALA(), Gibbs()]``; the list is applied in order ``num_moves`` times per stage.
    """

    num_sweeps: int = 1
    scan: str = "systematic"
    blocks: str = "plate"
    collapse: bool = True

    name = "gibbs"
    invariant = True

    def __post_init__(self):
        validate_options(self.num_sweeps, self.scan, self.blocks, self.collapse)


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


def _outputs_depending_on_input(fn, example):
    """For each output of ``fn``, whether it depends on the argument (jaxpr data flow).

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
    return [hit(v) for v in jaxpr.outvars]


def _output_depends_on_input(fn, example):
    return any(_outputs_depending_on_input(fn, example))


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


def _site_layout(unit_event_dim, value_shape, support):
    """Per-particle coordinates of a site for the generic sweep.

    Returns ``(cand, n_units, unit_size)``: ``cand`` has shape ``(K, n_units, unit_size)``,
    the K support values of every coordinate (a coordinate is one event of the base
    distribution under the ``.expand`` / ``.to_event`` / ``.mask`` wrappers, whose
    per-element support ``inspect_model`` recorded)."""
    unit_size = math.prod(value_shape[len(value_shape) - unit_event_dim:])
    n_units = math.prod(value_shape) // max(unit_size, 1)
    support = jnp.asarray(support)
    k, rest = support.shape[0], support.shape[1:]
    pad = len(value_shape) - len(rest)
    support = support.reshape((k,) + (1,) * pad + rest)
    cand = jnp.broadcast_to(support, (k,) + tuple(value_shape))
    return cand.reshape(k, n_units, unit_size), n_units, unit_size


class _Block(NamedTuple):
    """A plate block: the dependent terms ``((site, is_likelihood), ...)``, the site's batch
    shape and the (negative) batch dimensions that are plates."""

    terms: tuple
    batch_shape: tuple
    plate_dims: tuple


def _term_elements(site, z):
    """One site's contribution to ``log γ`` per batch element, with its log-Jacobian."""
    el = bridge.site_log_prob_elements(site)
    if site["name"] in z:
        el = el + bridge.log_det_elements(site, z[site["name"]])
    return el


def _to_block(el, batch_shape, plate_dims):
    """Sum a term over its dimensions that are not the site's plates; shape ``batch_shape``."""
    el = jnp.asarray(el)
    nd, r = el.ndim, len(batch_shape)
    el = jnp.sum(el, axis=tuple(a for a in range(nd) if a - nd not in plate_dims), keepdims=True)
    el = el.reshape(el.shape[nd - r:]) if nd >= r else el.reshape((1,) * (r - nd) + el.shape)
    return jnp.broadcast_to(el, batch_shape)


def categorical(key, logits):
    """One draw per row of ``logits`` (last axis: the candidates) by the inverse CDF: one
    uniform per row from :mod:`~numpyro_jarzynski.engine.noise` (the hash written out), where
    ``jax.random.categorical`` draws a Gumbel per candidate through JAX's rolled threefry,
    which dominated the cost of a plate block. A candidate of zero probability is never
    chosen (the first index whose CDF exceeds ``u`` times the total); a row with no finite
    logit returns an arbitrary index (the callers keep the old value there)."""
    p = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    cdf = jnp.cumsum(p, axis=-1)
    u = noise.uniform(key, logits.shape[:-1], dtype=cdf.dtype) * cdf[..., -1]
    return jnp.argmax(cdf > u[..., None], axis=-1)


def _tempered(site):
    return not site["is_observed"] and bridge.is_tempered_site(site["fn"])


def _dependents(model, model_args, model_kwargs, z, disc, name):
    """``(trace, names)``: the model's trace and the sample sites whose log density depends
    on the value of discrete site ``name`` (a jaxpr data-flow test; conservative)."""
    tr = _site_trace(model, model_args, model_kwargs, z, disc)
    names = [n for n, st in tr.items() if st["type"] == "sample"]

    def totals(value):
        t = _site_trace(model, model_args, model_kwargs, z, {**disc, name: value})
        return [sum(bridge.tempered_parts(t[n])) if _tempered(t[n])
                else jnp.sum(_term_elements(t[n], z)) for n in names]

    deps = _outputs_depending_on_input(totals, disc[name])
    return tr, [n for n, dep in zip(names, deps) if dep]


def _block_plan(model, model_args, model_kwargs, spec, z, disc, name, site):
    """The plate block of discrete site ``name``, or ``None`` if only the coordinate sweep is
    exact for it (see the module docstring for the conditions)."""
    fn = site["fn"]
    if bridge.element_distribution(fn).event_dim != fn.event_dim:
        return None  # elements grouped into one event by .to_event: not plate-independent
    batch = tuple(fn.batch_shape)
    frames = {f.dim: f for f in site["cond_indep_stack"]}
    plate_dims = tuple(d for d in range(-len(batch), 0) if batch[d] > 1)
    if not plate_dims or any(d not in frames or frames[d].size != batch[d] for d in plate_dims):
        return None
    plates = {frames[d].name for d in plate_dims}
    tr, dependents = _dependents(model, model_args, model_kwargs, z, disc, name)
    terms = []
    for n in dependents:
        st = tr[n]
        if _tempered(st) or not plates <= {f.name for f in st["cond_indep_stack"]}:
            return None
        shape = jnp.shape(_term_elements(st, z))
        if any(len(shape) < -d or shape[d] != batch[d] for d in plate_dims):
            return None
        terms.append((n, bool(st["is_observed"] and n not in spec.prior_factors)))
    return _Block(tuple(terms), batch, plate_dims)


def _collapsible(plan, dependents):
    """The plate blocks of ``plan`` that can be summed out of the tempered path: their
    dependent terms are their own prior and likelihood observations only (no latent site, no
    prior factor), and no other discrete site is read by those observations (a shared
    observation would need a joint sum, and the other site's update would see the summed-out
    site's draw). ``dependents``: site -> the sample sites depending on it."""
    out = {}
    for name, kind, block in plan:
        if kind != "plate" or not all(is_lik for t, is_lik in block.terms if t != name):
            continue
        obs = {t for t, is_lik in block.terms if is_lik}
        if all(not obs & set(deps) for other, deps in dependents.items() if other != name):
            out[name] = block
    return out


def _plan(model, model_args, model_kwargs, spec, z, disc, blocks, collapse=False):
    """``[(name, kind, detail)]`` for every discrete site: kind ``"protocol"`` (its own
    ``gibbs_sweep``), ``"plate"`` or ``"collapsed"`` (detail: the :class:`_Block`) or
    ``"coordinate"`` (detail: the site's distribution)."""
    tr = _site_trace(model, model_args, model_kwargs, z, disc)
    plan = []
    for name in spec.discrete:
        site = tr[name]
        if has_gibbs_sweep(site["fn"]):
            _check_protocol_site(model, model_args, model_kwargs, z, disc, name, site)
            plan.append((name, "protocol", None))
            continue
        block = None
        if blocks == "plate":
            block = _block_plan(model, model_args, model_kwargs, spec, z, disc, name, site)
        plan.append((name, "plate", block) if block is not None
                    else (name, "coordinate", site["fn"]))
    if collapse:
        dependents = {n: _dependents(model, model_args, model_kwargs, z, disc, n)[1]
                      for n in spec.discrete}
        summed = _collapsible(plan, dependents)
        plan = [(n, "collapsed", d) if n in summed else (n, k, d) for n, k, d in plan]
    return plan


def collapsed_blocks(model, model_args, model_kwargs, spec, z, disc, gibbs):
    """``{site: block}`` of the discrete sites that the move value ``gibbs`` sums out of the
    tempered path (``z``, ``disc``: one particle's unconstrained continuous and discrete
    values, read for structure only)."""
    if not spec.discrete or gibbs.blocks != "plate" or not gibbs.collapse:
        return {}
    plan = _plan(model, model_args, model_kwargs, spec, z, disc, "plate", collapse=True)
    return {name: block for name, kind, block in plan if kind == "collapsed"}


def collapsed_terms(collapsed):
    """Names of the sites whose terms the collapsed blocks account for (the blocks' sites and
    their observations): the rest of the model is evaluated as usual."""
    return tuple(t for block in collapsed.values() for t, _ in block.terms)


def _block_candidates(spec, name, block, value):
    """``(cand, full)``: the site's candidate values per element ``(K, n_units, unit)`` and
    the K whole-site values with every element set to ``v_k``."""
    value_shape = jnp.shape(value)
    cand, _, _ = _site_layout(len(value_shape) - len(block.batch_shape), value_shape,
                              spec.discrete_support[name])
    cand = cand.astype(jnp.result_type(value))
    return cand, cand.reshape((cand.shape[0],) + tuple(value_shape))


def _block_logits(model, model_args, model_kwargs, spec, zi, di, name, block, beta):
    """``(K, *batch_shape)``: each element's unnormalised log conditional under ``γ_β`` for
    every candidate value, one model evaluation per candidate (``zi``: one particle's site
    dict; its likelihood terms are multiplied by ``beta``)."""
    _, full = _block_candidates(spec, name, block, di[name])

    def at(v):
        tr = _site_trace(model, model_args, model_kwargs, zi, {**di, name: v})
        total = jnp.zeros(block.batch_shape)
        for site_name, is_lik in block.terms:
            el = _to_block(_term_elements(tr[site_name], zi), block.batch_shape,
                           block.plate_dims)
            total = total + (beta * el if is_lik else el)
        return total

    if full.shape[0] <= UNROLL_CANDIDATES:
        return jnp.stack([at(full[k]) for k in range(full.shape[0])])
    return jax.vmap(at)(full)


def collapsed_log_likelihood(model, model_args, model_kwargs, spec, zi, di, collapsed):
    r"""``Σ_blocks Σ_i log Σ_k p(s_i = v_k | x) p(y_i | x, s_i = v_k)`` for one particle: the
    collapsed blocks' part of ``log p(y | x)``, with their sites summed out element by element
    (exact: within a plate the elements are conditionally independent, and no other term
    depends on them)."""
    total = jnp.zeros(())
    for name, block in collapsed.items():
        logits = _block_logits(model, model_args, model_kwargs, spec, zi, di, name, block, 1.0)
        logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
        total = total + jnp.sum(jax.nn.logsumexp(logits, axis=0))
    return total


def gibbs_plan(model, model_args=(), model_kwargs=None, blocks="plate", prior_factors=(),
               collapse=True):
    """Which exact update each discrete latent site of ``model`` gets: a dict mapping site
    names to ``"collapsed"`` (summed out of the tempered path, drawn from its posterior
    conditional), ``"plate"`` (one vectorised block per sweep), ``"coordinate"`` (element by
    element) or ``"protocol"`` (the distribution's own ``gibbs_sweep``). ``blocks`` and
    ``collapse`` are those of :class:`Gibbs`."""
    validate_options(1, "systematic", blocks, collapse)
    model_kwargs = model_kwargs or {}
    spec = bridge.inspect_model(model, model_args, model_kwargs, prior_factors)
    z, disc, _ = bridge.draw_prior(model, model_args, model_kwargs, spec, jax.random.key(0), 1)
    z0 = {n: v[0] for n, v in z.items() if n in spec.continuous}
    d0 = {n: v[0] for n, v in disc.items()}
    return {n: kind for n, kind, _ in _plan(model, model_args, model_kwargs, spec, z0, d0,
                                            blocks, collapse and blocks == "plate")}


def make_discrete_move(model, model_args, model_kwargs, spec, unravel, num_sweeps=1,
                       scan="systematic", blocks="plate", collapse=False):
    """Build ``move(key, beta, x, disc) -> disc`` for ``TemperingConfig.discrete_move``.

    ``x``: flat unconstrained continuous particles ``(N, d)`` (``unravel`` maps one row to the
    site dict); ``disc``: dict of ``(N, ...)`` discrete values. Built from the arguments given
    to ``sample`` so that ``jit_model_args=True`` sees new data. ``collapse``: the sites that
    :func:`collapsed_blocks` sums out of the path are drawn from their posterior conditional
    (β = 1: the path's joint is ``γ_β(x) · p(s | x, y)``), the others at ``beta``.
    """
    num_sweeps, scan, blocks = validate_options(num_sweeps, scan, blocks, collapse)
    model_kwargs = model_kwargs or {}

    def log_gamma(beta, xi, di):
        lp, ll = bridge.split_log_density(model, model_args, model_kwargs, spec, unravel(xi), di)
        return lp + beta * ll

    def generic_update(key, beta, x, disc, name, fn):
        n = x.shape[0]
        value_shape = disc[name].shape[1:]
        dtype = disc[name].dtype
        cand, n_units, unit = _site_layout(bridge.element_distribution(fn).event_dim,
                                           value_shape, spec.discrete_support[name])
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
            choice = categorical(kj, logits)
            flat = d[name].reshape(n, n_units, unit)
            # A particle with no finite candidate (dead) keeps its value.
            ok = jnp.any(jnp.isfinite(logits), axis=-1)[:, None]
            new = jnp.where(ok, cand[choice, j], flat[:, j])
            return {**d, name: flat.at[:, j].set(new).reshape(d[name].shape)}, None

        disc, _ = jax.lax.scan(body, disc, (order, jax.random.split(k_draw, n_units)))
        return disc

    def block_update(key, beta, x, disc, name, block):
        cand, _ = _block_candidates(spec, name, block, disc[name][0])
        n_units = cand.shape[1]

        def logits_one(xi, di):  # (K, n_units): each element's conditional, all at once
            return _block_logits(model, model_args, model_kwargs, spec, unravel(xi), di, name,
                                 block, beta).reshape(-1, n_units)

        logits = jnp.moveaxis(jax.vmap(logits_one)(x, disc), 1, -1)  # (N, n_units, K)
        logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
        choice = categorical(key, logits)
        new = cand[choice, jnp.arange(n_units)]  # (N, n_units, unit)
        ok = jnp.any(jnp.isfinite(logits), axis=-1)[..., None]
        old = disc[name].reshape(new.shape)
        return {**disc, name: jnp.where(ok, new, old).reshape(disc[name].shape)}

    def protocol_update(key, beta, x, disc, name):
        def one(k, xi, di):
            fn = _site_trace(model, model_args, model_kwargs, unravel(xi), di)[name]["fn"]
            return fn.gibbs_sweep(k, di[name], beta).astype(di[name].dtype)

        new = jax.vmap(one)(jax.random.split(key, x.shape[0]), x, disc)
        return {**disc, name: new}

    def move(key, beta, x, disc):
        if not spec.discrete:
            return disc
        # Structure (which update each site gets) is static: read it from one traced
        # particle. The ops it creates are dead code in the compiled program.
        x0, d0 = x[0], {k: v[0] for k, v in disc.items()}
        plan = _plan(model, model_args, model_kwargs, spec, unravel(x0), d0, blocks,
                     collapse and blocks == "plate")

        def sweep(d, k):
            for (name, kind, detail), kk in zip(plan, jax.random.split(k, len(plan))):
                if kind == "protocol":
                    d = protocol_update(kk, beta, x, d, name)
                elif kind == "plate":
                    d = block_update(kk, beta, x, d, name, detail)
                elif kind == "collapsed":  # summed out of the path: its posterior conditional
                    d = block_update(kk, 1.0, x, d, name, detail)
                else:
                    d = generic_update(kk, beta, x, d, name, detail)
            return d, None

        disc, _ = jax.lax.scan(sweep, disc, jax.random.split(key, num_sweeps))
        return disc

    return move


__all__ = ["BLOCKS", "SCANS", "Gibbs", "collapsed_blocks", "collapsed_log_likelihood",
           "collapsed_terms", "gibbs_plan", "has_gibbs_sweep", "make_discrete_move",
           "validate_options"]
