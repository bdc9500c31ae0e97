r"""``EBMTrainer``: fit an energy-based model written as a NumPyro program, SVI-style.

.. code-block:: python

    def model(x):
        mu = numpyro.param("mu", jnp.array([-1.0, 1.0]))
        a = numpyro.param("a", jnp.zeros(2))
        energy = lambda y: -logsumexp(a - 0.5 * (y - mu) ** 2)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", EnergyDistribution(energy, dist.Normal(0.0, 5.0).expand([1]).to_event(1),
                                                   include_base=False), obs=x[:, None])

    trainer = EBMTrainer(model, optax.adam(0.05), method="jarzynski", num_walkers=512)
    result = trainer.run(jax.random.key(0), 2000, data, batch_size=256)
    result.params, result.history["cross_entropy"], result.history["log_z"]

The cross-entropy ``H(θ) = log Z_θ − E_data[log γ_θ(x)]`` (``log γ_θ = −U_θ`` plus the base if
it is part of the density) has gradient

.. math::  \nabla H = -\mathbb E_{\rm data}[\nabla_\theta \log\gamma_\theta]
                      + \mathbb E_{\rho_\theta}[\nabla_\theta \log\gamma_\theta],

the second term from the walkers ``Σ_i W_i ∇ log γ_θ(x_i)``. One update, at parameters ``θ_k``:

1. gradient step with optax from the data and the (weighted) walkers: ``θ_k → θ_{k+1}``
   (``cd`` first restarts the walkers at data points and moves them ``k`` times);
2. move the walkers with the kernel of ``θ_k`` (block Gibbs for RBMs; ULA for continuous
   energies, adding its Crooks increment);
3. ``jarzynski`` only: add ``log γ_{θ_{k+1}}(x) − log γ_{θ_k}(x)`` at the moved walkers and
   resample (banking ``log Z``) when the ESS is below ``resample_threshold``.

Steps 2–3 are the engine's stage (:func:`numpyro_jarzynski.engine.stage.advance`, in its
``move_first`` order) on the parameter path
(:class:`~numpyro_jarzynski.engine.path.ParameterPath`, point ``θ``), through
:func:`numpyro_jarzynski.ebm.walkers.advance`; ``pcd`` and ``cd`` run the same moves
(:func:`numpyro_jarzynski.ebm.walkers.move`) and drop their weights.

Within one :meth:`EBMTrainer.steps` call the walkers' target cache at ``θ_{k+1}`` (for an RBM
its :class:`~numpyro_jarzynski.ebm.rbm.GibbsCache`: ``log γ`` and the hidden logits
``v W + c``), which the work evaluates anyway, is carried to the next update: its gradient
(through :meth:`~numpyro_jarzynski.ebm.rbm.BernoulliRBM.linearized_log_prob`) and its first
half-sweep start from it instead of recomputing the product. It is computed afresh at the
start of every call and never stored in the :class:`TrainState`.

The order matters twice: the work is evaluated *after* the move with ``θ_k`` (design notes
§3), and at states drawn after ``θ_{k+1}`` was chosen from the walkers. The second is not
enough: walkers that mix slowly stay near where they were when they chose ``θ_{k+1}``, the
gradient step lowered ``log γ`` exactly there, and their work is biased low, ``O(lr·P/N)`` a
step (``P`` parameters); on the digits RBM (1104 parameters, 500 walkers, Adam 0.01, 3000
updates) the walkers' own running ``log Z`` ends 9.9 nats below exact (9.5 under SGD 0.1).

Running ``log Z`` by cross-fitting (``log_z="crossfit"``, the default for ``jarzynski``):
two populations. The *gradient* walkers (``num_walkers``; ``TrainState.walkers``) give the
model expectation and are moved and reweighted as above; the *witness* walkers
(``num_log_z_walkers``, default ``num_walkers``; ``TrainState.witness``) get the same work
``log γ_{θ_{k+1}} − log γ_{θ_k}`` and the same kernel, but never enter a gradient. The
parameter path ``θ_0, θ_1, …`` is then fixed without them, so the witness is an ordinary
SMC run along a given path and its evidence is unbiased for ``log Z_θ`` (exactly, given the
path). For the same reason the witness need not keep the gradient walkers' order: it takes
the work at its walkers as they are, then moves with ``θ_{k+1}``, then checks the ESS (the
stage's ``resample_last`` order), so that an RBM's work and first half-sweep share the
product ``v W_{k+1}`` (three walker-sized products per update instead of four). Roles are fixed, not alternating: a population that
had chosen ``θ_{k+1}`` carries that bias in its weights into every later step. The
witness's evidence is ``history["log_z"]`` and the cross-entropy (and
:meth:`EBMTrainer.log_z`); the gradient walkers' own is ``history["log_z_grad"]``. The
gradient population, its keys, and so the learned parameters are bit-identical to
``log_z="shared"`` (the old behaviour: the running ``log Z`` from the gradient walkers; no
witness, less work). Cost: the witness's moves and work increments (it needs no
per-walker gradients).

The running ``log Z`` is the population's evidence (engine bookkeeping) plus ``log Z_θ0``
from the initial annealing, so the cross-entropy comes for free. ``pcd`` keeps persistent
unweighted walkers and ``cd`` (CD-k) restarts them at data: neither can be corrected (a CD
restart would need the unknown data density), and neither tracks ``log Z`` (NaN in history).

Failures and health checks. A failure is recorded in the compiled state, as NumPyro's
``HMCState.diverging`` records a divergence: ``TrainState.failure`` (a code, 0 = healthy) and
``failed_at`` (the update index). The failing update and every later one in the chunk are
no-ops, so the state stays the last good one, and :meth:`EBMTrainer.run` (or ``update``) raises
a plain ``FloatingPointError`` from Python after the compiled chunk returns, with the work
done so far on ``err.result`` (and ``trainer.last_result``). Three failures stop a run, because
nothing after them can be finite: the energy is NaN/inf on the data (code 1), every walker
(of either population) has zero weight (code 2; ``pcd``: a walker's energy is NaN/inf), the
parameters became NaN/inf (code 3). Five symptoms of an unstable run are checked after each chunk and *warned*
(``UserWarning``, once per kind and run; listed in ``TrainResult.problems``), because the state
is still finite and the run's history is the best evidence of what went wrong:

* a cross-entropy estimate below ``−0.1`` on a discrete support, where ``H ≥ 0`` exactly (the
  0.1 nat allows for the Monte Carlo noise of ``log Z`` when ``H`` is near 0);
* parameters that explode: ``max |θ|`` (unconstrained) above ``10³ · max(1, max |θ_0|)``;
* walker ESS collapse (``jarzynski``): fewer than 3 effective walkers after a work increment
  (either population);
* ``log_z="crossfit"``: the two running ``log Z`` drift apart (``log_z_grad − log_z`` since the
  run's first update) by more than ``DISAGREE_SIGMAS`` Monte Carlo standard errors plus
  ``DISAGREE_NATS``. The standard error is crude (``(1/ESS − 1)/N`` of each population at
  each resampling, summed; history ``log_z_mc_var``); the drift is the walkers failing to
  follow the model, and then the witness's ``log Z`` can be tens to hundreds of nats off too;
  and, with the same standard error, a running ``log Z`` whose Monte Carlo error exceeds
  ``NOISY_LOG_Z_NATS`` (a few surviving walkers resampled at every update: the drift check
  cannot certify anything then, and the number is not a log Z to read);
* walkers that die (weight zero) during the run, with their count and the first update.

Why a dedicated trainer rather than NumPyro's SVI: SVI's ELBO has no place for the walkers'
state, ``Trace_ELBO(num_particles>1)`` drops ``mutable`` state, and the data gradient and the
walker gradient need different samples. The user still writes an ordinary NumPyro model.
"""

