"""From a NumPyro model and its arguments to what the SMC engine needs.

* :func:`inspect_model` classifies the sites once (continuous / discrete latents, observed
  sites, factors, deterministic sites) and rejects models the kernel cannot handle, with an
  error that names the site and the fix.
* :func:`split_log_density` evaluates the *prior part* (latent log densities plus the
  log-Jacobians of the maps to unconstrained space) and the *likelihood part* (observed sites
  and, by default, ``numpyro.factor`` terms) separately: the tempered target is
  ``log γ_β = log prior + β · log likelihood``.
* :func:`draw_prior` draws exact prior particles (vmapped seeded traces), after checking
  ``init_particles`` against the shapes and supports recorded by :func:`inspect_model`.
* :func:`constrain` maps unconstrained particles back, adding deterministic sites.

Why not ``numpyro.infer.util.potential_energy``: it adds the Jacobian as an *observed* factor
site, so blocking observed sites to get the prior would drop it. Here the substitution into
unconstrained space is done by hand and the Jacobian is booked in the prior part.
Everything that touches model internals lives in this module.

**Tempered latent sites.** A latent site whose distribution implements the two methods

* ``tempering_base()`` -> a proper NumPyro distribution (exactly sampleable), and
* ``tempering_log_tilt(value)`` -> the log of the unnormalised tilt ``exp(-U(value))``,

(e.g. an energy-based model ``base(x)·exp(−U(x))``) is split: its base log density goes to
the prior part and its tilt to the tempered part, and particles start as base draws. With no
observations the log evidence is then ``log Z`` of the energy model relative to its base.
"""

import warnings
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.distributions.util import sum_rightmost


@dataclass(frozen=True)
class ModelSpec:
    """Site names by role, in model order. Structural only: never holds data."""

    continuous: tuple
    discrete: tuple
    improper: tuple
    observed: tuple
    factors: tuple
    prior_factors: tuple
    deterministic: tuple
    tempered: tuple  # latent sites split by the tempered-site protocol
    # name -> support values of one element (of the unwrapped base distribution, see
    # element_distribution; None if the site has its own gibbs_sweep)
    discrete_support: dict
    # Latent site -> shape of its value (batch + event shape), and -> its support
    # (a numpyro constraint), for checking init_particles before any model call. The
    # constraint of a data-dependent support holds those parameters.
    site_shapes: dict = field(default_factory=dict)
    site_supports: dict = field(default_factory=dict)


def unwrap(fn):
    while True:
        base = getattr(fn, "base_dist", None)
        if base is None:
            return fn
        fn = base


_ELEMENTWISE_WRAPPERS = (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)


def element_distribution(fn):
    """The distribution of one element of a site written the NumPyro way.

    ``Independent`` (``.to_event``), ``ExpandedDistribution`` (``.expand``) and
    ``MaskedDistribution`` (``.mask``) change only how elements are batched, counted as one
    event, or masked out of the log density: every element of the value still takes its value
    in the support of the base distribution. Unwrapping them gives that base, whose
    ``enumerate_support`` is the per-element support of a discrete site (``Independent``
    itself has none)."""
    while isinstance(fn, _ELEMENTWISE_WRAPPERS):
        fn = fn.base_dist
    return fn


def _is_improper(fn):
    return isinstance(unwrap(fn), dist.ImproperUniform)


def is_tempered_site(fn):
    """Whether a distribution implements the tempered-site protocol (see module docstring)."""
    return hasattr(fn, "tempering_base") and hasattr(fn, "tempering_log_tilt")


def _is_factor(site):
    return isinstance(unwrap(site["fn"]), dist.Unit)


def site_log_prob_elements(site):
    """The site's log density before summing over its batch (subsample scale applied)."""
    value = site["value"]
    if site.get("intermediates"):
        lp = site["fn"].log_prob(value, site["intermediates"])
    else:
        lp = site["fn"].log_prob(value)
    if site["scale"] is not None:
        lp = site["scale"] * lp
    return lp


