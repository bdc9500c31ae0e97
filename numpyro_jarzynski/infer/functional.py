r"""Tempered SMC as pure, compiled programs.

**The functional API.** :func:`smc` returns an :class:`SMCAlgorithm` whose ``init``, ``step``
and ``run`` are pure functions of a key and the model's arguments, so they can be ``jit``-ed
and ``vmap``-ped over keys *and over data sets*:

.. code-block:: python

    algo = numpyro_jarzynski.smc(model, num_stages=50, num_particles=1000)
    init, step = algo                                  # BlackJAX style
    state = jax.jit(algo.run)(jax.random.key(0), y)    # 50 stages from prior to posterior
    state.log_evidence
    algo.report(state)                                 # the run's warnings (or SMCFailure)

    # or a log density: nj.smc(log_likelihood=f, prior=dist.Normal(jnp.zeros(d), 1.0).to_event(1))

    # 100 simulated data sets in one compiled call (simulation-based calibration):
    keys = jax.random.split(jax.random.key(1), 100)
    states = jax.jit(jax.vmap(algo.run))(keys, ys)     # ys: (100, n)

Trouble is recorded in the state, never raised inside the compiled program:
:meth:`SMCAlgorithm.report` raises and warns from Python afterwards, exactly as
``mcmc.run`` does. Call it.

**The compiled runs of** ``MCMC(JarzynskiSMC(model)).run``. NumPyro's ``MCMC.run`` rebuilds
its ``jit`` wrappers on every call (``fori_collect`` passes a new ``jax.jit`` object as a
static argument), so every call retraces and recompiles, for NUTS too. For a
``JarzynskiSMC`` sampler :func:`run_chains` replaces that loop (called from
:mod:`numpyro_jarzynski._numpyro_hooks`, the one place that touches ``MCMC``'s internals): the
whole run (prior draw, every stage, the collection of the weighted populations) is one
program, compiled once and kept on the kernel, keyed on the run's static settings and on

* with ``jit_model_args=True``: the tree structure, shapes and dtypes of the model's array
  arguments (new data of the same shapes reuses the program) and the values of its other
  arguments (Python numbers, strings, ``None``: they are static, e.g. plate sizes);
* with ``jit_model_args=False`` (NumPyro's default): the content of the arguments, which the
  program closes over as constants, as NumPyro does (the same data reuses the program; new
  data compiles a new one).

With ``progress_bar=True`` the stages run one compiled call each under a ``tqdm`` bar (the
same programs are reused across runs); with ``progress_bar=False`` the whole run is one call.
"""

import os
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.util import nested_attrgetter

from numpyro_jarzynski.engine.kernels import Auto
from numpyro_jarzynski.infer import report
from numpyro_jarzynski.infer.tempering import field_source, record

# Compiled runs kept per kernel (least recently used dropped first).
MAX_PROGRAMS = 16


# --------------------------------------------------------------------------- data handling
def _is_array(x):
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


class _Data(NamedTuple):
    """The model's arguments split into a static part and the arrays the program takes."""

    key: Any  # hashable: what the compiled program depends on
    dynamic: tuple  # arrays passed to the program (empty when it closes over the data)
    rebuild: Any  # dynamic -> (args, kwargs)


def split_data(args, kwargs, jit_model_args, fingerprint):
    """:class:`_Data` for one run (module docstring: what the cache is keyed on)."""
    kwargs = dict(kwargs or {})
    if not jit_model_args:
        return _Data(("const", fingerprint(args, kwargs)), (), lambda _: (args, kwargs))
    leaves, treedef = jax.tree.flatten((args, kwargs))
    is_dyn = [_is_array(leaf) for leaf in leaves]
    static = [None if d else leaf for leaf, d in zip(leaves, is_dyn)]
    avals = tuple(
        (tuple(np.shape(leaf)), str(jnp.result_type(leaf)), getattr(leaf, "weak_type", False))
        for leaf, d in zip(leaves, is_dyn) if d
    )

    def rebuild(dynamic):
        it = iter(dynamic)
        return jax.tree.unflatten(treedef, [next(it) if d else s for s, d in zip(static, is_dyn)])

    key = ("jit", treedef, avals, fingerprint(static, {}))
    return _Data(key, tuple(leaf for leaf, d in zip(leaves, is_dyn) if d), rebuild)