import pickle
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from numpyro_jarzynski.ebm import walkers as WK
from numpyro_jarzynski.ebm.energy import EnergyBasedDistribution
from numpyro_jarzynski.ebm.rbm import GibbsCache
from numpyro_jarzynski.engine import noise
from numpyro_jarzynski.engine import weights as W
from numpyro_jarzynski.engine.population import Population

METHODS = ("jarzynski", "pcd", "cd")
LOG_Z_MODES = ("crossfit", "shared")


class TrainState(NamedTuple):
    """Everything a run needs to continue exactly: unconstrained params, optimiser state,
    walkers with their log-weights, the banked ``log Z`` (including ``log Z_θ0``), step, key.

    ``failure`` is 0 while healthy, else the code of what stopped the run (1: energy NaN/inf on
    the data, 2: every walker dead, 3: parameters NaN/inf); ``failed_at`` is the update index
    ``step`` at which it happened (−1: never). A failed state is frozen: later updates are
    no-ops. (``None`` in states saved before these fields existed: read as healthy.)

    ``witness`` (``log_z="crossfit"``): the log-Z population, a
    :class:`~numpyro_jarzynski.engine.population.Population` whose walkers never enter a
    gradient; its evidence is the running ``log Z`` (:meth:`EBMTrainer.log_z`). ``walkers``,
    ``log_weights`` and ``log_z_banked`` are then the gradient population's. ``None`` for
    ``log_z="shared"``, ``pcd`` and ``cd``."""

    params: Any
    opt_state: Any
    walkers: jax.Array
    log_weights: jax.Array
    log_z_banked: jax.Array
    step: jax.Array
    rng_key: jax.Array
    failure: Any = None
    failed_at: Any = None
    witness: Any = None
    lr_scale: Any = None  # ess_lr: the factor on the optimiser's update (None: 1)


class TrainResult(NamedTuple):
    params: dict  # constrained
    state: TrainState
    history: dict  # name -> array over steps
    problems: tuple = ()  # the warnings issued during the run (one message per kind)


def _unwrap(fn):
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _with_flags(state):
    """``state`` with the failure fields filled in (healthy) and the learning-rate factor
    (1) where they are missing."""
    if state.failure is None or state.failed_at is None:
        state = state._replace(
            failure=jnp.zeros((), jnp.int32), failed_at=jnp.full((), -1, jnp.int32)
        )
    if state.lr_scale is None:
        state = state._replace(lr_scale=jnp.ones((), jnp.result_type(float)))
    return state


def _healthy(state):
    return state._replace(
        failure=jnp.zeros_like(state.failure), failed_at=jnp.full_like(state.failed_at, -1)
    )


def _resample_var(info, n):
    """``(1/ESS − 1)/N`` if the stage resampled (normalised ESS before it), else 0."""
    ess = jnp.maximum(info.resample.ess_before, 1.0 / n)
    return jnp.where(info.resample.resampled > 0, (1.0 / ess - 1.0) / n, 0.0)


def minibatch(key, n, size):
    """``size`` distinct indices of ``0..n−1``, every subset equally likely: the ``size``
    largest of ``n`` iid uniforms (``engine.noise.uniform``, the unrolled threefry hash). The
    same draw as ``jax.random.permutation(key, n)[:size]`` in distribution, at a fifth of its
    cost (1797 items, 100 drawn: 39 µs instead of 196 µs CPU, half of a whole update of the
    64 × 16 digits RBM): the permutation sorts all ``n`` keys, twice, hashed by a rolled
    loop."""
    return jax.lax.top_k(noise.uniform(key, (n,)), size)[1]


def _param_max(params):
    """``max |θ|`` over every (unconstrained) parameter entry; NaN if any entry is NaN."""
    leaves = [jnp.max(jnp.abs(jnp.ravel(v))) for v in jax.tree.leaves(params) if jnp.size(v)]
    return jnp.max(jnp.stack(leaves)) if leaves else jnp.zeros(())


#: failure code -> (what happened, what to do); pcd words code 2 for its unweighted walkers
FAILURES = {
    1: (
        "the energy is NaN or infinite on the data",
        ("Lower the learning rate, check the energy function for overflow, or clip the "
         "parameters."),
    ),
    2: (
        "every walker has zero weight (NaN/inf energies at the walkers, or a diverging ULA move)",
        ("Lower the learning rate or step_size, check the energy for NaN/overflow away from "
         "the data, or resample more often (resample_threshold closer to 1)."),
    ),
    3: (
        "the gradient step made the parameters NaN or infinite",
        ("Lower the learning rate, clip the gradients (e.g. optax.chain("
         "optax.clip_by_global_norm(1.0), ...)), and check the energy's gradient for "
         "overflow."),
    ),
}
#: health checks after each chunk (see the module docstring)
NEGATIVE_CE_TOL = 0.1
EXPLOSION_FACTOR = 1e3
MIN_EFFECTIVE_WALKERS = 3.0
#: log_z="crossfit": warn when the two running log Z drift apart by more than this many
#: Monte Carlo standard errors plus this many nats (see ``_diagnose``)
DISAGREE_SIGMAS = 5.0
DISAGREE_NATS = 2.0
#: log_z="crossfit": warn when the running log Z's Monte Carlo error exceeds this many nats
NOISY_LOG_Z_NATS = 2.0
#: ess_lr: the factor on the update shrinks by this when the walker ESS falls below the target,
#: grows by ESS_LR_GROW (up to 1: never above the optimiser's own step) when it stays above
ESS_LR_SHRINK = 0.5
ESS_LR_GROW = 1.1
ESS_LR_MIN = 1e-3
#: ess_lr: the factor of the first update (a warm-up: x1.1 per update reaches 1 in 49 updates)
ESS_LR_START = 0.01


