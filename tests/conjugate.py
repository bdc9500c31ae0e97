"""The conjugate model several test files share: ``mu ~ N(0, τ²)``, ``y_i ~ N(mu, σ²)``,
with its exact evidence and posterior."""

import numpy as np
import numpyro
import numpyro.distributions as dist


def normal_mean_model(tau, sigma):
    """The model ``model(y)`` for prior sd ``tau`` and noise sd ``sigma``."""

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, tau))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    return model


def normal_mean_truth(y, tau, sigma):
    """``(log p(y), posterior mean, posterior sd)`` of :func:`normal_mean_model`."""
    y = np.asarray(y, np.float64)
    n = y.size
    prec = 1 / tau**2 + n / sigma**2
    mean = y.sum() / sigma**2 / prec
    log_z = (
        -0.5 * n * np.log(2 * np.pi * sigma**2) - 0.5 * np.log(tau**2 * prec)
        - 0.5 * (np.sum(y**2) / sigma**2 - mean**2 * prec)
    )
    return log_z, mean, prec**-0.5
