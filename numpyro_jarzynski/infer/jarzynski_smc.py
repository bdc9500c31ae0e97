"""``JarzynskiSMC``: tempered sequential Monte Carlo as a NumPyro ``MCMCKernel``.

.. code-block:: python

    mcmc = MCMC(JarzynskiSMC(model, num_particles=2000), num_warmup=100, num_samples=1)
    mcmc.run(jax.random.key(0), x, y)
    mcmc.last_state.log_evidence          # log marginal likelihood estimate
    mcmc.get_samples()                    # weighted populations, shape (num_samples, N, ...)
    mcmc.get_extra_fields()["log_weights"]

All particles live in one chain's state; ``num_chains`` gives independent SMC runs.
``num_warmup`` is the number of annealing stages (β reaches 1 by the last one);
``num_samples`` is the number of further stages at β = 1, each collected as a weighted
population. The thin class only bridges to the model; the algorithm is
:func:`numpyro_jarzynski.infer.tempering.smc_step`.
"""


import dataclasses
import hashlib
import numbers
import warnings
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import is_prng_key

from numpyro_jarzynski.engine import schedules
from numpyro_jarzynski.engine.kernels import MALA, Auto, Composite, as_kernel
from numpyro_jarzynski.engine.preconditioner import DIAGONAL, MassMatrix
from numpyro_jarzynski.engine.resampling import get_scheme
from numpyro_jarzynski.infer import model_bridge as bridge
from numpyro_jarzynski.infer import report
from numpyro_jarzynski.infer.functional import over_chains
from numpyro_jarzynski.infer.gibbs import (
    Gibbs,
    collapsed_blocks,
    collapsed_log_likelihood,
    collapsed_terms,
    make_discrete_move,
)
from numpyro_jarzynski.infer.tempering import (
    INFO_PROPERTIES,
    PILOT_PARTICLES,
    STAGE_FIELDS,
    STATE_PROPERTIES,
    Codec,
    ParticleCache,
    SMCState,
    TemperingConfig,
    field_source,
    init_state,
    pilot_step,
    record,
    smc_step,
)

# On a Gaussian preconditioned by its own spread the Langevin step x' = (1 − h)x + ... and the
# leapfrog step are unstable for h ≥ 2: no user step may reach it.
STEP_SIZE_LIMIT = 2.0
FEW_PARTICLES = 100
_DEFAULT_MOVE = MALA()
MIN_TARGET_ESS = 0.1


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    if isinstance(value, numbers.Integral) or float(value).is_integer():
        value = int(value)
    else:
        raise TypeError(
            f"{name} must be an integer, got {value!r}; it would be silently truncated to "
            f"{int(value)}. Pass an int."
        )
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}.")
    return value


def _check_open_unit(name, value, hint=""):
    if value is None or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}.{hint}")
    return float(value)