# --------------------------------------------------------------------------- one run
class RunPlan(NamedTuple):
    """Static description of one ``mcmc.run`` (NumPyro's collection parameters)."""

    num_warmup: int
    lower: int  # first stage collected
    upper: int  # number of stages run
    thinning: int
    collection_size: int  # number of collected populations
    collect_fields: tuple  # state fields collected; the first is the sample field
    remove_sites: tuple  # sample-field sites left out of the collection ("~z.site")
    resumed: bool  # start from a given state (post_warmup_state) instead of the prior


def _pieces(kernel, plan, rebuild, postprocess_fn):
    """``(init, step, collect)`` of one chain, each ``f(·, dynamic_data)``: ``step`` runs a
    stage and records it in the state's history; ``collect(state, info, dynamic)`` reads
    the collected fields from the state or the stage's record (``tempering.field_source``)."""

    def init(key, dynamic):
        args, kwargs = rebuild(dynamic)
        return kernel._init_one(key, plan.num_warmup, args, kwargs)

    def step(state, dynamic):
        args, kwargs = rebuild(dynamic)
        state, info = kernel._step(state, args, kwargs)
        return record(state, info), info

    getters = [(field_source(f), nested_attrgetter(f)) for f in plan.collect_fields]

    def collect(state, info, dynamic):
        args, kwargs = rebuild(dynamic)
        fields = [get(state if src == "state" else info) for src, get in getters]
        post = postprocess_fn if postprocess_fn is not None else kernel.postprocess_fn(
            args, kwargs)
        z = post(fields[0])
        if plan.remove_sites:
            z = {k: v for k, v in z.items() if k not in plan.remove_sites}
        fields[0] = z
        return tuple(fields)

    return init, step, collect


def _collect_at(plan, i):
    """Whether stage ``i`` (0-based, counted from the first stage run) is collected, and its
    slot: NumPyro's ``fori_collect`` keeps the last stage of every block of ``thinning``."""
    start = plan.lower + (plan.upper - plan.lower) % plan.thinning
    j = i - start
    return (j >= 0) & ((j + 1) % plan.thinning == 0), j // plan.thinning


def _info_like(state):
    """An abstract stage record of ``state``'s run(s): one entry of the history (whose stage
    axis follows the chain axes, as many as ``state.i`` has)."""
    first = (slice(None),) * jnp.ndim(state.i) + (0,)
    return jax.eval_shape(lambda h: jax.tree.map(lambda a: a[first], h), state.history)


def _empty_collection(collect, state, dynamic, size):
    proto = jax.eval_shape(collect, state, _info_like(state), dynamic)
    return jax.tree.map(lambda a: jnp.zeros((size, *a.shape), a.dtype), proto)


def _whole_run(pieces, plan, from_state=False):
    """One chain's whole run as one program: ``(start, dynamic) -> (last state, collection)``
    (``start``: a key, or a state to resume from; ``from_state``: always a state, the
    initial one computed by a separate program)."""
    init, step, collect = pieces

    def run(start, dynamic):
        state = start if plan.resumed or from_state else init(start, dynamic)
        collection = _empty_collection(collect, state, dynamic, plan.collection_size)

        def body(i, carry):
            state, collection = carry
            state, info = step(state, dynamic)
            if plan.collection_size == 0:
                return state, collection
            take, slot = _collect_at(plan, i)
            slot = jnp.clip(slot, 0, plan.collection_size - 1)
            collection = jax.lax.cond(
                take,
                lambda c: jax.tree.map(lambda a, v: a.at[slot].set(v), c,
                                       collect(state, info, dynamic)),
                lambda c: c,
                collection,
            )
            return state, collection

        return jax.lax.fori_loop(0, plan.upper, body, (state, collection))

    return run


