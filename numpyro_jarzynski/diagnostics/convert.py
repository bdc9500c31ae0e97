"""Convert a ``JarzynskiSMC`` run into an ArviZ 1.x ``DataTree``.

A collected draw of ``JarzynskiSMC`` is a *weighted population*: ``get_samples`` has shape
``(chain, step, N, ...)`` and the weights are ``softmax(log_weights)`` over the N particles
of each run. ArviZ has no weighted draws, so the tree stores one population (one ``step``)
with the particles on the ``draw`` dimension and the log-weights next to them:

* ``posterior``: ``(chain = independent run, draw = particle, *plate dims)``;
* ``sample_stats``: ``log_weights`` on ``(chain, draw)``, ``log_marginal_likelihood`` on
  ``(chain,)`` (the name PyMC's SMC uses);
* ``smc_stages``: ``(chain, stage)`` diagnostics of the annealing stages;
* ``observed_data`` and, when asked, ``log_likelihood`` (built by ``arviz_base`` itself, so
  dims follow the model's plates exactly as :func:`arviz_base.from_numpyro` names them).

Plain ArviZ functions ignore ``log_weights``. For them, ``resampled=True`` gives the equally
weighted view: every run is resampled to N draws with probabilities ``softmax(log_weights)``
and randomly permuted (so the draw order carries no information and split-R-hat is valid).
"""

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from arviz_base import MCMCAdapter
from arviz_base.io_numpyro import NumPyroConverter

from numpyro_jarzynski.engine.resampling import get_scheme
from numpyro_jarzynski.engine.weights import log_normalize
from numpyro_jarzynski.infer import report
from numpyro_jarzynski.infer.tempering import REPORTED_STAGE_FIELDS

STAGE_GROUP = "smc_stages"


class _PopulationAdapter(MCMCAdapter):
    """``arviz_base`` adapter that presents one weighted population as (chain, draw=particle)."""

    def __init__(self, mcmc, samples, log_weights):
        super().__init__(mcmc)
        self.sample_shape = tuple(log_weights.shape)
        self._population = samples
        self._log_weights = log_weights

    def get_samples(self, seed=None, **kwargs):
        return self._population

    def get_sample_stats(self, **kwargs):
        return {"log_weights": self._log_weights}


def _check_run(mcmc):
    sampler = getattr(mcmc, "sampler", None)
    if sampler is None or not hasattr(sampler, "num_particles"):
        raise TypeError(
            "Expected a numpyro.infer.MCMC object built on JarzynskiSMC, e.g. "
            "MCMC(JarzynskiSMC(model), num_warmup=..., num_samples=...); got "
            f"{type(mcmc).__name__} with sampler {type(sampler).__name__}."
        )
    if getattr(mcmc, "_states_flat", None) is None and getattr(mcmc, "_states", None) is None:
        raise ValueError("The MCMC object has no samples yet: call mcmc.run(rng_key, ...) first.")


def _by_chain(value, num_chains, trailing_ndim):
    """Give ``value`` a leading chain axis (``num_chains=1`` runs store none)."""
    value = np.asarray(jax.device_get(value))
    if value.ndim == trailing_ndim:
        value = value[None]
    return value.reshape((num_chains,) + value.shape[value.ndim - trailing_ndim :])


def _select_step(num_steps, step):
    if not -num_steps <= step < num_steps:
        raise IndexError(
            f"step={step} is out of range: the run collected {num_steps} populations "
            f"(num_samples), so use -{num_steps} <= step < {num_steps} (default -1, the last)."
        )
    return step % num_steps


def population(mcmc, step=-1):
    """One collected population: ``(samples, log_weights, log_evidence)`` as NumPy arrays.

    ``samples[name]`` has shape ``(chain, N, ...)`` (constrained values), ``log_weights``
    ``(chain, N)`` and ``log_evidence`` ``(chain,)``: the estimate of ``log p(y)`` held by the
    run at that step.
    """
    _check_run(mcmc)
    samples = jax.device_get(mcmc.get_samples(group_by_chain=True))
    extra = mcmc.get_extra_fields(group_by_chain=True)
    if "log_weights" not in extra:
        raise ValueError(
            "The run did not collect log_weights; rerun with "
            "mcmc.run(..., extra_fields=('log_weights',))."
        )
    log_w = np.asarray(jax.device_get(extra["log_weights"]))
    num_chains, num_steps = log_w.shape[:2]
    s = _select_step(num_steps, step)
    pop = {k: np.asarray(v)[:, s] for k, v in samples.items()}
    if "log_evidence" in extra:
        log_z = np.asarray(extra["log_evidence"])[:, s]
    elif s == num_steps - 1:
        log_z = _by_chain(mcmc.last_state.log_evidence, num_chains, 0)
    else:
        raise ValueError(
            f"log evidence at step={step} was not collected; rerun with "
            "mcmc.run(..., extra_fields=('log_evidence',)) or use step=-1."
        )
    return pop, log_w[:, s], np.asarray(log_z)