class JarzynskiSMC(MCMCKernel):
    r"""Annealed SMC from prior to posterior with Jarzynski/Crooks-weighted Langevin moves.

    The path of targets is :math:`\gamma_\beta(z) = p(z)\,p(y \mid z)^\beta` in unconstrained
    space (Jacobians in the prior part). Particles start as exact prior draws; each stage
    reweights, resamples when the ESS falls below ``resample_threshold``, and moves. The
    estimate of :math:`\log p(y)` is ``state.log_evidence``.

    :param model: a NumPyro model.
    :param int num_particles: number of particles N.
    :param move: the transition kernel, a move value from
        :mod:`numpyro_jarzynski.engine.kernels` or its name: ``"mala"`` (Metropolis-adjusted
        Langevin, invariant), ``"ula"`` (unadjusted Langevin, with the Crooks weight
        correction that makes it exact), ``"hmc"`` (Hamiltonian Monte Carlo, invariant;
        ``HMC(num_steps=L)`` for L leapfrog steps) or ``"uhmc"`` (unadjusted HMC with its
        exact Crooks increment ``−ΔH``; ``UHMC(num_steps=L)``), or ``"auto"``
        (:class:`~numpyro_jarzynski.engine.kernels.Auto`: per stage, the candidate with the
        best measured jump × weight-ESS at equal gradients). See ``docs/moves.md``.
    :param float step_size: initial dimensionless step ``h`` (moves are preconditioned by the
        particles' per-coordinate spread, or by the mass matrix ``dense_mass`` /
        ``mass_rank`` ask for). Default: tuned before the first stage, at β = 0, on 256 prior
        draws independent of the population (8 rounds of the stage's own rule), starting from
        ``d^{-1/3}`` for MALA, ``0.5 d^{-1/3}`` for ULA, ``min(d^{-1/4}, π/(2L))`` for HMC and
        ``min(0.5 d^{-1/4}, π/(2L))`` for unadjusted HMC; a value given here is used as is.
    :param int num_moves: moves per stage (with ``target_renewal``: the fewest per stage).
    :param float target_renewal: choose the number of moves of each stage from the previous
        stage's renewal of the log likelihood (``state.history.renewal``: about 1 for moves
        that draw afresh, near 0 for moves that leave it where it was), so that a stage's
        moves renew about this fraction of it (:func:`~numpyro_jarzynski.engine.moves.moves_for_renewal`:
        ``m' = m·log(1 − r*)/log(1 − r)``, between ``num_moves`` and ``max_moves``): a
        count that tunes itself, not a cheaper one (on the GMM tutorial model a uniform
        ``num_moves`` is 1.9–2.6× more accurate per move; ``docs/benchmarks.md``). The count
        of every stage is in ``state.history.num_moves``. Default ``None``: ``num_moves`` every stage. Not with
        ``move="auto"`` or ``waste_free``. See ``docs/moves.md``.
    :param int max_moves: the most moves per stage with ``target_renewal`` (default
        ``10 × num_moves``).
    :param schedule: ``"adaptive"`` (bisection on the conditional ESS), ``"linear"``,
        ``"geometric"``, or an array with one β per warmup stage ending at 1.
    :param bool waste_free: waste-free SMC (Dau & Chopin 2022): every stage resamples
        ``M = N / (num_moves + 1)`` ancestors and keeps every state of the ``num_moves``-move
        chain run from each (``num_particles`` must be a multiple of ``num_moves + 1``).
        Unadjusted moves keep their Crooks increments along each chain.
    :param bool dense_mass: precondition every gradient move by a dense mass matrix, as
        NumPyro's ``NUTS(dense_mass=True)``: the inverse mass is the Cholesky factor of the
        particles' weighted covariance (shrunk toward its diagonal, NumPyro's
        ``(n/(n+5))Σ + 5/(n+5)·diag``), refitted every stage and cross-fitted (each half of the
        population moved with the factor of the other half), so it does not bias log Z.
        Costs ``O(N d²)`` per gradient on top of the model. Default ``False``: the diagonal
        (per-coordinate spread). NumPyro's block form (a list of site tuples) is not supported.
    :param int mass_rank: a low-rank-plus-diagonal mass instead: the diagonal spread corrected
        in the ``mass_rank`` directions of the standardised covariance that most improve its
        conditioning (``O(N d k)`` per gradient; for large ``d`` with a few strong
        correlations). Implies a non-diagonal mass; must be below ``d``. See
        ``docs/moves.md`` ("Mass matrix"); the fit per stage is recorded in
        ``state.history.mass_shrinkage``.
    :param devices: split the particles over several devices: ``"all"`` (every device JAX
        sees: ``jax.devices()``, all GPUs of a machine, or of every host after
        ``jax.distributed.initialize()``) or a list of devices. The particle axis of the
        population is sharded over a ``jax.sharding.Mesh`` with one axis ``"particles"``;
        the weights' statistics (log-sum-exp, ESS, the β bisection) and the resampling are
        global (XLA inserts the collectives), so the run is the one-device algorithm with
        the same random numbers; sums are taken in another order, so it agrees with the
        one-device run to rounding until a last-bit difference flips a resampling index or
        an accept decision, and then within Monte Carlo error. ``num_particles`` must be a
        multiple of the number of devices. Default ``None``: one device. See
        ``docs/smc.md`` ("Particles over several devices").
    :param bool remat: recompute the model's terms in the backward pass of each gradient
        (``jax.checkpoint`` around the log density) instead of keeping them from the forward
        pass: the working memory per particle grows about half as fast with the data (d = 10
        Gaussian, N = 10⁵: 20 observations 2203 → 1363 bytes per particle, 100 observations
        8593 → 4563) for about 30 % more CPU time. For populations that do not fit in memory
        otherwise; the results are the same.
    :param int chunk_size: evaluate the log density and its gradients over the particles in
        chunks of this many (``lax.map`` with ``batch_size``) instead of all at once: the
        model's per-observation terms are held for ``chunk_size`` particles at a time, so the
        working memory no longer grows as ``num_particles × data`` (d = 10 Gaussian, 20
        observations, N = 10⁶: 2201 → 645 bytes per particle at ``chunk_size=10_000``, and
        0.68× the CPU time). The same numbers as the default (one vmap over all particles,
        ``None``) to rounding: XLA may order a chunk's sums differently, and a last-bit
        difference can flip a resampling index, giving another Monte Carlo realisation. On
        an accelerator a chunk costs parallelism. Not with ``devices`` (the particle axis is
        then split over devices instead).
    :param float target_ess: conditional ESS per stage targeted by the adaptive schedule
        (the smallest it accepts when ``budget_fill`` asks for more).
    :param float budget_fill: when the adaptive schedule should reach β = 1, as a fraction of
        ``num_warmup`` (default 0.9). Each stage raises its conditional-ESS target above
        ``target_ess`` so that the thermodynamic length of the path still to go (estimated
        from the current population,
        :func:`~numpyro_jarzynski.engine.schedules.remaining_length`) is spread evenly over
        the stages left before ``budget_fill × num_warmup``: every stage anneals, and the last
        ``(1 − budget_fill) × num_warmup`` mix at the posterior. Without it (``None``) each
        step is as large as ``target_ess`` allows, and on an easy path β reaches 1 after a
        few stages, leaving the rest of the budget to add nothing to the evidence (conjugate
        Gaussian d = 10, ``num_warmup=100``: β = 1 at stage 13, log-Z RMSE 0.061 vs 0.016
        with the default; ``benchmarks/budget_fill.py``). It never lowers the target below
        ``target_ess``, so a budget that is short behaves the same either way.
    :param float min_increment: smallest β step of the adaptive schedule (stall guard).
    :param float resample_threshold: resample when the normalised ESS is below this.
    :param resampling: ``"multinomial"`` (the default), ``"systematic"``, ``"stratified"``,
        ``"residual"`` or a function ``(key, log_weights, n) -> indices``. Multinomial makes
        the single-run error bar of the log evidence (``state.log_evidence_se``, in the
        report and :func:`~numpyro_jarzynski.diagnostics.summary`) unbiased: it is Lee &
        Whiteley's estimator, which assumes it (its RMSE / error bar measured 0.76–1.10 on
        eight targets, 1.38 on a multimodal mixture); with systematic resampling 1.03–3.0,
        so with another scheme a run that resampled reports no error bar (NaN). An adaptive
        schedule resamples rarely (1–8 times per run on those targets), and there
        multinomial's log-Z sd was 3–10 % above systematic's on seven of nine targets
        (about 25 % below on two; ``docs/trust.md``, ``benchmarks/log_z_error_bar.py``).
    :param bool adapt_step_size: adapt ``h`` between stages toward ``target_accept``.
    :param float target_accept: for MALA and HMC the acceptance rate to aim for (default
        0.65); for ULA and unadjusted HMC the conditional ESS of a stage's Crooks noise
        (default 0.9).
    :param init_particles: dict mapping sites to arrays of exact prior draws (constrained,
        leading dimension N) or to proper distributions to start from (importance-corrected;
        required for ``ImproperUniform`` priors).
    :param prior_factors: names of ``numpyro.factor`` sites that belong to the prior (not
        tempered). Other factors are part of the likelihood.

    Models with discrete latent sites: ``move`` may be a list of one continuous move and a
    :class:`~numpyro_jarzynski.infer.gibbs.Gibbs` value, applied in that order ``num_moves``
    times per stage, e.g. ``move=[MALA(), Gibbs(num_sweeps=2)]``; a continuous move alone
    gets ``Gibbs()`` appended (exact Gibbs updates at the stage's β, no weight increment;
    whole plates at once where the model allows it; mixture assignments and other sites read
    only by observations are summed out of the tempered path, see ``docs/discrete.md``).
    """

    sample_field = "z"

    def __init__(
        self,
        model,
        *,
        num_particles=1000,
        move="mala",
        step_size=None,
        num_moves=2,
        target_renewal=None,
        max_moves=None,
        schedule="adaptive",
        target_ess=0.9,
        budget_fill=0.9,
        min_increment=1e-20,
        resample_threshold=0.5,
        resampling="multinomial",
        adapt_step_size=True,
        target_accept=None,
        init_particles=None,
        prior_factors=(),
        num_sweeps=None,
        scan=None,
        waste_free=False,
        dense_mass=False,
        mass_rank=None,
        devices=None,
        remat=False,
        chunk_size=None,
    ):
        if model is None or not callable(model):
            raise ValueError("JarzynskiSMC needs a NumPyro model (a callable).")
        if num_sweeps is not None or scan is not None:
            raise TypeError(
                "num_sweeps and scan are settings of the discrete move now: pass "
                "move=[MALA(), Gibbs(num_sweeps=..., scan=...)] (Gibbs from numpyro_jarzynski)."
            )
        move, self.gibbs, self.discrete_first = _split_moves(move)
        num_particles = _check_count("num_particles", num_particles, 2)
        if num_particles < FEW_PARTICLES:
            warnings.warn(
                f"num_particles={num_particles} is very few for SMC: the log evidence and the "
                "weighted posterior from so few particles are dominated by Monte Carlo error "
                f"and bias. Use at least {FEW_PARTICLES} (typically 1000 or more).",
                UserWarning,
                stacklevel=2,
            )
        num_moves = _check_count("num_moves", num_moves, 1)
        self.waste_free = bool(waste_free)
        if self.waste_free:
            chain = num_moves + 1
            if num_particles % chain or num_particles // chain < 2:
                raise ValueError(
                    f"waste_free=True keeps every state of chains of num_moves + 1 = {chain} "
                    f"states, so num_particles must be a multiple of {chain} with at least two "
                    f"chains; got num_particles={num_particles}. Use e.g. num_particles="
                    f"{max(2, round(num_particles / chain)) * chain}."
                )
            if isinstance(move, Auto):
                raise ValueError("waste_free=True is not available with move='auto' yet; "
                                 "pick one move.")
        self.target_renewal, self.max_moves = _check_renewal(
            target_renewal, max_moves, num_moves, move, self.waste_free)
        target_ess = _check_open_unit("target_ess", target_ess)
        if target_ess < MIN_TARGET_ESS:
            raise ValueError(
                f"target_ess={target_ess} is so small that the adaptive schedule jumps to β = 1 "
                "almost at once: that is one-shot importance sampling from the prior, whose "
                f"evidence estimate is unreliable. Use target_ess in [{MIN_TARGET_ESS}, 1); "
                "0.5-0.95 is usual."
            )
        if budget_fill is not None:
            if (isinstance(budget_fill, bool) or not isinstance(budget_fill, numbers.Real)
                    or not 0.0 < float(budget_fill) <= 1.0):
                raise ValueError(
                    f"budget_fill must be None or a number in (0, 1], got {budget_fill!r}. It "
                    "is the fraction of num_warmup after which the adaptive schedule plans to "
                    "reach β = 1 (e.g. 0.9); None takes every β step as large as target_ess "
                    "allows."
                )
            budget_fill = float(budget_fill)
        min_increment = _check_open_unit(
            "min_increment", min_increment,
            " It is the smallest β step of the adaptive schedule (its stall guard).",
        )
        if target_accept is not None:
            target_accept = _check_open_unit("target_accept", target_accept)
            if isinstance(move, Auto):
                raise ValueError(
                    "target_accept does not apply to move='auto': each candidate is tuned "
                    "toward its own target (acceptance 0.65, or stage weight-noise CESS 0.9). "
                    "Leave target_accept unset, or pick one move."
                )
        if not isinstance(resample_threshold, numbers.Real) or not (
            0.0 <= resample_threshold <= 1.0
        ):
            raise ValueError(f"resample_threshold must be in [0, 1], got {resample_threshold}.")
        if step_size is not None:
            if not isinstance(step_size, numbers.Real) or not np.isfinite(step_size) or not (
                step_size > 0
            ):
                raise ValueError(f"step_size must be a positive number, got {step_size!r}.")
            if step_size >= STEP_SIZE_LIMIT:
                raise ValueError(
                    f"step_size={step_size} is beyond the stability limit of the moves: "
                    "the step is dimensionless (in units of the particles' spread) and a step "
                    f"h >= {STEP_SIZE_LIMIT} diverges even on a Gaussian. Use step_size < 1 "
                    "(or leave it None for the move's default with adaptation)."
                )
        if isinstance(schedule, str) and schedule not in ("adaptive", "linear", "geometric"):
            raise ValueError(
                f"schedule must be 'adaptive', 'linear', 'geometric' or an array, got {schedule!r}."
            )
        get_scheme(resampling)  # validates the name now, not at the first resampling
        self.mass = _check_mass(dense_mass, mass_rank)
        self.mesh = _particle_mesh(devices, num_particles)
        if not isinstance(remat, (bool, np.bool_)):
            raise TypeError(f"remat must be True or False, got {remat!r}.")
        self.remat = bool(remat)
        self.chunk_size = _check_chunk_size(chunk_size, num_particles, self.mesh)
        self._model = model
        self.num_particles = num_particles
        self._continuous_move = move
        self.move = move if move is not None else _DEFAULT_MOVE
        self._step_size = step_size
        self.num_moves = num_moves
        self.schedule = schedule
        self.target_ess = target_ess
        self.budget_fill = budget_fill
        self.min_increment = min_increment
        self.resample_threshold = float(resample_threshold)
        self.resampling = resampling
        self.adapt_step_size = bool(adapt_step_size)
        self.target_accept = (
            target_accept if target_accept is not None
            else getattr(self.move, "default_target", None)
        )
        self.init_particles = init_particles
        self.prior_factors = tuple(prior_factors)
        self._data_fingerprint = None
        self.last_health = None
        self._programs = OrderedDict()  # compiled runs (numpyro_jarzynski.infer.functional)

    # ----------------------------------------------------------------- model plumbing
    # Everything below is a pure function of its arguments (nothing is stored on the kernel
    # at trace time), so one compiled program serves every run with the same shapes and the
    # functional API (numpyro_jarzynski.infer.functional.smc) can jit and vmap it.
    @property
    def model(self):
        return self._model

    def _model_spec(self, model_args, model_kwargs, quiet=False):
        """The model's sites (:func:`model_bridge.inspect_model`), checked against the moves.

        ``quiet``: suppress the inspection's warnings (the run already gave them once)."""
        model_kwargs = model_kwargs or {}
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            spec = bridge.inspect_model(self._model, model_args, model_kwargs,
                                        self.prior_factors)
        if self.gibbs is not None and not spec.discrete:
            raise ValueError(
                "move lists Gibbs(), but the model has no discrete latent sites for it to "
                "update. Drop Gibbs() from move."
            )
        if self.waste_free and not spec.continuous:
            raise ValueError(
                "waste_free=True runs chains of the continuous move, but the model has no "
                "continuous latent sites. Use waste_free=False."
            )
        if self.mass != DIAGONAL and not spec.continuous:
            raise ValueError(
                f"{_mass_arg(self.mass)} preconditions the gradient moves of the continuous "
                "sites, but the model has none. Leave dense_mass=False and mass_rank=None."
            )
        if self._continuous_move is None and spec.continuous:
            raise ValueError(
                f"move=Gibbs() updates only the discrete sites, but the model has continuous "
                f"latent sites ({', '.join(spec.continuous)}) that would never move. "
                "Add a continuous move: move=[MALA(), Gibbs()]."
            )
        return spec

    @staticmethod
    def _layout(spec, z):
        """``(codec, unravel, d)`` for a population ``z`` (dict of ``(N, ...)`` arrays)."""
        cont = {n: z[n][0] for n in spec.continuous}
        _, unravel = ravel_pytree(cont)

        def split(z):
            x = jax.vmap(lambda zz: ravel_pytree({n: zz[n] for n in spec.continuous})[0])(z)
            return x, {n: z[n] for n in spec.discrete}

        def merge(x, disc):
            return {**jax.vmap(unravel)(x), **disc}

        dim = int(sum(np.prod(jnp.shape(z[n])[1:], dtype=int) for n in spec.continuous))
        return Codec(split, merge), unravel, dim

    def _collapsed(self, spec, z, model_args, model_kwargs):
        """``{site: block}``: the discrete sites summed out of the tempered path
        (:func:`gibbs.collapsed_blocks`; structure read from the first particle of ``z``)."""
        if not spec.discrete:
            return {}
        one = {n: z[n][0] for n in (*spec.continuous, *spec.discrete)}
        return collapsed_blocks(self._model, model_args, model_kwargs or {}, spec,
                                {n: one[n] for n in spec.continuous},
                                {n: one[n] for n in spec.discrete}, self.gibbs or Gibbs())

    def _evaluate_fn(self, spec, unravel, model_args, model_kwargs, collapsed=None):
        """``evaluate(x, disc) -> ParticleCache``: both parts of ``log γ`` and their gradients.

        ``collapsed`` (:meth:`_collapsed`): discrete plate blocks summed out of the path;
        their part of the likelihood is ``gibbs.collapsed_log_likelihood``.

        Two ``value_and_grad`` passes (one per part). One ``vjp`` pulled back along both parts
        would share the forward pass, but XLA compiled it, under ``jit`` with the data as an
        argument, into a program 13x slower at N = 10⁴ and growing faster than N (measured on
        a d = 10 Gaussian: 162 ms against 12 ms per evaluation of all particles)."""
        model = self._model
        collapsed = collapsed or {}
        skip = collapsed_terms(collapsed)

        def parts(x, disc):
            zi = unravel(x)
            lp, ll = bridge.split_log_density(model, model_args, model_kwargs, spec, zi, disc,
                                              skip)
            if collapsed:
                ll = ll + collapsed_log_likelihood(model, model_args, model_kwargs, spec, zi,
                                                   disc, collapsed)
            return lp, ll

        def value_and_grad(index):
            part = lambda x, d: parts(x, d)[index]
            if self.remat:  # the backward pass recomputes the model's terms
                part = jax.checkpoint(part)
            return jax.value_and_grad(part)

        lp_vg, ll_vg = value_and_grad(0), value_and_grad(1)

        def one(x, disc):  # one particle
            lp, glp = lp_vg(x, disc)
            ll, gll = ll_vg(x, disc)
            return ParticleCache(lp, ll, glp, gll)

        if self.chunk_size is None:
            return jax.vmap(one)
        # The same evaluation, chunk_size particles at a time (vmapped within a chunk).
        return lambda x, disc: jax.lax.map(lambda a: one(*a), (x, disc),
                                           batch_size=self.chunk_size)

    def _make_config(self, num_warmup):
        if isinstance(self.schedule, str) and self.schedule == "adaptive":
            sched = None
        elif isinstance(self.schedule, str):
            fn = schedules.linear if self.schedule == "linear" else schedules.geometric
            sched = tuple(float(b) for b in fn(num_warmup))
        else:
            sched = tuple(float(b) for b in schedules.validate(self.schedule, num_warmup))
        return TemperingConfig(
            move=self.move,
            num_moves=self.num_moves,
            num_stages=num_warmup,
            schedule=sched,
            target_ess=self.target_ess,
            budget_fill=self.budget_fill,
            min_increment=self.min_increment,
            resample_threshold=self.resample_threshold,
            resampling=self.resampling,
            adapt_step_size=self.adapt_step_size,
            target_accept=self.target_accept,
            discrete_move=None,
            waste_free=self.waste_free,
            mass=self.mass,
            target_renewal=self.target_renewal,
            max_moves=self.max_moves,
        )

    def _default_step_size(self, dim, move=None):
        move = move or self.move
        return min(move.default_step(dim), move.max_step)

    def _settings_key(self):
        """A hash of every setting the compiled programs depend on (a setting changed after
        construction compiles a new program instead of reusing a stale one)."""
        settings = (
            self.num_particles, repr(self.move), repr(self.gibbs), self.discrete_first,
            self._step_size, self.num_moves, self.target_renewal, self.max_moves,
            self.schedule if isinstance(self.schedule, str) else np.asarray(self.schedule),
            self.target_ess, self.budget_fill, self.min_increment, self.resample_threshold,
            repr(self.resampling),
            self.adapt_step_size, self.target_accept, self.init_particles or {},
            self.prior_factors, self.waste_free, repr(self.mass), id(self._model),
            None if self.mesh is None else repr(self.mesh.devices.tolist()),
            self.remat, self.chunk_size,
        )
        return _fingerprint(settings, {})

    def _check_num_warmup(self, num_warmup):
        if num_warmup < 1:
            raise ValueError(
                "JarzynskiSMC needs num_warmup >= 1: warmup steps are the annealing stages "
                "from prior (β = 0) to posterior (β = 1). Use e.g. num_warmup=100."
            )

    # ----------------------------------------------------------------- MCMCKernel API
    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        self._check_num_warmup(num_warmup)
        if init_params is not None:
            raise ValueError(
                "JarzynskiSMC starts from exact prior draws and ignores init_params; pass "
                "init_particles=... to the kernel instead."
            )
        model_kwargs = model_kwargs or {}
        self._model_spec(model_args, model_kwargs)  # the model's errors and warnings, eagerly
        if not is_prng_key(rng_key):  # vectorized chains: a batch of keys
            return over_chains(self, lambda k: self._init_one(k, num_warmup, model_args,
                                                              model_kwargs))(rng_key)
        return self._init_one(rng_key, num_warmup, model_args, model_kwargs)

    def _init_one(self, rng_key, num_warmup, model_args, model_kwargs, quiet=True):
        """The state before the first stage: a pure function of its arguments."""
        spec = self._model_spec(model_args, model_kwargs, quiet=quiet)
        key_init, key_state = jax.random.split(rng_key)
        n = self.num_particles
        # The first step's pilot draws (independent of the population: their own keys) come
        # from the same traced draw and evaluation as the population's, so the initial
        # program compiles the model once, not once per shape.
        pilot_keys = self._pilot_keys(rng_key, spec)
        z, disc, log_w = bridge.draw_prior(
            self._model, model_args, model_kwargs, spec, key_init, n,
            self.init_particles, extra_keys=pilot_keys,
        )
        z = {**z, **disc}
        codec, unravel, dim = self._layout(spec, z)
        if self.mass.rank is not None and self.mass.rank >= dim:
            raise ValueError(
                f"mass_rank={self.mass.rank} must be below the number of continuous "
                f"coordinates d={dim}: a rank-{dim} correction is the dense mass. Use "
                f"dense_mass=True, or mass_rank <= {dim - 1}."
            )
        evaluate = self._evaluate_fn(spec, unravel, model_args, model_kwargs,
                                     self._collapsed(spec, z, model_args, model_kwargs))
        x, disc = codec.split(z)
        cache = evaluate(x, disc)
        pilot = lambda move, h, target, moves: h  # nothing to tune
        if pilot_keys is not None:
            if dim:
                pilot = self._pilot(rng_key, evaluate,
                                    *jax.tree.map(lambda a: a[n:], (x, cache, disc)))
            z, log_w, x, cache, disc = jax.tree.map(lambda a: a[:n],
                                                    (z, log_w, x, cache, disc))
        auto_steps = ()
        if isinstance(self.move, Auto):  # every candidate starts at its own default step
            moves = self.move.moves_per_stage(self.num_moves)
            auto_steps = tuple(self._step_size or pilot(c, self._default_step_size(dim, c),
                                                        c.default_target, m)
                               for c, m in zip(self.move.candidates, moves))
            h = auto_steps[0]
        else:
            h = self._step_size if self._step_size is not None else pilot(
                self.move, self._default_step_size(dim), self.target_accept, self.num_moves)
        return self._shard(
            init_state(key_state, z, log_w, cache, h, num_warmup, codec, auto_steps,
                       self.num_moves))

    def _pilot_keys(self, rng_key, spec):
        """The keys of the ``PILOT_PARTICLES`` pilot draws, or ``None`` where no step is tuned:
        a ``step_size`` given, ``adapt_step_size=False``, no continuous site, a composite move,
        or no exact prior draws (``init_particles``: the draws would need weights)."""
        if (self._step_size is not None or not self.adapt_step_size or self.init_particles
                or not spec.continuous or isinstance(self.move, Composite)):
            return None
        key = jax.random.fold_in(rng_key, 1)  # the population's draws keep their own keys
        return jax.random.split(key, min(self.num_particles, PILOT_PARTICLES))

    def _pilot(self, rng_key, evaluate, x, cache, disc):
        """``(move, default step, target, moves per stage) -> first step``, tuned at β = 0 on
        the ``PILOT_PARTICLES`` prior draws ``(x, cache, disc)``, independent of the
        population (:func:`~numpyro_jarzynski.infer.tempering.pilot_step`)."""
        k_moves = jax.random.fold_in(rng_key, 2)

        def pilot(move, h, target, moves):
            return pilot_step(k_moves, x, cache, disc, evaluate, move, h, target,
                              moves, self.mass)

        return pilot

    def _shard(self, state):
        """Constrain the particle axis of the population to the device mesh (a no-op on one
        device): XLA partitions the stage around it."""
        if self.mesh is None:
            return state
        sharding = NamedSharding(self.mesh, PartitionSpec("particles"))

        def put(a):
            return jax.lax.with_sharding_constraint(a, sharding)

        return state._replace(z=jax.tree.map(put, state.z), log_weights=put(state.log_weights),
                              eve=put(state.eve), cache=jax.tree.map(put, state.cache))

    def _stage_program(self, spec, z, num_warmup, model_args, model_kwargs):
        """``(evaluate, codec, config)`` of the stage for these model arguments (the Gibbs
        move of the discrete sites is built from them, so new data is seen)."""
        codec, unravel, _ = self._layout(spec, z)
        collapsed = self._collapsed(spec, z, model_args, model_kwargs)
        evaluate = self._evaluate_fn(spec, unravel, model_args, model_kwargs, collapsed)
        config = self._make_config(num_warmup)
        if spec.discrete:
            g = self.gibbs or Gibbs()
            move = make_discrete_move(
                self._model, model_args, model_kwargs, spec, unravel, g.num_sweeps, g.scan,
                g.blocks, g.collapse,
            )
            # Collapsed sites do not enter log γ: if every discrete site is collapsed, the
            # Gibbs draws leave the densities and gradients as they were.
            config = dataclasses.replace(
                config, discrete_move=move, discrete_first=self.discrete_first,
                discrete_changes_density=len(collapsed) < len(spec.discrete))
        return evaluate, codec, config

    def _step(self, state, model_args, model_kwargs):
        """One stage of one run, ``(state, SMCInfo)``: a pure function of its arguments."""
        model_kwargs = model_kwargs or {}
        spec = self._model_spec(model_args, model_kwargs, quiet=True)
        num_warmup = state.history.beta.shape[-1]  # one history entry per annealing stage
        evaluate, codec, config = self._stage_program(spec, state.z, num_warmup, model_args,
                                                      model_kwargs)
        state, info = smc_step(self._shard(state), evaluate=evaluate, codec=codec,
                               config=config)
        return self._shard(state), info

    def sample(self, state, model_args, model_kwargs):
        # Failures are recorded in the state (``failed``, ``num_dead``, the stage history) and
        # reported from Python after the compiled run (numpyro_jarzynski.infer.report).
        def step(state):
            return record(*self._step(state, model_args, model_kwargs))

        if not is_prng_key(state.rng_key):  # chain_method="vectorized": a batch of runs
            step = over_chains(self, step)
        return step(state)

    def postprocess_fn(self, model_args, model_kwargs):
        model = self._model
        model_kwargs = model_kwargs or {}
        spec = self._model_spec(model_args, model_kwargs, quiet=True)

        def one(z):
            cont = {n: z[n] for n in spec.continuous}
            disc = {n: z[n] for n in spec.discrete}
            return bridge.constrain(model, model_args, model_kwargs, spec, cont, disc)

        return jax.vmap(one)

    # ----------------------------------------------------------------- around mcmc.run
    # Called by the MCMC.run wrapper (numpyro_jarzynski._numpyro_hooks) in Python, before and
    # after NumPyro's compiled loop.
    def _jarzynski_before_run(self, mcmc, args, kwargs, extra_fields):
        valid = dict.fromkeys(
            (*SMCState._fields, *STATE_PROPERTIES, *STAGE_FIELDS, *INFO_PROPERTIES))
        for name in extra_fields:
            if field_source(str(name).lstrip("~")) is None:
                raise ValueError(
                    f"extra_fields names {name!r}, which is not a field of the JarzynskiSMC "
                    f"state or of its stages' records (SMCInfo). Collectable fields: "
                    f"{', '.join(f for f in valid if f != 'rng_key')} (sub-fields with dots, "
                    "e.g. 'history.ess')."
                )
        resumed = mcmc.post_warmup_state is not None and self._data_fingerprint is not None
        if resumed and _fingerprint(args, kwargs) != self._data_fingerprint:
            raise ValueError(
                "mcmc.post_warmup_state was annealed on different data: its population and "
                "its log evidence belong to the data of that run, so resuming from it would "
                "report the old data's evidence. Set mcmc.post_warmup_state = None and run "
                "again (the warmup anneals from the prior for the new data)."
            )

    def _jarzynski_after_run(self, mcmc, args, kwargs):
        if mcmc.post_warmup_state is None:
            self._data_fingerprint = _fingerprint(args, kwargs)
        state = mcmc.last_state
        chains = mcmc.num_chains
        self.last_health = report.report_run(
            state, self.num_particles, self.target_ess, num_chains=chains, stacklevel=4,
            num_moves=self.num_moves, multinomial=self.resampling == "multinomial",
            compare_runs=True,  # every chain of one mcmc.run sees the same model and data
        )

    @property
    def default_fields(self):
        return ("z", "log_weights")

    def get_diagnostics_str(self, state):
        return f"beta {float(state.beta):.3f}, ess {float(state.ess):.2f}, log Z {float(state.log_evidence):.3f}"