def site_log_prob(site):
    return jnp.sum(site_log_prob_elements(site))


def _placeholder(site):
    # A value inside the support for improper sites, so that a structural trace can run.
    fn = site["fn"]
    t = biject_to(fn.support)
    shape = t.inverse_shape(fn.shape()) if hasattr(t, "inverse_shape") else fn.shape()
    return t(jnp.zeros(shape))


def trace_model(model, args, kwargs, substitute_fn=None, rng_seed=0):
    # A fixed seed makes plate subsamples (and any unsubstituted draw) deterministic, so the
    # tempered target is one fixed function during a run.
    fn = handlers.seed(model, rng_seed=rng_seed)
    if substitute_fn is not None:
        fn = handlers.substitute(fn, substitute_fn=substitute_fn)
    return handlers.trace(fn).get_trace(*args, **kwargs)


def _enumerable_support(fn):
    """Support values of one element of a discrete site, or None if not enumerable."""
    fn = element_distribution(fn)
    if not getattr(fn, "has_enumerate_support", False):
        return None
    try:
        return fn.enumerate_support(expand=False)
    except Exception:  # noqa: BLE001 - any failure means "not enumerable"
        return None


def _check_plate(name, site):
    size, subsample_size = site["args"]
    if subsample_size is not None and subsample_size < size:
        raise ValueError(
            f"Plate {name!r} subsamples {subsample_size} of its {size} elements "
            f"(subsample_size={subsample_size}). JarzynskiSMC's log evidence needs the full "
            "likelihood: the model is traced with a fixed seed, so every run, key and chain "
            f"would use the same {subsample_size} elements, scaled by {size}/{subsample_size}, "
            "and report the evidence of that subsample, not of the data (a fresh subsample "
            "per evaluation would make the tempered target itself random). Remove "
            "subsample_size from the plate (or pass the full data)."
        )


def _warn_if_no_likelihood(observed, factors, prior_factors, tempered, latent):
    r"""Without observed sites, likelihood factors or tempered sites the tempered target
    ``γ_β = prior`` does not depend on β: ``log Z = 0`` and the "posterior" is the prior."""
    if observed or set(factors) - set(prior_factors) or tempered:
        return
    shown = ", ".join(repr(n) for n in latent[:8]) + (", ..." if len(latent) > 8 else "")
    warnings.warn(
        "The model has no observed sites, no numpyro.factor term in the likelihood and no "
        "tempered sites, so nothing is tempered: the log evidence will be 0 and the "
        "'posterior' is the prior. If your data are among the latent sites "
        f"({shown}), they were given obs=None and became latent variables: pass the data "
        "as obs= (e.g. numpyro.sample('y', dist.Normal(mu, s), obs=y) with y not None). "
        "If you meant to sample the prior, ignore this warning.",
        UserWarning,
        stacklevel=3,
    )


