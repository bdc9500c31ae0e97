"""The one place where this package reaches into ``numpyro.infer.MCMC``.

NumPyro's ``MCMC.run`` compiles the whole loop of ``MCMCKernel.sample`` calls and gives the
kernel no Python-side hook after it returns, so a kernel can record trouble in its state but
cannot report it (raising from inside ``jax.debug.callback`` surfaces as an opaque
``JaxRuntimeError`` and loses the run's work). It also rebuilds its ``jit`` wrappers on every
call, so every ``run`` retraces and recompiles the whole loop. This module therefore wraps two
public methods of ``MCMC`` (once, at import). For a sampler that defines
``_jarzynski_before_run`` (only :class:`~numpyro_jarzynski.JarzynskiSMC` does):

* ``run`` checks the call, runs the compiled program the kernel keeps for these shapes and
  settings (:func:`numpyro_jarzynski.infer.functional.run_chains`, compiled on the first
  call only), stores the result where NumPyro's accessors read it (``last_state``,
  ``get_samples``, ``get_extra_fields``, ``post_warmup_state``), and reports the run's
  trouble from Python;
* ``print_summary`` prints the weighted summary instead of NumPyro's per-particle table.

Every other sampler goes straight to NumPyro's own method, with the same arguments and result.
The ``MCMC`` attributes read and written here (``_args``, ``_kwargs``, ``_warmup_state``,
``_collection_params``, ``_set_collection_params``, ``_last_state``, ``_states``,
``_states_flat``, ``_sample_field``, ``_default_fields``, ``_jit_model_args``) are NumPyro
0.22's; the pinned minor version keeps them stable.
"""

import functools

from jax import random
from numpyro.infer import MCMC
from numpyro.util import is_prng_key

_MARK = "__numpyro_jarzynski_wrapped__"


def _wrap_run(original):
    @functools.wraps(original)
    def run(self, rng_key, *args, extra_fields=(), init_params=None, **kwargs):
        before = getattr(self.sampler, "_jarzynski_before_run", None)
        if before is None:
            return original(self, rng_key, *args, extra_fields=extra_fields,
                            init_params=init_params, **kwargs)
        before(self, args, kwargs, extra_fields)
        _run_compiled(self, rng_key, args, kwargs, tuple(extra_fields), init_params)
        self.sampler._jarzynski_after_run(self, args, kwargs)

    setattr(run, _MARK, True)
    return run


def _run_compiled(mcmc, rng_key, args, kwargs, extra_fields, init_params):
    """NumPyro's ``MCMC.run`` for a ``JarzynskiSMC`` sampler, on the kernel's cached program."""
    from numpyro_jarzynski.infer import functional
    from numpyro_jarzynski.infer.jarzynski_smc import _fingerprint

    kernel = mcmc.sampler
    kernel._check_num_warmup(mcmc.num_warmup)
    if init_params is not None:
        raise ValueError(
            "JarzynskiSMC starts from exact prior draws and ignores init_params; pass "
            "init_particles=... to the kernel instead."
        )
    mcmc._args, mcmc._kwargs = args, kwargs
    if mcmc.num_chains > 1 and is_prng_key(rng_key):
        rng_key = random.split(rng_key, mcmc.num_chains)
    params = mcmc._collection_params
    if mcmc._warmup_state is not None:  # resume: only the sampling stages
        start = mcmc._warmup_state._replace(rng_key=rng_key)
        lower, upper, size = 0, mcmc.num_samples, mcmc.num_samples
    else:
        start = rng_key
        lower, upper, size = params["lower"], params["upper"], params["collection_size"]
    size = (upper - lower) // mcmc.thinning if size is None else size // mcmc.thinning
    collect, remove = {}, {}
    field = mcmc._sample_field
    for name in (field, *mcmc._default_fields, *extra_fields):
        if name.startswith(f"~{field}."):
            remove[name[len(field) + 2:]] = None
        else:
            collect[name] = None
    plan = functional.RunPlan(
        num_warmup=mcmc.num_warmup, lower=lower, upper=upper, thinning=mcmc.thinning,
        collection_size=size, collect_fields=tuple(collect), remove_sites=tuple(remove),
        resumed=mcmc._warmup_state is not None,
    )
    data = functional.split_data(args, kwargs, mcmc._jit_model_args, _fingerprint)
    states, last = functional.run_chains(
        kernel, start, data, plan, mcmc.num_chains, mcmc.chain_method, mcmc.progress_bar,
        mcmc.postprocess_fn,
    )
    mcmc._last_state = last
    mcmc._states = states
    mcmc._states_flat = None
    mcmc._set_collection_params()


def _wrap_print_summary(original):
    @functools.wraps(original)
    def print_summary(self, prob=0.9, exclude_deterministic=True):
        if not hasattr(self.sampler, "_jarzynski_before_run"):
            return original(self, prob=prob, exclude_deterministic=exclude_deterministic)
        from numpyro_jarzynski.diagnostics.summary import print_summary as weighted

        return weighted(self, ci_prob=prob)

    setattr(print_summary, _MARK, True)
    return print_summary


def install():
    """Wrap ``MCMC.run`` and ``MCMC.print_summary`` (idempotent)."""
    if not getattr(MCMC.run, _MARK, False):
        MCMC.run = _wrap_run(MCMC.run)
    if not getattr(MCMC.print_summary, _MARK, False):
        MCMC.print_summary = _wrap_print_summary(MCMC.print_summary)


install()
