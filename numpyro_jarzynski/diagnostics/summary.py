r"""Weighted posterior summary of ``JarzynskiSMC`` runs (a replacement for ``print_summary``).

With C independent runs of N particles, run c has normalised weights
:math:`W_{ci} = \operatorname{softmax}(A_c)_i`. Runs are pooled with equal weight, so every
statistic uses :math:`w_{ci} = W_{ci} / C`:

* mean :math:`\hat\mu = \sum_{ci} w_{ci} x_{ci}` (the average of the per-run weighted means);
* sd :math:`\sqrt{\sum_{ci} w_{ci} (x_{ci} - \hat\mu)^2}`;
* equal-tailed interval from the weighted inverted-CDF quantiles
  :math:`q_p = \min\{x_{(j)} : \sum_{l \le j} w_{(l)} \ge p\}`;
* ``mcse_mean``: the standard deviation of the per-run means over :math:`\sqrt C` (an honest
  Monte Carlo error for SMC, whose particles are not independent); with one run, the Kish
  approximation :math:`\mathrm{sd}/\sqrt{\mathrm{ESS}}`;
* ``ess_kish``: :math:`\sum_c 1 / \sum_i W_{ci}^2`;
* ``r_hat``: ArviZ's rank-normalised split R-hat on the equally weighted (resampled) view;
* per run: Kish ESS, PSIS Pareto k-hat of the weights (ArviZ's ``psislw``), log evidence;
  the log evidence is reported as mean ± standard error over runs.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
from arviz_base import dataset_to_dataframe, rcParams
from arviz_stats import rhat as az_rhat
from arviz_stats.base import array_stats

from numpyro_jarzynski.diagnostics.convert import equal_weight_indices, to_datatree
from numpyro_jarzynski.engine import weights as W

KHAT_THRESHOLD = 0.7


def pareto_khat(log_weights):
    """PSIS Pareto k-hat of importance weights, computed by ArviZ (``arviz_stats``).

    ArviZ's ``psislw`` follows the LOO convention: it takes a log-likelihood and smooths the
    weights ``exp(-log_lik)``, so the log-weights are passed negated. Weights with no tail
    (uniform, e.g. right after resampling) give ``-inf``; tied heavy weights (ArviZ's NaN, "far
    from a generalised Pareto distribution") give ``+inf``; fewer than 25 particles give NaN.

    :param log_weights: array ``(..., N)`` of unnormalised log-weights.
    :return: array ``(...)`` of k-hat values; above 0.7 the weighted estimates are unreliable.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    flat = lw.reshape(-1, lw.shape[-1])
    out = np.empty(flat.shape[0])
    for r, row in enumerate(flat):  # a handful of runs, not particles
        out[r] = _khat_one(row)
    return out.reshape(lw.shape[:-1])


def _khat_one(log_w):
    finite = log_w[np.isfinite(log_w)]
    if log_w.shape[0] < 25 or finite.size == 0:
        return np.nan
    if np.ptp(finite) <= 1e-12 * max(1.0, np.abs(finite).max()):
        return -np.inf  # uniform weights: no tail to fit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _, khat = array_stats.psislw(-log_w, r_eff=1.0)
    except ValueError:  # ArviZ: "All tail values are the same"
        return -np.inf
    # ArviZ gives NaN when more than a quarter of the tail is tied at its cutoff: with a low ESS
    # a few heavy particles (or copies of one ancestor) carry the weight, the worst case,
    # reported as +inf so it is flagged; with a healthy ESS (a likelihood with few distinct
    # values) it stays NaN, as the engine's k-hat does. The same when the tail takes only a few
    # distinct values (lattice energies; near-ties are one level, W.weight_levels), where
    # ArviZ returns a number that means nothing.
    n = log_w.shape[0]
    tail = int(min(0.2 * n, 3 * n**0.5))
    top = np.sort(finite)[-tail:]
    few_levels = W.weight_levels(np, top) < max(5, tail // 4)  # lattice energies: no GPD fit
    if np.isnan(khat) or few_levels:
        return np.inf if float(W.ess(jnp.asarray(log_w))) < 0.5 else np.nan
    return float(khat)


def kish_ess(log_weights):
    """Kish effective sample size ``1 / Σ W_i²`` (a count) of each run: ``(..., N) -> (...)``."""
    lw = jnp.asarray(log_weights)
    n = lw.shape[-1]
    flat = lw.reshape(-1, n)
    return np.asarray(jax.vmap(W.ess)(flat) * n).reshape(lw.shape[:-1])


def normalized_weights(log_weights):
    """``softmax`` over the last axis in float64; dead particles (``-inf``) get zero weight."""
    lw = np.asarray(log_weights, dtype=np.float64)
    top = np.max(np.where(np.isfinite(lw), lw, -np.inf), axis=-1, keepdims=True)
    w = np.where(np.isfinite(lw), np.exp(lw - top), 0.0)
    return w / np.sum(w, axis=-1, keepdims=True)


def weighted_quantile(values, weights, probs):
    """Weighted inverted-CDF quantiles along the last axis.

    ``q_p`` is the smallest value whose cumulative weight reaches ``p`` (NumPy's
    ``method="inverted_cdf"`` with ``weights``). ``weights`` broadcast against ``values``.
    Returns shape ``(len(probs),) + values.shape[:-1]``.
    """
    values = np.asarray(values, dtype=np.float64)
    weights = np.broadcast_to(np.asarray(weights, dtype=np.float64), values.shape)
    return np.quantile(values, np.asarray(probs), axis=-1, weights=weights, method="inverted_cdf")


class WeightedSummary:
    """Result of :func:`summary`.

    :ivar table: ``pandas.DataFrame``, one row per scalar quantity (ArviZ labels, e.g.
        ``mu[0]``): mean, sd, eti bounds, mcse_mean, ess_kish, r_hat.
    :ivar runs: ``pandas.DataFrame``, one row per run: ess_kish, ess (normalised),
        pareto_k, log_marginal_likelihood and its single-run standard error
        log_marginal_likelihood_se (NaN for a population that is not the run's last).
    :ivar log_evidence: mean of the runs' log evidence estimates.
    :ivar log_evidence_se: its standard error: over runs, or with one run that run's own
        (``log_marginal_likelihood_se`` in ``runs``, from the particles' genealogy).
    :ivar warnings: messages about unreliable weights.
    """

    def __init__(self, table, runs, log_evidence, log_evidence_se, messages):
        self.table = table
        self.runs = runs
        self.log_evidence = log_evidence
        self.log_evidence_se = log_evidence_se
        self.warnings = tuple(messages)

    def header(self):
        c, n = len(self.runs), self.num_particles
        if c > 1:
            how = ("se over runs: Monte Carlo spread only, blind to a bias all runs share; see "
                   "the stage checks")
        elif np.isfinite(self.log_evidence_se):
            how = ("one run: its error bar from the particles' genealogy, blind to a mode no "
                   "particle reached; several runs (num_chains) also check each other")
        else:
            how = ("one run, no error bar: the genealogy's estimate needs resampling="
                   "'multinomial' (the default); or run several chains")
        # An error bar is only as good as the run: where a check warned it can be far too
        # small (stochastic volatility at a short budget: 6.8x; docs/trust.md).
        warned = ("; the run(s) warned, see below: then this error bar may be far too small"
                  if self.warnings else "")
        return (
            f"JarzynskiSMC: {c} run(s) x {n} particles; "
            f"log evidence {self.log_evidence:.4f} ± {self.log_evidence_se:.4f} ({how}{warned})"
        )

    num_particles = None

    def __str__(self):
        with pd.option_context("display.width", 120, "display.max_columns", 20):
            parts = [
                self.header(),
                "",
                self.table.to_string(float_format=lambda v: f"{v:.4g}"),
                "",
                "per run:",
                self.runs.to_string(float_format=lambda v: f"{v:.4g}"),
            ]
        return "\n".join(parts + [f"WARNING: {m}" for m in self.warnings])

    __repr__ = __str__

    def _repr_html_(self):
        warn = "".join(f"<p><b>Warning:</b> {m}</p>" for m in self.warnings)
        return f"<p>{self.header()}</p>{self.table.to_html()}{self.runs.to_html()}{warn}"


def _as_tree(data, step):
    if hasattr(data, "sampler"):  # an MCMC object
        return to_datatree(data, step)
    if not hasattr(data, "children") or "posterior" not in data.children:
        raise TypeError(
            "summary expects an MCMC object that ran JarzynskiSMC or the DataTree from "
            f"numpyro_jarzynski.diagnostics.to_datatree, got {type(data).__name__}."
        )
    stats = data["sample_stats"] if "sample_stats" in data.children else None
    if stats is not None and "log_weights" in stats and set(stats["log_weights"].dims) != {
        "chain", "draw"
    }:
        raise ValueError(
            "This DataTree looks like arviz_base.from_numpyro(mcmc): it treats each collected "
            "population as one draw, so the particles and their weights land on extra "
            f"dimensions ({stats['log_weights'].dims}). Build it with "
            "numpyro_jarzynski.to_datatree(mcmc) (particles as draws, weights alongside), or "
            "pass the MCMC object to summary directly."
        )
    if "sample_stats" not in data.children or "log_weights" not in data["sample_stats"]:
        raise ValueError(
            "The DataTree has no sample_stats.log_weights: build it with "
            "numpyro_jarzynski.diagnostics.to_datatree(mcmc) so the weights travel with it."
        )
    return data


def _select(posterior, var_names):
    if var_names is None:
        return posterior
    var_names = [var_names] if isinstance(var_names, str) else list(var_names)
    missing = [v for v in var_names if v not in posterior]
    if missing:
        raise KeyError(f"Variables {missing} not in the posterior; it has {list(posterior)}.")
    return posterior[var_names]


def summary(data, var_names=None, *, step=-1, ci_prob=None, rng_key=None, warn=True):
    """Weighted summary of a ``JarzynskiSMC`` run; the statistics are in the module docstring.

    :param data: the ``MCMC`` object, or a ``DataTree`` from :func:`to_datatree`.
    :param var_names: variables to include (default all).
    :param int step: which collected population, when ``data`` is an ``MCMC``.
    :param float ci_prob: interval mass (default ArviZ's ``rcParams["stats.ci_prob"]``).
    :param rng_key: key of the resampling used for R-hat (default ``jax.random.key(0)``).
    :param bool warn: emit a ``UserWarning`` when a run's k-hat exceeds 0.7.
    :return: :class:`WeightedSummary` (print it, or use ``.table`` / ``.runs``).
    """
    tree = _as_tree(data, step)
    ci_prob = rcParams["stats.ci_prob"] if ci_prob is None else float(ci_prob)
    if not 0.0 < ci_prob < 1.0:
        raise ValueError(f"ci_prob must be in (0, 1), got {ci_prob}.")
    post = _select(tree["posterior"].to_dataset(), var_names)
    stats = tree["sample_stats"].to_dataset()
    log_w = stats["log_weights"].transpose("chain", "draw").values
    num_chains, num_particles = log_w.shape

    weights = normalized_weights(log_w)
    pooled = xr.DataArray(weights / num_chains, dims=("chain", "draw"))
    run_w = xr.DataArray(weights, dims=("chain", "draw"))
    sample = ("chain", "draw")
    post = post.astype(np.float64)

    run_means = (post * run_w).sum("draw")
    mean = run_means.mean("chain")
    sd = np.sqrt((((post - mean) ** 2) * pooled).sum(sample))
    ess_runs = kish_ess(log_w)
    ess_total = float(np.sum(ess_runs))
    if num_chains > 1:
        mcse = run_means.std("chain", ddof=1) / np.sqrt(num_chains)
    else:
        mcse = sd / np.sqrt(ess_total)

    probs = [(1 - ci_prob) / 2, (1 + ci_prob) / 2]
    ci = xr.apply_ufunc(
        lambda x: np.moveaxis(
            weighted_quantile(x.reshape(x.shape[:-2] + (-1,)), pooled.values.ravel(), probs), 0, -1
        ),
        post,
        input_core_dims=[list(sample)],
        output_core_dims=[["summary"]],
        dask_gufunc_kwargs={"output_sizes": {"summary": 2}},
    )
    perc = round(ci_prob * 100)
    ci = ci.assign_coords(summary=[f"eti{perc}_lb", f"eti{perc}_ub"])

    key = jax.random.key(0) if rng_key is None else rng_key
    idx = xr.DataArray(equal_weight_indices(key, log_w), dims=sample)
    r_hat = az_rhat(post.isel(draw=idx), sample_dims=list(sample))

    parts = [
        mean.expand_dims(summary=["mean"]),
        sd.expand_dims(summary=["sd"]),
        ci,
        mcse.expand_dims(summary=["mcse_mean"]),
        xr.full_like(mean, ess_total).expand_dims(summary=["ess_kish"]),
        r_hat.expand_dims(summary=["r_hat"]),
    ]
    result = xr.concat(parts, dim="summary")
    table = dataset_to_dataframe(result, sample_dims=["summary"]).T

    khat = pareto_khat(log_w)
    log_z = stats["log_marginal_likelihood"].values.astype(np.float64)
    run_se = (stats["log_marginal_likelihood_se"].values.astype(np.float64)
              if "log_marginal_likelihood_se" in stats else np.full(num_chains, np.nan))
    runs = pd.DataFrame(
        {
            "ess_kish": ess_runs,
            "ess": ess_runs / num_particles,
            "pareto_k": khat,
            "log_marginal_likelihood": log_z,
            "log_marginal_likelihood_se": run_se,
        },
        index=pd.Index(np.arange(num_chains), name="chain"),
    )
    log_z_mean = float(np.mean(log_z))
    # Several runs: the spread over runs. One run: its own error bar (the genealogy's).
    log_z_se = (float(np.std(log_z, ddof=1) / np.sqrt(num_chains)) if num_chains > 1
                else float(run_se[0]))

    messages = []
    bad = np.flatnonzero(khat > KHAT_THRESHOLD)
    if bad.size:
        messages.append(
            f"Pareto k-hat of the weights is above {KHAT_THRESHOLD} in run(s) {bad.tolist()} "
            f"(max {np.max(khat):.2f}): the weighted estimates are unreliable. Use more "
            "particles, more annealing stages (num_warmup) or a higher target_ess."
        )
    messages.extend(
        m for m in tree["sample_stats"].attrs.get("run_report", "").split("\n") if m
    )
    if warn:
        for m in messages:
            warnings.warn(m, UserWarning, stacklevel=2)
    out = WeightedSummary(table, runs, log_z_mean, log_z_se, messages)
    out.num_particles = num_particles
    return out


def print_summary(data, var_names=None, *, step=-1, ci_prob=None, rng_key=None):
    """Print the weighted summary: the replacement for ``mcmc.print_summary()``, which would
    list every particle as a separate variable. Returns the :class:`WeightedSummary`."""
    result = summary(data, var_names, step=step, ci_prob=ci_prob, rng_key=rng_key, warn=False)
    print(result)
    return result


__all__ = [
    "WeightedSummary",
    "kish_ess",
    "pareto_khat",
    "print_summary",
    "summary",
    "weighted_quantile",
]
