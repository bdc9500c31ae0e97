"""The one place where this package reaches into ``numpyro.infer.MCMC``.

NumPyro's ``MCMC.run`` compiles the whole loop of ``MCMCKernel.sample`` calls and gives the
kernel no Python-side hook after it returns, so a kernel can record trouble in its state but
cannot report it. Raising from inside ``jax.debug.callback`` surfaces as an opaque
``JaxRuntimeError`` and loses the run's work. This module therefore wraps two public methods
of ``MCMC`` (once, at import): for a sampler that defines ``_jarzynski_before_run`` /
``_jarzynski_after_run`` (only :class:`~numpyro_jarzynski.JarzynskiSMC` does) they call those
around the original ``run``, and ``print_summary`` prints the weighted summary instead of
NumPyro's per-particle table. Every other sampler goes straight to NumPyro's own method, with
the same arguments and result.
"""

import functools

from numpyro.infer import MCMC

_MARK = "__numpyro_jarzynski_wrapped__"


def _wrap_run(original):
    @functools.wraps(original)
    def run(self, rng_key, *args, extra_fields=(), init_params=None, **kwargs):
        before = getattr(self.sampler, "_jarzynski_before_run", None)
        if before is None:
            return original(self, rng_key, *args, extra_fields=extra_fields,
                            init_params=init_params, **kwargs)
        before(self, args, kwargs, extra_fields)
        out = original(self, rng_key, *args, extra_fields=extra_fields,
                       init_params=init_params, **kwargs)
        self.sampler._jarzynski_after_run(self, args, kwargs)
        return out

    setattr(run, _MARK, True)
    return run


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