def posterior_samples(mcmc, num_samples=None, *, rng_key=None, step=-1, weighted=False):
    """Posterior draws in the layout ``numpyro.infer.Predictive`` expects.

    ``mcmc.get_samples()`` holds whole weighted populations (``(num_samples, N, ...)``), which
    ``Predictive`` would read as ``num_samples`` draws of an ``N``-times larger model. This
    returns, pooled over the runs (chains, equal weight each):

    * by default an **equally weighted** resample, ``{site: (num_samples, ...)}`` (default
      ``num_samples`` = chains × N), drawn with probabilities ``softmax(log_weights)``, so
      ``Predictive(model, posterior_samples=posterior_samples(mcmc))`` gives posterior
      predictive draws;
    * with ``weighted=True``, ``(samples, log_weights)``: every particle once, ``(C·N, ...)``,
      with log-weights normalised within each run and offset by ``-log C``; weight what
      ``Predictive`` returns with ``softmax(log_weights)``.

    .. code-block:: python

        draws = posterior_samples(mcmc, 1000, rng_key=jax.random.key(1))
        pred = Predictive(model, posterior_samples=draws)(jax.random.key(2), x)
    """
    samples, log_w, _ = population(mcmc, step)
    num_chains, n = log_w.shape
    flat = {k: v.reshape((num_chains * n,) + v.shape[2:]) for k, v in samples.items()}
    log_norm = np.asarray(jax.vmap(log_normalize)(jnp.asarray(log_w)), np.float64)
    pooled = (log_norm - np.log(num_chains)).reshape(-1)
    if weighted:
        return flat, pooled
    key = jax.random.key(0) if rng_key is None else rng_key
    size = num_chains * n if num_samples is None else int(num_samples)
    idx = np.asarray(jax.random.categorical(key, jnp.asarray(pooled), shape=(size,)))
    return {k: v[idx] for k, v in flat.items()}


def equal_weight_indices(rng_key, log_weights, scheme="systematic"):
    """Ancestor indices ``(chain, N)`` of an equally weighted, randomly permuted resample.

    Uses the engine's resampling schemes, vmapped over runs; the permutation makes the draw
    order exchangeable (systematic resampling returns sorted ancestors).
    """
    resample = get_scheme(scheme)
    log_w = jnp.asarray(log_weights)
    n = log_w.shape[-1]

    def one(key, lw):
        k_res, k_perm = jax.random.split(key)
        return jax.random.permutation(k_perm, resample(k_res, lw, n))

    keys = jax.random.split(rng_key, log_w.shape[0])
    return np.asarray(jax.vmap(one)(keys, log_w))


HEALTH_FIELDS = (
    "min_ess_before_resampling",
    "min_unique_ancestors",
    "min_cess",
    "num_unsafe_stages",
    "num_unstable_stages",
    "num_step_reductions",
    "num_dead",
    "num_failed",
    "max_khat_before_resampling",
    "suggested_num_warmup",
    "failed",
)


def run_health(mcmc):
    """The :class:`~numpyro_jarzynski.infer.report.RunHealth` of every run (chain)."""
    _check_run(mcmc)
    sampler = mcmc.sampler
    return report.run_health(
        mcmc.last_state, sampler.num_particles, getattr(sampler, "target_ess", 0.9),
        num_chains=mcmc.num_chains, num_moves=getattr(sampler, "num_moves", 1),
        multinomial=getattr(sampler, "resampling", None) == "multinomial",
    )