def _stagewise_run(compiled, plan, progress_bar, desc, chain_axis=False, single_chain=False):
    """The same run one compiled stage at a time (for the progress bar). ``chain_axis``: the
    pieces are vmapped over chains, so a collected field is ``(chains, ...)`` and the
    collection is laid out ``(chains, stages, ...)``. ``single_chain``: the collection gets
    a chain axis of length 1 (NumPyro's layout)."""
    axis = 1 if chain_axis else 0
    from tqdm.auto import trange

    init, step, collect, diagnostics = compiled

    def run(start, dynamic):
        state = start if plan.resumed else init(start, dynamic)
        collected = []
        with trange(plan.upper, disable=not progress_bar, desc=desc) as bar:
            for i in bar:
                state, info = step(state, dynamic)
                take, _ = _collect_at(plan, i)
                if take:
                    collected.append(collect(state, info, dynamic))
                if progress_bar and diagnostics is not None:
                    bar.set_postfix_str(diagnostics(state), refresh=False)
        if collected:
            collection = jax.tree.map(lambda *v: jnp.stack(v, axis=axis), *collected)
        else:
            collection = jax.tree.map(lambda a: jnp.moveaxis(a, 0, axis),
                                      _empty_collection(collect, state, dynamic, 0))
        if single_chain:
            collection = jax.tree.map(lambda a: a[None], collection)
        return state, collection

    return run


def over_chains(kernel, fn, num_batched=1):
    """``fn`` mapped over a leading chain axis of its first ``num_batched`` arguments (the
    others shared), for vectorised chains.

    ``jax.vmap`` for every fixed move. ``move="auto"`` picks its candidate per run with
    ``lax.switch``, and under ``vmap`` the index is batched, so every candidate's moves would
    run for every chain (2.4-3.7× MALA's CPU in the moves benchmark): its chains are mapped
    with ``jax.lax.map`` instead, one after the other inside the program, each running only
    its own candidate (the particle axis keeps every op vectorised)."""
    per_run = isinstance(kernel.move, Auto)

    def mapped(*args):
        batched, shared = args[:num_batched], args[num_batched:]
        if per_run:
            return jax.lax.map(lambda b: fn(*b, *shared), batched)
        return jax.vmap(lambda *b: fn(*b, *shared))(*batched)

    return mapped


def _cpu_options(level):
    """XLA options of a compiled run on the CPU: the backend's optimisation level (LLVM's).

    * ``0`` for a program that runs once per call (the initial state: prior draws and one
      evaluation of every particle): half its compile time (3.7-4.1 -> 2.1-2.2 CPU s on
      eight schools) for a run of milliseconds either way.
    * ``1`` for the stages' loop: 1-2 CPU s less compile than the default (2) with the same
      run time (measured interleaved on eight schools, the breast-cancer logistic regression
      with HMC, and a d = 10 Gaussian at N = 2·10⁴ and 10⁵ with MALA, ULA and UHMC;
      docs/benchmarks.md).

    Other backends keep their defaults, and so does a level set in ``XLA_FLAGS`` (the test
    suite compiles everything at 0). The choice depends only on the backend and the
    environment, so the same key still gives the same result."""
    if jax.default_backend() != "cpu":
        return None
    if "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        return None
    return {"xla_backend_optimization_level": level}