def inspect_model(model, model_args=(), model_kwargs=None, prior_factors=()):
    """Classify the model's sites and reject unsupported ones with actionable errors.

    Checks, each naming the site and the fix:

    * a plate with ``subsample_size < size`` is an error: the evidence
      ``Z = ∫ p(θ) p(y | θ) dθ`` needs the full likelihood, and a subsample fixed by the
      structural seed would give the evidence of that subsample instead;
    * a discrete latent site must have a finite support per element (``Independent``,
      ``ExpandedDistribution`` and ``MaskedDistribution`` wrappers are unwrapped, see
      :func:`element_distribution`) or its own ``gibbs_sweep``;
    * a model with nothing to temper (no observed site, no likelihood factor, no tempered
      site) gets a ``UserWarning``: ``γ_β`` is the prior for every β, so ``log Z = 0``.

    Records each latent site's value shape and support for :func:`draw_prior`.
    """
    model_kwargs = model_kwargs or {}

    def structural(site):
        if site["type"] != "sample" or site["is_observed"]:
            return None
        if is_tempered_site(site["fn"]):
            return site["fn"].tempering_base().sample(jax.random.key(0))
        if _is_improper(site["fn"]):
            return _placeholder(site)
        return None

    tr = trace_model(model, model_args, model_kwargs, structural)
    continuous, discrete, improper, observed, factors, det, tempered = [], [], [], [], [], [], []
    support, shapes, supports = {}, {}, {}
    for name, site in tr.items():
        if site["type"] == "deterministic":
            det.append(name)
        if site["type"] == "plate":
            _check_plate(name, site)
        if site["type"] != "sample":
            continue
        if site["infer"].get("enumerate") == "parallel":
            raise ValueError(
                f"Site {name!r} is marked infer={{'enumerate': 'parallel'}}. JarzynskiSMC "
                "does not enumerate: its discrete sites are updated by Gibbs moves at the "
                "current temperature. Remove the 'enumerate' annotation (or marginalise the "
                "site by hand)."
            )
        if site["is_observed"]:
            (factors if _is_factor(site) else observed).append(name)
            continue
        fn = site["fn"]
        shapes[name] = tuple(jnp.shape(site["value"]))
        supports[name] = fn.support
        if is_tempered_site(fn):
            tempered.append(name)
        if fn.support.is_discrete:
            values = _enumerable_support(fn)
            # A distribution with its own exact tempered sweep (gibbs_sweep, see
            # numpyro_jarzynski.infer.gibbs) needs no enumerable support.
            if values is None and not callable(getattr(fn, "gibbs_sweep", None)):
                raise ValueError(
                    f"Latent site {name!r} has a discrete distribution "
                    f"({type(element_distribution(fn)).__name__}) with infinite or "
                    "non-enumerable support. "
                    "JarzynskiSMC updates discrete sites by exact Gibbs over their support, so "
                    "the support must be finite: truncate it (e.g. a Categorical over "
                    "0..K-1), marginalise it out of the model, or supply a custom move (a "
                    "distribution with gibbs_sweep(key, value, beta) and the tempered-site "
                    "methods; see docs/discrete.md)."
                )
            discrete.append(name)
            support[name] = values
            continue
        if _is_improper(fn) and not is_tempered_site(fn):
            improper.append(name)
        continuous.append(name)
    if not continuous and not discrete:
        raise ValueError(
            "The model has no latent sample sites: there is nothing to infer. Check that the "
            "data are passed as `obs=` only for observed sites, or evaluate the likelihood "
            "directly with numpyro.infer.util.log_density."
        )
    unknown = set(prior_factors) - set(factors)
    if unknown:
        raise ValueError(
            f"prior_factors names {sorted(unknown)}, which are not numpyro.factor sites of "
            f"the model (its factor sites are {factors})."
        )
    _warn_if_no_likelihood(observed, factors, prior_factors, tempered, continuous + discrete)
    return ModelSpec(
        tuple(continuous), tuple(discrete), tuple(improper), tuple(observed), tuple(factors),
        tuple(prior_factors), tuple(det), tuple(tempered), support, shapes, supports,
    )


def unconstrained_substitute(z, discrete):
    def fn(site):
        if site["type"] != "sample" or site["is_observed"]:
            return None
        name = site["name"]
        if name in z:
            return biject_to(site["fn"].support)(z[name])
        if name in discrete:
            return discrete[name]
        return None

    return fn


def log_det_elements(site, u):
    """Log-Jacobian of the site's map from unconstrained ``u``, per batch element."""
    t = biject_to(site["fn"].support)
    value = site["value"]
    ld = t.log_abs_det_jacobian(u, value)
    ld = sum_rightmost(ld, jnp.ndim(ld) - jnp.ndim(value) + len(site["fn"].event_shape))
    if site["scale"] is not None:
        ld = site["scale"] * ld
    return ld


def _log_det(site, u):
    return jnp.sum(log_det_elements(site, u))


def tempered_parts(site):
    fn, value = site["fn"], site["value"]
    base_lp = jnp.sum(fn.tempering_base().log_prob(value))
    tilt = jnp.sum(fn.tempering_log_tilt(value))
    if site["scale"] is not None:
        base_lp, tilt = site["scale"] * base_lp, site["scale"] * tilt
    return base_lp, tilt


