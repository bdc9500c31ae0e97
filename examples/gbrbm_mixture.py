"""Gaussian–Bernoulli RBM with 2 hidden units on 2-D data from an unequal-weight mixture.

The visible marginal of a GB-RBM with 2 hidden units is a 4-component Gaussian mixture with
means ``b + σ⊙Wh``, so log Z and the learned mixture weights are exact. Data: unit-variance
components at (0, 0), (4, 0), (0, 4) with masses 0.5, 0.3, 0.2.

    MPLBACKEND=Agg python examples/gbrbm_mixture.py [--steps 1500]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from jax.scipy.special import logsumexp

from numpyro_jarzynski.ebm import EBMTrainer, GaussianBernoulliRBM

MEANS = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
MASSES = np.array([0.5, 0.3, 0.2])


def sample_data(key, n):
    k0, k1 = jax.random.split(key)
    z = jax.random.choice(k0, 3, (n,), p=jnp.asarray(MASSES))
    return jnp.asarray(MEANS)[z] + jax.random.normal(k1, (n, 2))


def true_log_lik(x):
    comp = -0.5 * jnp.sum((x[:, None] - MEANS) ** 2, -1) - jnp.log(2 * jnp.pi)
    return jnp.mean(logsumexp(comp + jnp.log(MASSES), -1))


def model(v):
    W = numpyro.param("W", jnp.array([[1.0, 0.1], [0.1, 1.0]]))
    b = numpyro.param("b", jnp.array([0.5, 0.5]))
    c = numpyro.param("c", jnp.zeros(2))
    with numpyro.plate("data", v.shape[0]):
        numpyro.sample("v", GaussianBernoulliRBM(W, b, c), obs=v)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    train = sample_data(jax.random.key(0), 5000)
    test = sample_data(jax.random.key(1), 5000)
    print(f"true mixture: test log-lik {float(true_log_lik(test)):.3f}, masses {MASSES}")
    for method in ("jarzynski", "pcd", "cd"):
        t0 = time.time()
        trainer = EBMTrainer(model, optax.adam(0.02), method=method, num_walkers=1000,
                             num_moves=1, step_size=0.05, num_init_stages=50)
        res = trainer.run(jax.random.key(2), args.steps, train, batch_size=200, progress_bar=False)
        rbm = GaussianBernoulliRBM(res.params["W"], res.params["b"], res.params["c"])
        log_w, means = rbm.mixture()
        ll = float(jnp.mean(-rbm.free_energy(test)) - rbm.log_partition())
        order = np.argsort(-np.asarray(log_w))
        print(f"{method:10s} exact test log-lik {ll:.3f}  running log Z "
              f"{float(res.history['log_z'][-1]):.3f} exact {float(rbm.log_partition()):.3f}")
        for j in order:
            print(f"    mass {float(jnp.exp(log_w[j])):.3f} at {np.round(np.asarray(means[j]), 2)}")
        print(f"    [{time.time() - t0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