def _program(kernel, plan, data, chains, progress_bar, postprocess_fn):
    """The compiled run for these settings, from the kernel's cache or built now.

    ``chains``: ``(num_chains, chain_method)``."""
    num_chains, chain_method = chains
    method = chain_method if isinstance(chain_method, str) else ("callable", id(chain_method))
    key = (plan, data.key, num_chains, method, bool(progress_bar), id(postprocess_fn),
           kernel._settings_key())
    cache = kernel._programs
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    # A new program: inspect the model first, so its errors and warnings come from Python
    # with a readable traceback (they depend only on what the key holds). Abstractly, with
    # the data as the program will see it: an eager inspection dispatches, and compiles, the
    # model's ops one at a time (1.4 of a first call's CPU seconds on eight schools).
    jax.eval_shape(lambda dyn: kernel._model_spec(*data.rebuild(dyn)) and None, data.dynamic)
    pieces = _pieces(kernel, plan, data.rebuild, postprocess_fn)
    vectorized = num_chains > 1 and chain_method == "vectorized"
    if num_chains > 1 and chain_method == "parallel":  # one chain per device, no bar
        fn = jax.pmap(_whole_run(pieces, plan), in_axes=(0, None))
    elif progress_bar:
        init, step, collect = pieces
        if vectorized:
            init = over_chains(kernel, init)
            step = over_chains(kernel, step)
            collect = over_chains(kernel, collect, 2)
            diagnostics = None
        else:
            diagnostics = kernel.get_diagnostics_str
        desc = "warmup" if plan.upper <= plan.num_warmup and not plan.resumed else "sample"
        init = jax.jit(init, compiler_options=_cpu_options(0))
        step = jax.jit(step, compiler_options=_cpu_options(1))
        fn = _stagewise_run((init, step, jax.jit(collect), diagnostics),
                            plan, progress_bar, desc, chain_axis=vectorized,
                            single_chain=num_chains == 1)
    else:
        single = _whole_run(pieces, plan, from_state=True)
        init = pieces[0]
        if num_chains == 1:  # NumPyro's layout has a chain axis: added inside the program
            single = _with_chain_axis(single)
        if vectorized:
            single = over_chains(kernel, single)
            init = over_chains(kernel, init)
        loop = jax.jit(single, compiler_options=_cpu_options(1))
        if plan.resumed:
            fn = loop
        else:
            init = jax.jit(init, compiler_options=_cpu_options(0))

            def fn(start, dynamic):
                return loop(init(start, dynamic), dynamic)
    cache[key] = fn
    if len(cache) > MAX_PROGRAMS:
        cache.popitem(last=False)
    return fn


def _with_chain_axis(run):
    def with_axis(start, dynamic):
        last, fields = run(start, dynamic)
        return last, jax.tree.map(lambda a: a[None], fields)

    return with_axis


def run_chains(kernel, start, data, plan, num_chains, chain_method, progress_bar,
               postprocess_fn=None):
    """All chains of one ``mcmc.run``: ``(collected fields dict, last state)``, laid out as
    NumPyro's ``MCMC`` keeps them (fields ``(num_chains, collection_size, ...)``; the last
    state with a leading chain axis when ``num_chains > 1``).

    ``start``: a key (a batch of ``num_chains`` keys for several chains), or the state to
    resume from (batched likewise)."""
    fn = _program(kernel, plan, data, (num_chains, chain_method), progress_bar, postprocess_fn)
    if num_chains == 1 or chain_method in ("vectorized", "parallel"):
        last, fields = fn(start, data.dynamic)
    elif callable(chain_method):
        last, fields = chain_method(lambda s: fn(s, data.dynamic))(start)
    else:  # "sequential" (NumPyro turns "parallel" with too few devices into it)
        outs = [fn(jax.tree.map(lambda a, c=c: a[c], start), data.dynamic)
                for c in range(num_chains)]
        last, fields = jax.tree.map(lambda *v: jnp.stack(v), *outs)
    states = dict(zip(plan.collect_fields, fields))
    return states, last