def split_log_density(model, model_args, model_kwargs, spec, z, discrete=None, skip=()):
    """``(log prior, log likelihood)`` of one particle given unconstrained latents ``z``.

    The prior part holds every latent site's log density and the log-Jacobian of its map to
    unconstrained space; the likelihood part holds observed sites and the ``numpyro.factor``
    terms not listed in ``spec.prior_factors``. Subsample scales are applied to both. Sites
    named in ``skip`` are left out (the caller accounts for them: collapsed discrete blocks).
    """
    discrete = discrete or {}
    tr = trace_model(model, model_args, model_kwargs or {}, unconstrained_substitute(z, discrete))
    log_prior = jnp.zeros(())
    log_lik = jnp.zeros(())
    for name, site in tr.items():
        if site["type"] != "sample" or name in skip:
            continue
        if not site["is_observed"] and is_tempered_site(site["fn"]):
            base_lp, tilt = tempered_parts(site)
            log_prior = log_prior + base_lp
            log_lik = log_lik + tilt
            if name in z:
                log_prior = log_prior + _log_det(site, z[name])
            continue
        lp = site_log_prob(site)
        if not site["is_observed"]:
            log_prior = log_prior + lp
            if name in z:
                log_prior = log_prior + _log_det(site, z[name])
        elif name in spec.prior_factors:
            log_prior = log_prior + lp
        else:
            log_lik = log_lik + lp
    return log_prior, log_lik


def _one_prior_draw(model, model_args, model_kwargs, spec, rng_key, given, proposals):
    """One exact prior draw. ``given``: constrained values to use as they are; ``proposals``:
    distributions to draw some sites from, corrected by importance weights."""
    names = list(proposals) + [n for n in spec.tempered if n not in proposals]
    keys = {n: k for n, k in zip(names, jax.random.split(rng_key, len(names) + 1)[1:])}
    drawn = {}

    def fn(site):
        if site["type"] != "sample" or site["is_observed"]:
            return None
        name = site["name"]
        if name in given:
            return given[name]
        if name in proposals:
            drawn[name] = proposals[name].sample(keys[name])
            return drawn[name]
        if is_tempered_site(site["fn"]):
            return site["fn"].tempering_base().sample(keys[name])
        return None

    seed = jax.random.split(rng_key)[0]
    tr = handlers.trace(
        handlers.substitute(handlers.seed(model, rng_seed=seed), substitute_fn=fn)
    ).get_trace(*model_args, **(model_kwargs or {}))
    log_w = jnp.zeros(())
    for name, value in drawn.items():
        log_w = log_w + site_log_prob(tr[name]) - jnp.sum(proposals[name].log_prob(value))
    z = {n: biject_to(tr[n]["fn"].support).inv(tr[n]["value"]) for n in spec.continuous}
    disc = {n: tr[n]["value"] for n in spec.discrete}
    return z, disc, log_w


def _concrete(fn):
    """``fn()`` as a NumPy array, evaluated eagerly even under ``jit``/``pmap``; None when it
    depends on traced values (e.g. a support whose bounds come from traced model arguments),
    in which case the check that asked for it is skipped."""
    try:
        with jax.ensure_compile_time_eval():
            return np.asarray(fn())
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def _outside_support(support, values):
    """Per leading index (particle or draw), whether any element of ``values`` is outside
    ``support``; None if that cannot be decided eagerly."""
    ok = _concrete(lambda: support.check(jnp.asarray(values)))
    if ok is None:
        return None
    if ok.ndim == 0:
        ok = np.full(len(values), bool(ok))
    return ~ok.reshape(len(values), -1).all(axis=1)


