"""Plots for weighted SMC populations (matplotlib).

Each function returns the ``Figure`` (it shows inline in a notebook) and, given ``path``,
saves it there. For the equal-weight view (``to_datatree(mcmc, resampled=True)``) every
``arviz_plots`` function applies as well; the weighted plots here need no resampling.
"""

import matplotlib.pyplot as plt
import numpy as np

from numpyro_jarzynski.diagnostics.convert import STAGE_GROUP, to_datatree
from numpyro_jarzynski.diagnostics.summary import (
    KHAT_THRESHOLD,
    _as_tree,
    normalized_weights,
    pareto_khat,
)


def _finish(fig, path):
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def _stages(data):
    if hasattr(data, "sampler"):
        return to_datatree(data)[STAGE_GROUP].to_dataset()
    if hasattr(data, "children") and STAGE_GROUP in data.children:
        return data[STAGE_GROUP].to_dataset()
    raise TypeError(
        f"Expected an MCMC object or a DataTree with a '{STAGE_GROUP}' group (from "
        f"to_datatree), got {type(data).__name__}."
    )


def plot_stages(data, path=None):
    """β schedule, ESS / conditional ESS, and weight k-hat per annealing stage, one line per
    run; resampling events are marked on the ESS panel."""
    ds = _stages(data)
    stage = ds["stage"].values
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for c in ds["chain"].values:
        run = ds.sel(chain=c)
        color = f"C{int(c) % 10}"
        axes[0].plot(stage, run["beta"], color=color, label=f"run {c}")
        axes[1].plot(stage, run["ess"], color=color)
        axes[1].plot(stage, run["cess"], color=color, ls=":")
        res = np.asarray(run["resampled"], bool)
        axes[1].plot(stage[res], np.asarray(run["ess"])[res], "v", color=color, ms=4)
        khat = np.asarray(run["pareto_khat"], float)
        axes[2].plot(stage, np.where(np.isfinite(khat), khat, np.nan), color=color)
    axes[0].set(xlabel="stage", ylabel="β", title="tempering schedule")
    axes[1].set(xlabel="stage", ylabel="normalised ESS", ylim=(0, 1.05),
                title="ESS (solid), CESS (dotted), ▼ resampled")
    axes[2].axhline(KHAT_THRESHOLD, color="k", ls="--", lw=0.8)
    axes[2].set(xlabel="stage", ylabel="k-hat", title="Pareto k-hat of the weights")
    axes[0].legend(fontsize=7)
    return _finish(fig, path)


def plot_log_weights(data, path=None, step=-1, bins=40):
    """Histogram of ``log(N W_i)`` per run (0 = the weight of a uniform population), with the
    run's PSIS k-hat and Kish ESS in the legend."""
    tree = _as_tree(data, step)
    log_w = tree["sample_stats"]["log_weights"].transpose("chain", "draw").values
    n = log_w.shape[1]
    w = normalized_weights(log_w)
    khat = pareto_khat(log_w)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for c in range(log_w.shape[0]):
        alive = w[c] > 0
        ess = 1.0 / np.sum(w[c] ** 2)
        ax.hist(np.log(n * w[c][alive]), bins=bins, histtype="step",
                label=f"run {c}: k-hat {khat[c]:.2f}, ESS {ess:.0f}/{n}")
    ax.set(xlabel="log(N · normalised weight)", ylabel="particles", title="log-weights")
    ax.legend(fontsize=7)
    return _finish(fig, path)


def plot_weighted_marginals(data, var_names=None, path=None, step=-1, bins=40,
                            reference=None, max_panels=12):
    """Weighted histograms of each scalar quantity (runs pooled with equal weight).

    :param reference: optional dict ``{label: callable(x) -> density}`` (labels as in the
        summary table, e.g. ``"mu[0]"``) drawn on top, e.g. an analytic posterior.
    """
    tree = _as_tree(data, step)
    post = tree["posterior"].to_dataset()
    if var_names is not None:
        post = post[[var_names] if isinstance(var_names, str) else list(var_names)]
    log_w = tree["sample_stats"]["log_weights"].transpose("chain", "draw").values
    w = (normalized_weights(log_w) / log_w.shape[0]).ravel()
    panels = []
    for name, da in post.data_vars.items():
        da = da.transpose("chain", "draw", ...)
        flat = da.values.reshape(w.size, -1)
        extra = [d for d in da.dims if d not in ("chain", "draw")]
        labels = [np.asarray(da[d].values) for d in extra]
        for j in range(flat.shape[1]):
            idx = np.unravel_index(j, da.shape[2:]) if extra else ()
            label = name + ("[" + ", ".join(str(l[i]) for l, i in zip(labels, idx)) + "]"
                            if extra else "")
            panels.append((label, flat[:, j]))
    panels = panels[:max_panels]
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (label, x) in zip(axes.ravel(), panels):
        ax.hist(x, bins=bins, weights=w, density=True, alpha=0.6, label="weighted")
        if reference and label in reference:
            grid = np.linspace(x.min(), x.max(), 200)
            ax.plot(grid, reference[label](grid), "k", lw=1.2, label="reference")
            ax.legend(fontsize=7)
        ax.set_title(label, fontsize=9)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    return _finish(fig, path)


_TRAINING_KEYS = ("cross_entropy", "log_z", "log_normalizer", "ess")


def plot_training_history(history, path=None, x_key="iteration"):
    """Curves of an EBM training run against iterations.

    :param history: a mapping (or NamedTuple) of 1-D arrays of equal length, e.g.
        ``{"cross_entropy": ..., "log_z": ..., "ess": ...}``; ``x_key`` (default
        ``"iteration"``) gives the x axis if present. Every other 1-D numeric entry gets a
        panel; the known ones (cross-entropy, log Z, ESS) come first.
    """
    if hasattr(history, "_asdict"):
        history = history._asdict()
    if not hasattr(history, "items"):
        raise TypeError(
            "plot_training_history expects a dict (or NamedTuple) of 1-D arrays, e.g. "
            f"{{'cross_entropy': ..., 'log_z': ..., 'ess': ...}}; got {type(history).__name__}."
        )
    series = {k: np.asarray(v) for k, v in history.items() if k != x_key}
    series = {k: v for k, v in series.items() if v.ndim == 1 and np.issubdtype(v.dtype, np.number)}
    if not series:
        raise ValueError("The history has no 1-D numeric entries to plot.")
    lengths = {len(v) for v in series.values()}
    if len(lengths) != 1:
        sizes = {k: len(v) for k, v in series.items()}
        raise ValueError(f"History entries must have equal lengths, got {sizes}.")
    order = [k for k in _TRAINING_KEYS if k in series] + sorted(
        k for k in series if k not in _TRAINING_KEYS
    )
    x = np.asarray(history[x_key]) if x_key in history else np.arange(lengths.pop())
    fig, axes = plt.subplots(1, len(order), figsize=(3.6 * len(order), 3.2), squeeze=False)
    for ax, k in zip(axes[0], order):
        ax.plot(x, series[k])
        ax.set(xlabel=x_key, title=k.replace("_", " "))
    return _finish(fig, path)


__all__ = ["plot_log_weights", "plot_stages", "plot_training_history", "plot_weighted_marginals"]