def stage_dataset(mcmc):
    """Per-stage diagnostics of the annealing stages as a ``Dataset`` on ``(chain, stage)``."""
    _check_run(mcmc)
    history = mcmc.last_state.history
    num_chains = mcmc.num_chains
    data = {f: _by_chain(getattr(history, f), num_chains, 1) for f in REPORTED_STAGE_FIELDS}
    num_stages = data["beta"].shape[1]
    data["log_evidence"] = np.cumsum(data["log_evidence_increment"], axis=1)
    attrs = {
        "log_evidence_increment": "log(Z_k / Z_{k-1}) estimated at stage k",
        "log_evidence": "running sum of the increments: log(Z_k / Z_0)",
        "pareto_khat": "PSIS k-hat of the weights after the stage (-inf: uniform weights)",
        "ess": "normalised Kish ESS after the stage, in (0, 1]",
        "cess": "conditional ESS of the stage's weight increment",
        "step_size": "dimensionless step of the stage's moves (Langevin h or leapfrog ε)",
        "ess_before_resampling": "smallest normalised ESS of the stage before any resampling "
        "(shows a collapse that resampling hides)",
        "unique_ancestors": "fraction of distinct ancestors kept by the stage's resamplings",
        "move_cess": "smallest conditional ESS of the moves' own Crooks increments (1: MH)",
        "pareto_khat_before_resampling": "PSIS k-hat of the weights after the annealing "
        "increment, before resampling",
        "num_dead": "particles that died in the stage (density NaN or infinite, or a weight "
                    "below e^-1000 of the largest)",
        "num_failed": "particles that died in the stage because their density or weight "
                      "increment was not finite (the rest of num_dead had negligible weight)",
        "resampled": "number of resamplings in the stage",
        "jump": "squared jump of the stage's moves, in units of the preconditioner's scale "
        "(about 1 per move for a fresh draw)",
        "num_divergent": "proposals that landed where the density or its gradient is not "
        "finite (rejected, or left in place by unadjusted moves)",
        "mass_shrinkage": "weight of the diagonal in the stage's fitted mass matrix (1: the "
        "diagonal, or a dense/low-rank fit that fell back to it)",
        "move_index": "move='auto': the candidate that moved the population",
        "trial_index": "move='auto': the candidate measured on a shadow copy of the stage "
        "(-1: none)",
        "trial_score": "move='auto': the trial's efficiency (min(renewal, 1) x move CESS; "
        "NaN: none)",
        "renewal": "how far the stage's moves decorrelated the log likelihood, "
        "E_w(l_end - l_start)^2 / (2 Var_w l) (about 1 for a fresh draw)",
    }
    ds = xr.Dataset(
        {k: (("chain", "stage"), v, {"description": attrs.get(k, "")}) for k, v in data.items()},
        coords={"chain": np.arange(num_chains), "stage": np.arange(num_stages)},
    )
    return ds


def to_datatree(
    mcmc,
    step=-1,
    *,
    resampled=False,
    log_likelihood=False,
    rng_key=None,
    resampling="systematic",
    coords=None,
    dims=None,
):
    """Convert a ``JarzynskiSMC`` run to an ArviZ ``DataTree`` (groups in the module docstring).

    :param mcmc: a ``numpyro.infer.MCMC`` that has run ``JarzynskiSMC``.
    :param int step: which collected population (index into ``num_samples``; default the last).
    :param bool resampled: equal-weight view: resample each run by its weights (then
        ``sample_stats.log_weights`` is zero and any ArviZ function is correct on it).
    :param bool log_likelihood: add the pointwise ``log_likelihood`` group.
    :param rng_key: key for ``resampled=True`` (default ``jax.random.key(0)``).
    :param resampling: resampling scheme for the equal-weight view.
    :param coords: dimension coordinates, as for :func:`arviz_base.from_numpyro`.
    :param dims: variable dims; inferred from the model's plates when omitted.
    """
    samples, log_w, log_z = population(mcmc, step)
    if resampled:
        key = jax.random.key(0) if rng_key is None else rng_key
        idx = equal_weight_indices(key, log_w, resampling)
        samples = {k: np.take_along_axis(v, idx.reshape(idx.shape + (1,) * (v.ndim - 2)), 1)
                   for k, v in samples.items()}
        log_w = np.zeros_like(log_w)
    adapter = _PopulationAdapter(mcmc, samples, log_w)
    tree = NumPyroConverter(
        posterior=adapter, log_likelihood=log_likelihood, coords=coords, dims=dims
    ).to_datatree()
    stats = tree["sample_stats"].to_dataset()
    stats["log_marginal_likelihood"] = ("chain", log_z)
    stats.attrs.update(equally_weighted=int(bool(resampled)), step=int(step))
    tree["sample_stats"] = stats
    tree[STAGE_GROUP] = stage_dataset(mcmc)
    health = run_health(mcmc)
    stats = tree["sample_stats"].to_dataset()
    for field in HEALTH_FIELDS:
        stats[field] = ("chain", np.asarray([getattr(h, field) for h in health]))
    # The single-run error bar is the final state's: it belongs to a collected population
    # whose log evidence is the final one (every population after the annealing).
    final, se = (np.asarray(v) for v in report.evidence_of(health))
    stats["log_marginal_likelihood_se"] = ("chain", np.where(log_z == final, se, np.nan))
    msgs = [m for h in health for m in report.messages(h)]
    across = report.disagreement(final, se)
    stats.attrs["run_report"] = "\n".join(msgs + ([across] if across else []))
    tree["sample_stats"] = stats
    tree.attrs["weighted_population"] = int(not resampled)
    return tree


__all__ = ["equal_weight_indices", "population", "posterior_samples", "run_health", "stage_dataset", "to_datatree"]