def _check_given(name, v, num_particles, spec, continuous):
    """Arrays in ``init_particles`` are taken as ``N`` independent exact prior draws: check
    shape, NaN and support (errors) and that they are spread like draws (a warning)."""
    shape = spec.site_shapes.get(name)
    expected = None if shape is None else (num_particles, *shape)
    if jnp.ndim(v) == 0 or jnp.shape(v)[0] != num_particles:
        raise ValueError(
            f"init_particles[{name!r}] has shape {tuple(jnp.shape(v))} (leading dimension "
            f"{jnp.shape(v)[0] if jnp.ndim(v) else 'none'}), expected num_particles="
            f"{num_particles} particles"
            + ("" if expected is None else f", i.e. shape {expected} (num_particles, *site_shape)")
            + "."
        )
    if expected is not None and tuple(jnp.shape(v)) != expected:
        raise ValueError(
            f"init_particles[{name!r}] has shape {tuple(jnp.shape(v))}, but site {name!r} has "
            f"shape {shape}, so the expected shape is {expected} = (num_particles, "
            "*site_shape): one constrained value of the site per particle along the first "
            "axis. Reshape the array (or check which site it belongs to)."
        )
    a = _concrete(lambda: v)
    if a is None:  # traced values: nothing more can be checked here
        return
    if np.issubdtype(a.dtype, np.inexact):
        bad = np.isnan(a).reshape(num_particles, -1).any(axis=1)
        if bad.any():
            raise ValueError(
                f"init_particles[{name!r}]: {int(bad.sum())} of {num_particles} particles "
                "contain NaN. Arrays in init_particles are taken as exact prior draws; a NaN "
                "particle has no density and silently shrinks the population (it would shift "
                "the log evidence by log(alive/N)). Pass only finite prior draws, or drop "
                "init_particles for this site."
            )
    support = spec.site_supports.get(name)
    if support is not None:
        out = _outside_support(support, a)
        if out is not None and out.any():
            raise ValueError(
                f"init_particles[{name!r}]: {int(out.sum())} of {num_particles} particles "
                f"lie outside the site's support ({support}). Arrays in init_particles are "
                "taken as exact prior draws, and a prior draw is always in the support. "
                "Pass values on the support (constrained space, not the unconstrained one)."
            )
    if continuous and num_particles > 1 and np.all(a == a[:1]):
        warnings.warn(
            f"init_particles[{name!r}]: all {num_particles} particles are equal (zero spread "
            "across particles). Arrays in init_particles must be independent exact prior "
            "draws, not a starting point: the SMC estimates (log evidence and posterior "
            "weights) start from the prior and are wrong for any other initial population. "
            "Pass N prior draws (e.g. from numpyro.infer.Predictive on the model without "
            "data), a proposal distribution (importance-corrected), or drop init_particles.",
            UserWarning,
            stacklevel=4,
        )


PROPOSAL_CHECK_DRAWS = 256


def _check_proposal(name, proposal, spec):
    """A proposal distribution in ``init_particles`` must have the site's shape; draws of it
    outside the site's support are wasted particles (a warning)."""
    shape = spec.site_shapes.get(name)
    got = tuple(proposal.batch_shape) + tuple(proposal.event_shape)
    if shape is not None and got != shape:
        raise ValueError(
            f"init_particles[{name!r}] is a proposal distribution of shape {got} (batch + "
            f"event shape), but site {name!r} has shape {shape}: every draw must be one whole "
            f"value of the site. Use e.g. proposal.expand({list(shape)}).to_event("
            f"{len(shape)}) or a distribution of that shape."
        )
    support = spec.site_supports.get(name)
    if support is None:
        return
    draws = _concrete(lambda: proposal.sample(jax.random.key(0), (PROPOSAL_CHECK_DRAWS,)))
    if draws is None:
        return
    out = _outside_support(support, draws)
    if out is not None and out.any():
        frac = float(out.mean())
        warnings.warn(
            f"init_particles[{name!r}]: {frac:.1%} of {PROPOSAL_CHECK_DRAWS} draws from the "
            f"proposal ({type(proposal).__name__}) fall outside the support of site {name!r} "
            f"({support}). Those particles have no prior density (or no unconstrained value) "
            "and are wasted or break the run. Use a proposal on the site's support, e.g. "
            "dist.TransformedDistribution(dist.Normal(loc, scale), "
            "biject_to(support)) or one with the same support as the prior (LogNormal or "
            "HalfNormal for a positive site, Beta for the unit interval).",
            UserWarning,
            stacklevel=4,
        )


