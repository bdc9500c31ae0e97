"""ArviZ diagnostics for weighted SMC populations: conversion, weighted summary, plots."""

from numpyro_jarzynski.diagnostics.convert import (
    population,
    posterior_samples,
    run_health,
    stage_dataset,
    to_datatree,
)
from numpyro_jarzynski.diagnostics.plots import (
    plot_log_weights,
    plot_stages,
    plot_training_history,
    plot_weighted_marginals,
)
from numpyro_jarzynski.diagnostics.summary import (
    WeightedSummary,
    kish_ess,
    pareto_khat,
    print_summary,
    summary,
    weighted_quantile,
)

__all__ = [
    "WeightedSummary",
    "kish_ess",
    "pareto_khat",
    "plot_log_weights",
    "plot_stages",
    "plot_training_history",
    "plot_weighted_marginals",
    "population",
    "posterior_samples",
    "print_summary",
    "run_health",
    "stage_dataset",
    "summary",
    "to_datatree",
    "weighted_quantile",
]