# --------------------------------------------------------------------------- functional API
class SMCAlgorithm:
    """Tempered SMC of one model as pure functions (see the module docstring).

    ``init, step = algo`` unpacks like BlackJAX's ``SamplingAlgorithm``.

    * ``init(rng_key, *model_args, **model_kwargs) -> SMCState``: exact prior draws.
    * ``step(state, *model_args, **model_kwargs) -> (SMCState, SMCInfo)``: one stage (β
      chosen by the schedule; stages after the ``num_stages``-th stay at β = 1 and only
      mix) and its record (:class:`~numpyro_jarzynski.infer.tempering.SMCInfo`: ESS,
      conditional ESS, acceptance, ...), as BlackJAX's kernels return them. The stage does
      not write ``state.history``; :func:`~numpyro_jarzynski.infer.tempering.record`
      does, as ``run`` and ``mcmc.run`` do.
    * ``run(rng_key, *model_args, **model_kwargs) -> SMCState``: ``init`` and
      ``num_stages`` stages, each recorded in ``state.history``; ``state.log_evidence`` is
      the estimate of ``log p(y)``, the weighted population is ``state.z``
      (unconstrained) with ``state.log_weights``.
    * ``samples(state, *model_args, **model_kwargs)``: the population in constrained space
      (with deterministic sites), a dict of ``(N, ...)`` arrays.
    * ``report(state)``: raise :class:`~numpyro_jarzynski.infer.report.SMCFailure` if the
      run failed, warn about every problem it recorded; returns the
      :class:`~numpyro_jarzynski.infer.report.RunHealth` of each run (of each element of a
      ``vmap``-ped batch, flattened).

    All of them are pure (no state on the object) and can be ``jit``-ed, ``vmap``-ped over
    keys and over data sets, and nested in other JAX programs.
    """

    def __init__(self, kernel, num_stages):
        kernel._check_num_warmup(num_stages)
        self.kernel = kernel
        self.num_stages = int(num_stages)

    def __iter__(self):
        return iter((self.init, self.step))

    def __repr__(self):
        return (f"SMCAlgorithm(num_stages={self.num_stages}, "
                f"num_particles={self.kernel.num_particles}, move={self.kernel.move!r})")

    def init(self, rng_key, *model_args, **model_kwargs):
        return self.kernel._init_one(rng_key, self.num_stages, model_args, model_kwargs,
                                     quiet=False)

    def step(self, state, *model_args, **model_kwargs):
        return self.kernel._step(state, model_args, model_kwargs)

    def run(self, rng_key, *model_args, **model_kwargs):
        state = self.init(rng_key, *model_args, **model_kwargs)
        return jax.lax.fori_loop(
            0, self.num_stages,
            lambda _, s: record(*self.step(s, *model_args, **model_kwargs)), state)

    def samples(self, state, *model_args, **model_kwargs):
        return self.kernel.postprocess_fn(model_args, model_kwargs)(state.z)

    def report(self, state):
        i, beta = jax.device_get((state.i, state.history.beta))
        unrecorded = np.asarray(i) > 0
        unrecorded &= np.all(np.isnan(np.asarray(beta)), axis=-1)
        if np.any(unrecorded):
            warnings.warn(
                f"SMCAlgorithm.report: {int(np.sum(unrecorded))} run(s) took stages that were "
                "never recorded in state.history, so their collapse, stage-budget and "
                "stability checks cannot be made (only the final state is checked). When you "
                "step by hand, record each stage: state = numpyro_jarzynski.infer.record("
                "*step(state, ...)), as algo.run does.", UserWarning, stacklevel=2)
        batch = state.log_evidence.shape
        chains = int(np.prod(batch)) if batch else None
        flat = jax.tree.map(
            lambda a: jnp.reshape(a, (chains, *jnp.shape(a)[len(batch):])), state
        ) if batch else state
        return report.report_run(flat, self.kernel.num_particles, self.kernel.target_ess,
                                 num_chains=chains, stacklevel=3,
                                 num_moves=self.kernel.num_moves,
                                 multinomial=self.kernel.resampling == "multinomial")