def draw_prior(model, model_args, model_kwargs, spec, rng_key, num_particles, init_particles=None,
               extra_keys=None):
    """Exact prior draws for all latent sites, shape ``(N, ...)`` in unconstrained space.

    ``extra_keys`` (a batch of ``M`` keys, without ``init_particles``) appends ``M`` more
    draws, one per key, after the ``N`` of ``rng_key``: one traced draw serves both sets (the
    first ``N`` are the draws ``rng_key`` alone gives).

    ``init_particles`` maps site names to either arrays of constrained values with leading
    dimension ``N`` (taken as exact prior draws) or a NumPyro distribution (particles are
    drawn from it and the initial log-weights carry ``log prior − log proposal``; this is how
    improper priors are handled). Returns ``(z, discrete, initial_log_weights)``.

    Before any model call, against the shapes and supports recorded by :func:`inspect_model`:
    an array must have shape ``(N, *site_shape)``, no NaN and every value in the site's
    support (``ValueError`` otherwise, with the count); a continuous site's array with zero
    spread across particles gets a ``UserWarning`` (not prior draws). A proposal must have
    the site's shape (``ValueError``); if any of 256 of its draws (fixed key) falls outside
    the site's support, a ``UserWarning`` gives the fraction.
    """
    init_particles = dict(init_particles or {})
    latent = set(spec.continuous) | set(spec.discrete)
    unknown = set(init_particles) - latent
    if unknown:
        raise ValueError(
            f"init_particles names {sorted(unknown)}, which are not latent sites of the model "
            f"(latent sites: {sorted(latent)})."
        )
    missing = [n for n in spec.improper if n not in init_particles]
    if missing:
        raise ValueError(
            f"Site {missing[0]!r} has an improper prior (ImproperUniform) that cannot be "
            "sampled, so the particles cannot start as exact prior draws. Pass "
            "init_particles={"
            f"{missing[0]!r}: dist.Normal(0, 10).expand(shape)"
            "} (any proper distribution on the site's support; the initial weights correct "
            "for it), or give the site a proper prior."
        )
    proposals = {n: v for n, v in init_particles.items() if isinstance(v, dist.Distribution)}
    given = {n: jnp.asarray(v) for n, v in init_particles.items() if n not in proposals}
    for name in spec.improper:
        if name in given:
            raise ValueError(
                f"Site {name!r} has an improper prior: arrays cannot be exact draws from it. "
                "Pass a proper distribution in init_particles instead, so that the initial "
                "weights correct for it."
            )
    for name in given:
        # The values as passed (not jnp.asarray'd: under pmap that would make them tracers).
        _check_given(name, init_particles[name], num_particles, spec,
                     continuous=name in spec.continuous)
    for name, proposal in proposals.items():
        _check_proposal(name, proposal, spec)
    keys = jax.random.split(rng_key, num_particles)
    if extra_keys is not None:
        if init_particles:
            raise ValueError("extra_keys draws exact prior draws: not with init_particles")
        keys = jnp.concatenate([keys, extra_keys])
    draw = jax.vmap(
        lambda k, g: _one_prior_draw(model, model_args, model_kwargs, spec, k, g, proposals)
    )
    return draw(keys, given)


def constrain(model, model_args, model_kwargs, spec, z, discrete=None):
    """Constrained latent values and deterministic sites for one particle."""
    discrete = discrete or {}
    tr = trace_model(model, model_args, model_kwargs or {}, unconstrained_substitute(z, discrete))
    keep = set(spec.continuous) | set(spec.discrete) | set(spec.deterministic)
    return {n: s["value"] for n, s in tr.items() if n in keep}