def _check_renewal(target_renewal, max_moves, num_moves, move, waste_free):
    """``(target_renewal, max_moves)`` validated (``(None, None)``: a fixed count)."""
    if target_renewal is None:
        if max_moves is not None:
            raise ValueError(
                "max_moves bounds the moves per stage chosen with target_renewal; without "
                "target_renewal every stage runs num_moves. Pass target_renewal=... (e.g. "
                "0.3) or drop max_moves.")
        return None, None
    target_renewal = _check_open_unit(
        "target_renewal", target_renewal,
        " It is the fraction of the log likelihood's spread a stage's moves should renew "
        "(e.g. 0.3).")
    if isinstance(move, Auto):
        raise ValueError(  # noqa: TRY004 (a setting that conflicts, not a wrong type)
            "target_renewal is not available with move='auto', which sets each candidate's "
            "moves per stage itself; pick one move.")
    if waste_free:
        raise ValueError("target_renewal is not available with waste_free=True, whose chain "
                         "length num_moves + 1 fixes the population's layout.")
    max_moves = 10 * num_moves if max_moves is None else _check_count("max_moves", max_moves, 1)
    if max_moves < num_moves:
        raise ValueError(f"max_moves={max_moves} is below num_moves={num_moves}, the fewest "
                         "moves per stage with target_renewal. Use max_moves >= num_moves.")
    return target_renewal, max_moves