def smc(model=None, *, log_likelihood=None, prior=None, num_stages=100, **options):
    """Tempered SMC from prior to posterior in ``num_stages`` stages, as pure functions
    (:class:`SMCAlgorithm`), of a NumPyro ``model`` or of a log density.

    ``options`` are those of :class:`~numpyro_jarzynski.JarzynskiSMC` (``num_particles``,
    ``move``, ``step_size``, ``num_moves``, ``schedule``, ``target_ess``, ...), validated the
    same way; ``num_stages`` plays the role of ``num_warmup``. The programs are the ones
    ``MCMC(JarzynskiSMC(model, **options), num_warmup=num_stages).run`` compiles: for the
    same key and data, ``algo.run(key, *args)`` is the state ``mcmc.warmup(key, *args)``
    leaves in ``mcmc.last_state``.

    **A log density instead of a model** (BlackJAX style): pass ``log_likelihood(x, *args,
    **kwargs) -> scalar`` and ``prior``, a NumPyro distribution of one particle ``x`` (e.g.
    ``dist.Normal(jnp.zeros(d), 1.0).to_event(1)``) that the run draws from exactly and whose
    log density is the untempered part; the likelihood is tempered from β = 0 to 1, and
    ``state.log_evidence`` estimates ``log ∫ prior(x) exp(log_likelihood(x)) dx``. The
    population is the site ``"x"`` (``algo.samples(state)["x"]``, constrained to the prior's
    support; the moves run in its unconstrained space).
    """
    from numpyro_jarzynski.infer.jarzynski_smc import JarzynskiSMC

    if log_likelihood is not None or prior is not None:
        model = _log_density_model(model, log_likelihood, prior)
    elif model is None:
        raise TypeError(
            "smc() needs a NumPyro model, smc(model, ...), or a log density, "
            "smc(log_likelihood=f, prior=dist.Normal(jnp.zeros(d), 1.0).to_event(1), ...)."
        )
    return SMCAlgorithm(JarzynskiSMC(model, **options), num_stages)


def _log_density_model(model, log_likelihood, prior):
    """The NumPyro model of ``smc(log_likelihood=..., prior=...)``: one site ``"x"`` drawn
    from ``prior`` and a likelihood factor (tempered)."""
    import numpyro
    import numpyro.distributions as dist

    if model is not None:
        raise TypeError("smc() takes either a model or log_likelihood= and prior=, not both.")
    if log_likelihood is None or not callable(log_likelihood):
        raise TypeError(
            "smc(prior=...) also needs log_likelihood=f, a function f(x, *args, **kwargs) -> "
            "scalar log-likelihood of one particle x."
        )
    if not isinstance(prior, dist.Distribution):
        raise TypeError(
            "smc(log_likelihood=...) also needs prior=, a NumPyro distribution of one particle "
            "that the run can draw from exactly, e.g. prior=dist.Normal(jnp.zeros(d), "
            f"1.0).to_event(1); got {type(prior).__name__}."
        )
    if prior.batch_shape:
        raise ValueError(
            f"prior has batch shape {prior.batch_shape}: it must describe one particle (an "
            "event). Use prior.to_event() (e.g. dist.Normal(jnp.zeros(d), 1.0).to_event(1))."
        )

    def model(*args, **kwargs):
        x = numpyro.sample("x", prior)
        ll = jnp.asarray(log_likelihood(x, *args, **kwargs))
        if ll.shape != ():
            raise ValueError(
                f"log_likelihood(x, ...) must return a scalar for one particle, got shape "
                f"{ll.shape}. Sum over the observations (the run vmaps over particles)."
            )
        numpyro.factor("log_likelihood", ll)

    return model


__all__ = ["RunPlan", "SMCAlgorithm", "run_chains", "smc", "split_data"]