class EBMTrainer:
    """Fit the ``numpyro.param`` sites of ``model``, whose data are observed through one energy
    distribution (:class:`EnergyDistribution`, :class:`BernoulliRBM`,
    :class:`GaussianBernoulliRBM`), by maximum likelihood with walker-estimated gradients.

    :param model: NumPyro model; its positional/keyword arguments are passed at ``init``,
        ``update`` and ``run`` (``run`` takes the data as the first one and minibatches it).
    :param optimizer: an optax ``GradientTransformation``.
    :param str method: ``"jarzynski"`` (weighted, unbiased), ``"pcd"`` or ``"cd"``.
    :param int num_walkers: number of walkers N.
    :param int num_moves: moves per update (Gibbs sweeps, or ULA steps; CD-k uses k = this).
    :param float step_size: ULA step ``h`` (continuous energies only).
    :param int num_init_stages: annealing stages from the base to ``θ_0`` at ``init``.
    :param float resample_threshold: resample when the normalised ESS falls below this.
    :param resampling: resampling scheme of :mod:`numpyro_jarzynski.engine.resampling`.
    :param str log_z: ``jarzynski`` only: where the running ``log Z`` comes from.
        ``"crossfit"`` (default): a second, *witness* population of ``num_log_z_walkers``
        walkers, moved with the same kernel and given the same work, that never enters a
        gradient, so its evidence is unbiased for ``log Z_θ`` (the parameter path does not
        depend on it). ``"shared"``: the gradient's own walkers (cheaper, but biased low by
        the walkers' influence on ``θ_{k+1}``: 10 nats on the digits RBM under Adam).
    :param int num_log_z_walkers: size of the witness population (default ``num_walkers``).
    :param float ess_lr: ``jarzynski`` only: an ESS-driven learning rate. The optimiser's
        update is multiplied by a factor ``s`` (``TrainState.lr_scale``, ``history["lr_scale"]``)
        that halves after an update whose gradient walkers' normalised ESS after the work
        increment fell below ``ess_lr``, and grows by 10 % (up to 1) after one that stayed
        above; the factor for update ``k`` comes from update ``k − 1`` (the gradient
        population's, never the witness's, so the running log Z stays unbiased). The factor
        starts at ``ESS_LR_START`` (0.01) and warms up, since nothing has been measured before
        the first update. ``None`` (default): off.
    :param self_influence_correction: removed (it over-corrected: +10 nats on the digits
        RBM); passing ``True`` raises a ``ValueError`` naming ``log_z="crossfit"``.
    """

    def __init__(self, model, optimizer, *, method="jarzynski", num_walkers=256, num_moves=1,
                 step_size=0.01, num_init_stages=50, resample_threshold=0.5,
                 resampling="systematic", log_z=None, num_log_z_walkers=None,
                 self_influence_correction=None, ess_lr=None):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        if num_walkers < 2 or num_moves < 1 or num_init_stages < 1:
            raise ValueError("num_walkers must be >= 2, num_moves and num_init_stages >= 1.")
        if self_influence_correction:
            raise ValueError(
                "self_influence_correction was removed: its first-order patch over-corrected "
                "the running log Z (+10 nats on the digits RBM). The running log Z is now "
                "unbiased by cross-fitting, log_z=\"crossfit\" (the default for "
                "method=\"jarzynski\"): a witness population that never enters the gradient."
            )
        if log_z is None:
            log_z = "crossfit" if method == "jarzynski" else "shared"
        if log_z not in LOG_Z_MODES:
            raise ValueError(f"log_z must be one of {LOG_Z_MODES}, got {log_z!r}.")
        if log_z == "crossfit" and method != "jarzynski":
            raise ValueError(f"log_z=\"crossfit\" needs method=\"jarzynski\" ({method!r} "
                             "tracks no log Z).")
        if ess_lr is not None:
            if method != "jarzynski":
                raise ValueError(f"ess_lr needs method=\"jarzynski\" (it reads the walkers' "
                                 f"weights; {method!r} has none). Leave ess_lr=None.")
            if isinstance(ess_lr, bool) or not isinstance(ess_lr, (int, float)) or not (
                    0.0 < ess_lr < 1.0):
                raise ValueError(f"ess_lr must be a normalised ESS target in (0, 1), e.g. "
                                 f"ess_lr=0.5, or None; got {ess_lr!r}.")
        self.ess_lr = ess_lr
        num_log_z_walkers = num_walkers if num_log_z_walkers is None else num_log_z_walkers
        if num_log_z_walkers < 2:
            raise ValueError("num_log_z_walkers must be >= 2.")
        self.model, self.optimizer, self.method = model, optimizer, method
        self.num_walkers, self.num_moves, self.step_size = num_walkers, num_moves, step_size
        self.num_init_stages = num_init_stages
        self.resample_threshold, self.resampling = resample_threshold, resampling
        self.log_z_mode, self.num_log_z_walkers = log_z, num_log_z_walkers
        self.crossfit = log_z == "crossfit"
        self._constraints = None
        self._site = None
        self._discrete = False
        #: the last :class:`TrainResult` of :meth:`run`, also when it raised (the work kept)
        self.last_result = None
        self._update_jit = jax.jit(self._update)
        self._anneal_jit = jax.jit(self._anneal, static_argnames="num")
        self._steps_jit = jax.jit(self.steps, static_argnums=(2, 3))

    # -- model access --------------------------------------------------------------------------
    def _inspect(self, args, kwargs):
        tr = handlers.trace(handlers.seed(self.model, 0)).get_trace(*args, **kwargs)
        params, cons, sites = {}, {}, []
        for name, site in tr.items():
            if site["type"] == "param":
                c = site["kwargs"].get("constraint", constraints.real)
                params[name] = biject_to(c).inv(site["value"])
                cons[name] = c
            elif site["type"] == "sample":
                fn = _unwrap(site["fn"])
                if site["is_observed"] and isinstance(fn, EnergyBasedDistribution):
                    sites.append(name)
                elif not site["is_observed"]:
                    raise ValueError(
                        f"Site {name!r} is a latent sample site. EBMTrainer fits parameters "
                        "(numpyro.param) only; make it a param, or fit the model with "
                        "JarzynskiSMC."
                    )
        if len(sites) != 1:
            raise ValueError(
                "EBMTrainer needs exactly one observed site whose distribution is an energy "
                f"model (EnergyDistribution, BernoulliRBM, GaussianBernoulliRBM); found {sites}."
            )
        self._constraints, self._site = cons, sites[0]
        fn, data = _unwrap(tr[sites[0]]["fn"]), tr[sites[0]]["value"]
        self._discrete = bool(fn.support.is_discrete)
        self._check_data(fn, data)
        return params

    @staticmethod
    def _check_data(fn, data):
        data = jnp.asarray(data)
        nd = len(fn.event_shape)
        if data.shape[data.ndim - nd:] != fn.event_shape:
            raise ValueError(f"data events have shape {data.shape}, expected (..., {fn.event_shape}).")
        inside = np.asarray(fn.support(data))
        if not inside.all():
            raise ValueError(
                f"{int((~inside).sum())} data values lie outside the support of the energy "
                f"model ({fn.support}); e.g. binarise data for a BernoulliRBM, or choose a base "
                "distribution whose support contains the data."
            )
        if not uses_real_support(fn):
            return
        if not np.isfinite(np.asarray(data)).all():
            raise ValueError("data contain NaN or infinite values.")

    def constrain(self, params):
        return {n: biject_to(self._constraints[n])(v) for n, v in params.items()}

    def _site_fn(self, params, args, kwargs):
        tr = handlers.trace(
            handlers.substitute(handlers.seed(self.model, 0), data=self.constrain(params))
        ).get_trace(*args, **kwargs)
        site = tr[self._site]
        return _unwrap(site["fn"]), jnp.asarray(site["value"])

    # -- SVI-like API --------------------------------------------------------------------------
    def init(self, rng_key, *args, init_walkers=None, init_log_z=None, init_log_z_walkers=None,
             **kwargs):
        """Parameters from the model; walkers by annealing from the base to ``θ_0``.

        If ``ρ_{θ_0}`` can be sampled exactly (e.g. a mixture), pass ``init_walkers`` (shape
        ``(num_walkers, *event_shape)``, equally weighted) and ``init_log_z`` (its ``log Z``;
        if omitted, the running ``log Z`` is relative to ``θ_0``). Exact, stratified starts
        remove the annealing's noise in the relative weights of separated modes, which
        walkers never cross and which therefore persists through training.

        ``log_z="crossfit"``: the witness population is annealed with its own key, or starts
        at ``init_log_z_walkers`` (``(num_log_z_walkers, *event_shape)``, exact draws); with
        ``init_walkers`` alone it starts at the same points (sizes must match; the witness
        is then exactly unbiased only once its walkers have decorrelated from the gradient's:
        pass independent draws as ``init_log_z_walkers`` when you can).
        """
        params = self._inspect(args, kwargs)
        fn, _ = self._site_fn(params, args, kwargs)
        if not WK.uses_gibbs(fn) and not uses_real_support(fn):
            raise ValueError(
                "ULA walkers need a base on the real line (support real or real_vector), got "
                f"{fn.support}. Reparameterise the data to unconstrained space."
            )
        k_init, key = jax.random.split(rng_key)
        if init_walkers is not None:
            x = jnp.asarray(init_walkers, jnp.result_type(float))
            if x.shape != (self.num_walkers,) + fn.event_shape:
                raise ValueError(
                    f"init_walkers has shape {x.shape}, expected "
                    f"{(self.num_walkers,) + fn.event_shape} (num_walkers, *event_shape)."
                )
            log_z0 = jnp.asarray(0.0 if init_log_z is None else init_log_z, x.dtype)
            pop = Population(x, jnp.zeros(self.num_walkers, x.dtype), log_z0)
        else:
            pop = self._anneal_jit(k_init, params, args, kwargs)
        witness = None
        if self.crossfit:
            witness = self._init_witness(jax.random.fold_in(k_init, 1), params, args, kwargs,
                                         fn, init_walkers, init_log_z, init_log_z_walkers)
        log_z0 = pop.log_evidence
        if not np.isfinite(float(log_z0)):
            raise FloatingPointError(
                "init: the annealing from the base to θ_0 left every walker with zero weight "
                "(NaN/inf energies at the walkers, or a diverging ULA move). Check the energy "
                "for NaN/overflow, lower step_size, use more num_init_stages, or pass exact "
                "init_walkers."
            )
        lw = pop.log_weights if self.method == "jarzynski" else jnp.zeros_like(pop.log_weights)
        # ess_lr: the factor starts small and grows 10 % per update while the ESS holds: the
        # brake acts on the previous update's ESS, so without a warm-up the first update
        # runs at the full step before anything has been measured.
        lr_scale = jnp.asarray(ESS_LR_START if self.ess_lr else 1.0, jnp.result_type(float))
        return TrainState(params, self.optimizer.init(params), pop.x, lw,
                          log_z0 - W.log_mean_exp(lw), jnp.zeros((), jnp.int32), key,
                          jnp.zeros((), jnp.int32), jnp.full((), -1, jnp.int32), witness,
                          lr_scale)

    def _init_witness(self, key, params, args, kwargs, fn, init_walkers, init_log_z,
                      init_log_z_walkers):
        n = self.num_log_z_walkers
        start = init_log_z_walkers if init_log_z_walkers is not None else init_walkers
        if start is None:
            wit = self._anneal_jit(key, params, args, kwargs, num=n)
        else:
            x = jnp.asarray(start, jnp.result_type(float))
            if x.shape != (n,) + fn.event_shape:
                raise ValueError(
                    f"the witness walkers ({'init_log_z_walkers' if init_log_z_walkers is not None else 'init_walkers'}) "
                    f"have shape {x.shape}, expected {(n,) + fn.event_shape} "
                    "(num_log_z_walkers, *event_shape); pass init_log_z_walkers of that shape."
                )
            log_z0 = jnp.asarray(0.0 if init_log_z is None else init_log_z, x.dtype)
            wit = Population(x, jnp.zeros(n, x.dtype), log_z0)
        log_z0 = wit.log_evidence
        if not np.isfinite(float(log_z0)):
            raise FloatingPointError(
                "init: the annealing of the log-Z (witness) walkers left every walker with "
                "zero weight. Check the energy for NaN/overflow, lower step_size, use more "
                "num_init_stages, or pass exact init_log_z_walkers."
            )
        return Population(wit.x, wit.log_weights, log_z0 - W.log_mean_exp(wit.log_weights))

    def _anneal(self, key, params, args, kwargs, num=None):
        fn = self._site_fn(params, args, kwargs)[0]
        return WK.anneal_from_base(
            key, fn, num or self.num_walkers, self.num_init_stages, self.step_size,
            self.num_moves, self.resample_threshold, self.resampling,
        )

    def log_z(self, state):
        """The running ``log Z_θ`` of ``state``'s parameters: the witness population's
        evidence (``log_z="crossfit"``), else the walkers'. (``history["log_z"]`` holds the
        value at ``θ_k`` before each update.)"""
        pop = state.witness if state.witness is not None else Population(
            state.walkers, state.log_weights, state.log_z_banked)
        return pop.log_evidence

    def get_params(self, state):
        return self.constrain(state.params)

    def update(self, state, *args, **kwargs):
        """One training step; returns ``(state, stats)`` (stats: cross_entropy, log_z,
        log_z_grad, ess, ess_log_z, log_z_mc_var, resampled, loss, param_max, dead).

        Raises ``FloatingPointError`` (from Python, after the compiled step) if the step failed
        (see :class:`TrainState`); ``err.state`` is the last good state, unchanged."""
        self._check_state(state)
        new, stats = self._update_jit(_with_flags(state), args, kwargs)
        if int(new.failure):
            err = FloatingPointError(self._failure_message(new, 0))
            err.state, err.step = _healthy(new), int(new.failed_at)
            raise err
        return new, stats

    def _failure_message(self, state, num_kept):
        code, k = int(state.failure), int(state.failed_at)
        what, fix = FAILURES[code]
        if code == 2 and self.method == "pcd":
            what = "a walker's energy is NaN or infinite after its move (pcd keeps every walker)"
        return (
            f"EBMTrainer ({self.method}): update {k} failed: {what}. {fix} The state is the "
            f"last good one, before update {k}; the {num_kept} update(s) of this run before it "
            "are kept in err.result (a TrainResult: params, state, history; also "
            "trainer.last_result). Resume with run(..., state=err.result.state) after changing "
            "the settings."
        )

    def _update(self, state, args, kwargs):
        """One update, frozen (a no-op) once the state has failed; see :class:`TrainState`."""
        state = _with_flags(state)
        return self._update_carrying(state, self._caches(state, args, kwargs), args, kwargs)[:2]

    def _caches(self, state, args, kwargs):
        """The targets' caches of the gradient walkers and the witness at ``state.params``
        (``(None, None)`` where the walkers' target evaluates nothing, and for ``pcd``/``cd``).

        An update ends by evaluating them at ``θ_{k+1}`` anyway (the work), so :meth:`steps`
        carries them from one update to the next (an RBM: the hidden logits ``v W + c``,
        which the next gradient and first half-sweep start from) and computes them here once
        per call. They never enter :class:`TrainState`, so a state cannot carry a stale one.
        (This assumes, as everywhere in the trainer, that the energy distribution depends
        on the parameters and not on the minibatch.)"""
        if self.method != "jarzynski":
            return None, None
        fn, _ = self._site_fn(state.params, args, kwargs)
        target = WK.parameter_path(fn).target(fn)
        if target.evaluate is None:
            return None, None
        wit = target.evaluate(state.witness.x) if self.crossfit else None
        return target.evaluate(state.walkers), wit

    def _update_carrying(self, state, caches, args, kwargs):
        """:meth:`_update` with the caches of :meth:`_caches` in and out."""
        new, stats, code, new_caches = self._raw_update(state, args, kwargs, caches)
        fail_now = (state.failure == 0) & (code != 0)
        frozen = (state.failure != 0) | fail_now
        keep = lambda a, b: jnp.where(frozen, a, b)
        new_caches = jax.tree.map(keep, caches, new_caches)
        kept = jax.tree.map(keep, state, new)
        kept = kept._replace(
            failure=jnp.where(fail_now, code, state.failure).astype(jnp.int32),
            failed_at=jnp.where(fail_now, state.step, state.failed_at).astype(jnp.int32),
        )
        # Stats of a frozen update mean nothing: NaN (floats) or zero (counts, flags).
        blank = {k: jnp.nan if jnp.issubdtype(v.dtype, jnp.floating) else 0 for k, v in stats.items()}
        stats = {k: jnp.where(frozen, blank[k], v).astype(v.dtype) for k, v in stats.items()}
        return kept, stats, new_caches

    def _raw_update(self, state, args, kwargs, caches=(None, None)):
        key, k_cd, k_move = jax.random.split(state.rng_key, 3)
        fn_k, data = self._site_fn(state.params, args, kwargs)
        x = state.walkers
        if self.method == "cd":  # CD-k: restart at data, k moves, then the gradient
            flat = data.reshape((-1,) + fn_k.event_shape).astype(x.dtype)
            x = flat[jax.random.randint(k_cd, (x.shape[0],), 0, flat.shape[0])]
            x, _ = WK.move(k_move, fn_k, x, self.num_moves, self.step_size)
        pop = Population(x, state.log_weights, state.log_z_banked)
        log_z_k = pop.log_evidence
        # Gradient from the walkers *before* they move: the increment below is then evaluated
        # at states drawn after θ_{k+1} was chosen (reweighting the very walkers that chose
        # θ_{k+1} biases log Z by O(lr/N) per step: the gradient step lowers log γ there).
        cache, witness_cache = caches
        (loss, lg_data), grads = self.gradient(state.params, x, pop.log_weights, args, kwargs,
                                               cache)
        bad_data = ~jnp.all(jnp.isfinite(lg_data))
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        if self.ess_lr is not None:
            updates = jax.tree.map(lambda u: (state.lr_scale * u).astype(u.dtype), updates)
        params = jax.tree.map(lambda p, u: p + u, state.params, updates)
        param_max = _param_max(params)
        bad_params = ~jnp.isfinite(param_max)
        ess = W.ess(pop.log_weights)
        resampled = jnp.zeros((), bool)
        dead = jnp.zeros((), jnp.int32)
        bad_walkers = jnp.zeros((), bool)
        log_z_grad = log_z_k
        ess_log_z = ess
        mc_var = jnp.zeros((), loss.dtype)
        if self.method == "jarzynski":
            # The engine's stage on the parameter path, moves first: move with θ_k (Gibbs:
            # exact; ULA: Crooks increment), then add the work log γ_{k+1} − log γ_k at the
            # moved state, resample if the ESS is low, revive dead walkers at a live
            # position. Moving with θ_{k+1} first is biased.
            fn_next, _ = self._site_fn(params, args, kwargs)
            pop, cache, info = WK.advance_cached(k_move, pop, cache, fn_k, fn_next,
                                                 self.num_moves, self.step_size,
                                                 self.resample_threshold, self.resampling)
            # Deaths from a non-finite increment (NaN/inf energy, a diverging move); walkers
            # dropped for a weight below e^-1000 of the heaviest are the ESS collapse's story.
            dead = info.num_failed
            bad_walkers = ~jnp.any(jnp.isfinite(pop.log_weights))
            ess = info.resample.ess_before
            ess_log_z = ess
            resampled = info.resample.resampled > 0
            if self.crossfit:
                # Cross-fitting: the witness took no part in choosing θ_{k+1} (the gradient
                # above read the gradient population only), so its work log γ_{k+1} − log γ_k
                # is an ordinary annealing increment along a path fixed without it, and its
                # evidence is unbiased for log Z_θ. Same kernel, same work, its own key; any
                # exact order will do, so the work comes first (at the walkers as they are),
                # then the moves with θ_{k+1}, then the ESS check: the work's v W_{k+1} is the
                # sweep's first half-sweep, one product instead of two.
                witness = state.witness
                log_z_k = witness.log_evidence
                witness, witness_cache, winfo = WK.advance_cached(
                    jax.random.fold_in(k_move, 1), witness, witness_cache, fn_k, fn_next,
                    self.num_moves, self.step_size, self.resample_threshold, self.resampling,
                    move_first=False)
                dead = dead + winfo.num_failed
                bad_walkers = bad_walkers | ~jnp.any(jnp.isfinite(witness.log_weights))
                ess_log_z = winfo.resample.ess_before
                # Monte Carlo variance the update adds to log Z_grad − log Z_witness: at a
                # resampling, (1/ESS − 1)/N of each population (normalised ESS; a lower
                # bound for persistent walkers, whose lineages are correlated in time).
                mc_var = (_resample_var(info, self.num_walkers)
                          + _resample_var(winfo, self.num_log_z_walkers)).astype(loss.dtype)
        elif self.method == "pcd":
            x, _ = WK.move(k_move, fn_k, x, self.num_moves, self.step_size)
            bad_walkers = ~jnp.all(jnp.isfinite(fn_k.unnormalized_log_prob(x)))
            pop = pop._replace(x=x)
        code = jnp.where(bad_data, 1, jnp.where(bad_params, 3, jnp.where(bad_walkers, 2, 0)))
        nan = jnp.full((), jnp.nan, loss.dtype)
        track = self.method == "jarzynski"
        stats = {
            "cross_entropy": log_z_k - jnp.mean(lg_data) if track else nan,
            "log_z": log_z_k if track else nan,
            "log_z_grad": log_z_grad if track else nan,
            "ess": ess, "ess_log_z": ess_log_z, "log_z_mc_var": mc_var,
            "resampled": resampled, "loss": loss,
            "param_max": param_max.astype(loss.dtype), "dead": dead,
        }
        lr_scale = state.lr_scale
        if self.ess_lr is not None:
            stats["lr_scale"] = lr_scale.astype(loss.dtype)
            lr_scale = jnp.where(ess < self.ess_lr,
                                 jnp.maximum(lr_scale * ESS_LR_SHRINK, ESS_LR_MIN),
                                 jnp.minimum(lr_scale * ESS_LR_GROW, 1.0)).astype(lr_scale.dtype)
        new = TrainState(params, opt_state, pop.x, pop.log_weights, pop.log_z_banked,
                         state.step + 1, key, state.failure, state.failed_at,
                         witness if self.crossfit else state.witness, lr_scale)
        return new, stats, code.astype(jnp.int32), (cache, witness_cache)

    def gradient(self, params, walkers, log_weights, args=(), kwargs=None, cache=None):
        """``((loss, log γ(data)), ∇H)`` with ``∇H = −mean ∇log γ(data) + Σ_i W_i ∇log γ(x_i)``.

        ``loss`` is the surrogate whose gradient is ``∇H`` (its value is not ``H``).
        ``cache``: the walkers' :class:`~numpyro_jarzynski.ebm.rbm.GibbsCache` at ``params``
        (an RBM): the walkers' term then comes from the cached logits
        (:meth:`~numpyro_jarzynski.ebm.rbm.BernoulliRBM.linearized_log_prob`: the same
        gradient, without the forward product), its value from the cached ``log γ``. Any
        other cache is ignored.
        """
        kwargs = kwargs or {}
        w = jax.lax.stop_gradient(W.normalized_weights(log_weights))
        x = jax.lax.stop_gradient(walkers)
        cache = jax.lax.stop_gradient(cache) if isinstance(cache, GibbsCache) else None

        def walker_sum(lg_walk):
            return jnp.sum(jnp.where(w > 0, w * lg_walk, 0.0))

        def surrogate(p):
            fn, d = self._site_fn(p, args, kwargs)
            lg_data = fn.unnormalized_log_prob(d)
            if cache is None:
                lg_walk = fn.unnormalized_log_prob(x)
            else:
                lg_walk = fn.linearized_log_prob(x, cache)
            return -jnp.mean(lg_data) + walker_sum(lg_walk), lg_data

        (loss, lg_data), grads = jax.value_and_grad(surrogate, has_aux=True)(params)
        if cache is not None:  # the linearised term's value is not log γ: the cached one is
            loss = -jnp.mean(lg_data) + walker_sum(cache.log_p)
        return (loss, lg_data), grads

    def steps(self, state, data, num_steps, batch_size=None, args=(), kwargs=None):
        """``num_steps`` updates in one ``lax.scan`` (pure: jit it, or vmap it over a stack of
        states for independent runs). Minibatches are drawn from ``data`` with the state's key.
        Returns ``(state, stats)`` with stats stacked over steps.

        Never raises: a failure is recorded in ``state.failure`` / ``state.failed_at`` and
        freezes the state (the stats of frozen updates are NaN); :meth:`run` turns it into a
        ``FloatingPointError``, callers of ``steps`` should check ``state.failure``."""
        kwargs = kwargs or {}
        n = data.shape[0]
        state = _with_flags(state)

        def body(carry, _):
            state, caches = carry
            if batch_size is None:
                batch = data
            else:
                batch = data[minibatch(jax.random.fold_in(state.rng_key, 7), n, batch_size)]
            state, stats, caches = self._update_carrying(state, caches, (batch,) + args,
                                                         kwargs)
            return (state, caches), stats

        # The walkers' caches at θ (an RBM's hidden logits) go from each update's work to the
        # next update's gradient and sweep; computed once here (see _caches), never stored.
        first = data if batch_size is None else data[:batch_size]
        caches = self._caches(state, (first,) + args, kwargs)
        (state, _), stats = jax.lax.scan(body, (state, caches), None, length=num_steps)
        return state, stats

    def run(self, rng_key, num_steps, data, *args, batch_size=None, state=None,
            progress_bar=True, log_every=None, init_walkers=None, init_log_z=None,
            init_log_z_walkers=None, **kwargs):
        """Run ``num_steps`` updates; the model is called as ``model(batch, *args, **kwargs)``.

        Steps run inside ``lax.scan`` chunks of ``log_every`` (default ``num_steps // 20``);
        the progress bar advances per chunk. Pass ``state`` to resume (``rng_key`` is then
        ignored): resuming gives the same result as an uninterrupted run.

        After each chunk the run is checked (module docstring): a failure recorded in the
        state raises ``FloatingPointError`` naming the update, with the completed work on
        ``err.result`` (params and state of the last good update, history up to it); an
        unstable run (negative cross-entropy on a discrete support, exploding parameters,
        walker ESS collapse, dead walkers) gives one ``UserWarning`` per kind, listed in
        ``result.problems``. Either way the result so far is ``trainer.last_result``.
        """
        data = jnp.asarray(data)
        if batch_size is not None and not 0 < batch_size <= data.shape[0]:
            raise ValueError(f"batch_size must be in 1..{data.shape[0]}, got {batch_size}.")
        if state is None:
            state = self.init(rng_key, data, *args, init_walkers=init_walkers,
                              init_log_z=init_log_z, init_log_z_walkers=init_log_z_walkers,
                              **kwargs)
        elif self._site is None:
            self._inspect((data,) + args, kwargs)
        state = _with_flags(state)
        self._check_state(state)
        if int(state.failure):
            raise ValueError(
                f"state has failed (at update {int(state.failed_at)}) and is frozen; resume "
                "from the last good state (err.result.state of the FloatingPointError)."
            )
        chunk = max(1, log_every or num_steps // 20)
        sizes = [chunk] * (num_steps // chunk) + ([num_steps % chunk] if num_steps % chunk else [])
        bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_steps, desc=f"EBM {self.method}")
        start, scale0 = int(state.step), float(_param_max(state.params))
        hist, problems = [], {}

        def result(state):
            history = {k: np.concatenate([h[k] for h in hist]) for k in hist[0]} if hist else {}
            out = TrainResult(self.get_params(state), state, history, tuple(problems.values()))
            self.last_result = out
            return out

        try:
            for size in sizes:
                first = int(state.step)
                state, stats = self._steps_jit(state, data, size, batch_size, args, kwargs)
                stats = {k: np.asarray(v) for k, v in jax.device_get(stats).items()}
                failed = int(state.failure) != 0
                if failed:  # keep the updates before the failing one; the state is frozen there
                    stats = {k: v[: int(state.failed_at) - first] for k, v in stats.items()}
                hist.append(stats)
                run_stats = {k: np.concatenate([h[k] for h in hist]) for k in hist[0]}
                found = self._diagnose(stats, first, scale0, problems, run_stats, start)
                problems.update(found)
                # trainer.last_result holds the work before any warning (which may be an error
                # under a warnings filter) or the FloatingPointError below
                if found or failed:
                    out = result(_healthy(state) if failed else state)
                for msg in found.values():
                    warnings.warn(msg, UserWarning, stacklevel=2)
                if failed:
                    kept = int(state.failed_at) - start
                    err = FloatingPointError(self._failure_message(state, kept))
                    err.result, err.history, err.state = out, out.history, out.state
                    err.step = int(state.failed_at)
                    raise err
                if bar is not None:
                    ce = float(stats["cross_entropy"][-1])
                    bar.set_postfix_str(f"H={ce:.3f} ess={float(stats['ess'][-1]):.2f}")
                    bar.update(size)
        finally:
            if bar is not None:
                bar.close()
        return result(state)

    def _check_state(self, state):
        if self.crossfit and state.witness is None:
            raise ValueError(
                "this state has no log-Z (witness) population: it was made by a trainer with "
                "log_z=\"shared\" (or saved before cross-fitting). Resume it with "
                "EBMTrainer(..., log_z=\"shared\"), or start a new run with log_z=\"crossfit\"."
            )
        if not self.crossfit and state.witness is not None:
            raise ValueError(
                "this state carries a log-Z (witness) population (log_z=\"crossfit\"); resume "
                "it with a trainer made with log_z=\"crossfit\"."
            )

    def _diagnose(self, stats, first, scale0, problems, run_stats=None, run_first=None):
        """Check one chunk's stats (host arrays; update ``first`` is row 0) for the problems not
        yet in ``problems`` (kind -> message); returns the new ones, kind -> message.
        ``run_stats``: the run's stats so far (update ``run_first`` is row 0), for the checks
        that accumulate over the run (the two running log Z of ``log_z="crossfit"``)."""
        found = {}
        if run_stats is None:
            run_stats, run_first = stats, first
        if self._discrete and "negative_ce" not in problems:
            bad = np.flatnonzero(stats["cross_entropy"] < -NEGATIVE_CE_TOL)
            if bad.size:
                i = bad[0]
                found["negative_ce"] = (
                    f"EBMTrainer: the cross-entropy estimate is {stats['cross_entropy'][i]:.4g} at "
                    f"update {first + i}, impossible for data on a discrete support (H >= 0): "
                    f"the running log Z ({stats['log_z'][i]:.4g}) has drifted and the walkers no "
                    "longer represent the model. Lower the learning rate, or use more walkers "
                    "(num_walkers) and more Gibbs sweeps per update (num_moves)."
                )
        if "exploding_params" not in problems:
            limit = EXPLOSION_FACTOR * max(1.0, scale0)
            bad = np.flatnonzero(stats["param_max"] > limit)
            if bad.size:
                i = bad[0]
                found["exploding_params"] = (
                    f"EBMTrainer: the parameters exploded: max |θ| (unconstrained) went from "
                    f"{scale0:.3g} to {stats['param_max'][i]:.4g} by update {first + i} (more than "
                    f"{EXPLOSION_FACTOR:.0e} x max(1, initial)). The optimiser is unstable: lower "
                    "the learning rate or clip the gradients (optax.clip_by_global_norm); log Z, "
                    "the cross-entropy and the walkers of an exploded model are not trustworthy."
                )
        if self.method == "jarzynski" and "ess_collapse" not in problems:
            n_eff = stats["ess"] * self.num_walkers
            if self.crossfit:
                n_eff = np.minimum(n_eff, stats["ess_log_z"] * self.num_log_z_walkers)
            bad = np.flatnonzero(n_eff < MIN_EFFECTIVE_WALKERS)
            if bad.size:
                i = bad[0]
                found["ess_collapse"] = (
                    f"EBMTrainer: the walker ESS collapsed to {n_eff[i]:.3g} effective walkers "
                    f"of {self.num_walkers} at update {first + i} (after the work increment, "
                    "before resampling): the parameters moved too far in one update for the "
                    "walkers to follow, and log Z and the walker gradient rest on a few "
                    "walkers. Lower the learning rate, or use more walkers (num_walkers) and "
                    "more moves per update (num_moves)."
                )
        if self.crossfit and "log_z_disagree" not in problems and len(run_stats["log_z"]):
            found.update(self._disagreement(run_stats, run_first))
        if "dead_walkers" not in problems and stats["dead"].any():
            i = np.flatnonzero(stats["dead"])[0]
            found["dead_walkers"] = (
                f"EBMTrainer: {int(stats['dead'][i])} walker(s) died at update {first + i} "
                "(weight zero: NaN/inf energy or a diverging ULA move; history['dead'] counts "
                "them per update). The estimates exclude the region where the energy is not "
                "finite; if it should not be excluded, fix the energy there, or lower step_size."
            )
        return found

    def _disagreement(self, stats, first):
        """The two running log Z (gradient walkers, witness) drift apart: the change of
        ``log_z_grad − log_z`` since the run's first update against its Monte Carlo error
        (``log_z_mc_var`` summed; ``(1/ESS − 1)/N`` of each population now as a floor)."""
        d = stats["log_z_grad"] - stats["log_z"]
        drift = d - d[0]
        now = ((1.0 / np.maximum(stats["ess"], 1e-12) - 1.0) / self.num_walkers
               + (1.0 / np.maximum(stats["ess_log_z"], 1e-12) - 1.0) / self.num_log_z_walkers)
        var = np.concatenate([[0.0], np.cumsum(stats["log_z_mc_var"])[:-1]]) + now
        sigma = np.sqrt(np.maximum(var, 0.0))
        found = {}
        noisy = np.flatnonzero(sigma > NOISY_LOG_Z_NATS)
        if noisy.size:
            i = noisy[0]
            found["log_z_noisy"] = (
                f"EBMTrainer: the running log Z has a Monte Carlo error of about "
                f"{sigma[i]:.2g} nats by update {first + i} (and {sigma[-1]:.2g} at update "
                f"{first + sigma.size - 1}; the walkers' ESS fell to "
                f"{float(np.min(stats['ess'])):.2g} of {self.num_walkers}): it is too noisy "
                "to be read as log Z, or to check the two populations against each other. The "
                "walkers do not keep up with the model: each gradient step moves θ further "
                "than they mix, so every update resamples a few survivors. Lower the learning "
                "rate, or use more moves per update (num_moves), more walkers (num_walkers), "
                "or a larger ULA step_size."
            )
        bad = np.flatnonzero(np.abs(drift) > DISAGREE_SIGMAS * sigma + DISAGREE_NATS)
        if not bad.size:
            return found
        i = bad[0]
        return {**found, "log_z_disagree": (
            f"EBMTrainer: the two running log Z disagree: at update {first + i} the gradient "
            f"walkers' log Z ({stats['log_z_grad'][i]:.5g}) and the witness walkers' "
            f"({stats['log_z'][i]:.5g}) have drifted {drift[i]:+.4g} nats apart since update "
            f"{first}, against a Monte Carlo error of about {sigma[i]:.2g}. The walkers do not "
            "keep up with the model: each gradient step moves θ further than they mix, so the "
            "gradient walkers feel their own steps, and their weights (hence the gradient's "
            "model term) are biased by about that much. history['log_z'] (the witness, which "
            "never enters a gradient) stays unbiased, but if the walkers cannot follow the "
            "model at all it is noisy and typically low too. Lower the learning rate, or use "
            "more moves per update (num_moves), more walkers (num_walkers), or a larger ULA "
            "step_size."
        )}

    # -- save / resume -------------------------------------------------------------------------
    @staticmethod
    def save(path, state):
        """Write ``state`` to ``path`` (pickle of host arrays; the key as raw key data)."""
        key = state.rng_key
        typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        raw = jax.random.key_data(key) if typed else key
        host = jax.device_get(state._replace(rng_key=raw))
        with open(path, "wb") as f:
            pickle.dump({"state": host, "typed_key": bool(typed)}, f)

    @staticmethod
    def load(path):
        with open(path, "rb") as f:
            blob = pickle.load(f)
        state = jax.tree.map(jnp.asarray, blob["state"])
        if blob["typed_key"]:
            state = state._replace(rng_key=jax.random.wrap_key_data(state.rng_key))
        return state


def uses_real_support(fn):
    s = fn.support
    return s is constraints.real or s is constraints.real_vector or (
        isinstance(s, constraints.independent) and s.base_constraint is constraints.real
    )