def _check_chunk_size(chunk_size, num_particles, mesh):
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    if mesh is not None:
        raise ValueError(
            "chunk_size and devices both split the particle axis: with devices, each device "
            "holds num_particles / num_devices particles already. Use one of them.")
    return min(int(chunk_size), int(num_particles))


def _particle_mesh(devices, num_particles):
    """The ``Mesh`` over a ``"particles"`` axis that ``devices`` asks for (None: one device)."""
    if devices is None:
        return None
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f"devices must be None, 'all' or a list of devices, got {devices!r}.")
        devices = jax.devices()
    devices = list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError(f"devices must be None, 'all' or a non-empty list of jax devices (e.g. "
                        f"jax.devices()[:4]), got {devices!r}.")
    if num_particles % len(devices):
        per = -(-num_particles // len(devices))
        raise ValueError(
            f"num_particles={num_particles} cannot be split evenly over {len(devices)} devices: "
            f"each device holds the same number of particles. Use num_particles="
            f"{per * len(devices)} (a multiple of {len(devices)}).")
    return Mesh(np.array(devices), ("particles",))


def _check_mass(dense_mass, mass_rank):
    """The :class:`MassMatrix` that ``dense_mass`` and ``mass_rank`` ask for."""
    if isinstance(dense_mass, (list, tuple)):
        raise TypeError(
            "dense_mass takes True or False here: NumPyro's block form (a list of tuples of "
            "site names) is not supported, the mass matrix covers all continuous coordinates. "
            "Use dense_mass=True (or mass_rank=k for a low-rank mass)."
        )
    if not isinstance(dense_mass, (bool, np.bool_)):
        raise TypeError(f"dense_mass must be True or False, got {dense_mass!r}.")
    if mass_rank is None:
        return MassMatrix("dense") if dense_mass else DIAGONAL
    if isinstance(mass_rank, bool) or not isinstance(mass_rank, numbers.Integral) or (
        mass_rank < 1
    ):
        raise ValueError(
            f"mass_rank must be an integer >= 1 (the number of directions the low-rank mass "
            f"corrects), or None for no low-rank mass; got {mass_rank!r}."
        )
    return MassMatrix("low_rank", int(mass_rank))


def _mass_arg(mass):
    return "dense_mass=True" if mass.kind == "dense" else f"mass_rank={mass.rank}"


def _split_moves(move):
    """``move`` (a value, a name, or a list) -> (continuous move, Gibbs or None, Gibbs first).

    A list holds continuous moves and at most one :class:`Gibbs`, applied in the list's order:
    several continuous moves become one :class:`~numpyro_jarzynski.engine.kernels.Composite`
    (applied in sequence, their increments summed), and Gibbs comes before or after all of
    them. With no continuous move the default MALA stands in (for purely discrete models it
    has nothing to move)."""
    moves = list(move) if isinstance(move, (list, tuple)) else [move]
    if not moves:
        raise ValueError("move is an empty list: give a move, e.g. move='mala'.")
    gibbs = [m for m in moves if isinstance(m, Gibbs)]
    if any(isinstance(m, type) for m in moves):
        bad = next(m for m in moves if isinstance(m, type))
        raise TypeError(f"move lists the class {bad.__name__}; pass an instance: "
                        f"{bad.__name__}().")
    cont = [as_kernel(m) for m in moves if not isinstance(m, Gibbs)]
    if len(gibbs) > 1:
        raise ValueError("move lists Gibbs() more than once; use Gibbs(num_sweeps=k) for k "
                         "sweeps per application.")
    if len(cont) > 1 and any(isinstance(m, (Auto, Composite)) for m in cont):
        raise ValueError(
            f"move lists {', '.join(m.name for m in cont)}: 'auto' (or a Composite) cannot be "
            "composed with other continuous moves. Use move='auto' alone (with an optional "
            "Gibbs()), or list plain moves, e.g. move=[MALA(), HMC()].")
    where = [i for i, m in enumerate(moves) if isinstance(m, Gibbs)]
    if where and len(cont) > 1 and 0 < where[0] < len(moves) - 1:
        raise ValueError(
            "move puts Gibbs() between continuous moves; it runs before or after all of them "
            "(the continuous moves are one composite move). Put it first or last, e.g. "
            "move=[MALA(), HMC(), Gibbs()].")
    first = bool(gibbs) and bool(cont) and moves.index(gibbs[0]) < moves.index(
        next(m for m in moves if not isinstance(m, Gibbs)))
    move = cont[0] if len(cont) == 1 else Composite(tuple(cont)) if cont else None
    return move, (gibbs[0] if gibbs else None), first


def _fingerprint(args, kwargs):
    """A hash of the model's data (array bytes, shapes, dtypes, other values' repr)."""
    h = hashlib.sha1()
    leaves, treedef = jax.tree.flatten((args, kwargs or {}))
    h.update(str(treedef).encode())
    for leaf in leaves:
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            try:
                a = np.asarray(leaf)
            except Exception:  # noqa: BLE001 - an abstract value: nothing to compare
                return None
            h.update(str((a.shape, a.dtype)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        else:
            h.update(repr(leaf).encode())
    return h.hexdigest()


__all__ = ["JarzynskiSMC", "SMCState"]
