"""RBM training throughput and final exact test log-likelihood: this package (Jarzynski, PCD,
CD-1; JAX) against scikit-learn's ``BernoulliRBM`` (PCD, NumPy) on binarised digits, same
number of hidden units (16), updates, walkers (= sklearn's batch of persistent chains) and
Gibbs sweeps. Throughput = Gibbs sweeps per second summed over walkers (compile included for
JAX, reported separately as the second-run time too).

    python benchmarks/rbm_vs_sklearn.py [--steps 3000]
"""

import argparse
import pathlib
import sys
import time

import jax.numpy as jnp
import numpy as np
from sklearn.neural_network import BernoulliRBM as SkRBM

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
from rbm_digits import exact_log_likelihood, load_data, train


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    train_x, test_x = load_data()
    batch = 100
    rows = []
    for method in ("jarzynski", "pcd", "cd"):
        r = train(method, train_x, test_x, args.steps, args.steps // 2, num_walkers=batch,
                  batch_size=batch)
        rows.append((f"numpyro_jarzynski {method}", r["curve"][-1], r["sweeps_per_s"], r["seconds"]))
    # scikit-learn: one epoch = 15 minibatch updates of 100; n_iter epochs ≈ args.steps updates.
    epochs = max(1, args.steps * batch // train_x.shape[0])
    sk = SkRBM(n_components=16, learning_rate=0.05, batch_size=batch, n_iter=epochs, random_state=0)
    t0 = time.time()
    sk.fit(np.asarray(train_x))
    secs = time.time() - t0
    params = {"W": jnp.asarray(sk.components_.T, jnp.float32),
              "b": jnp.asarray(sk.intercept_visible_, jnp.float32),
              "c": jnp.asarray(sk.intercept_hidden_, jnp.float32)}
    n_updates = epochs * int(np.ceil(train_x.shape[0] / batch))
    rows.append(("sklearn BernoulliRBM (PCD)", float(exact_log_likelihood(params, test_x)),
                 n_updates * batch / secs, secs))
    print(f"{'method':32s} {'test log-lik':>12s} {'sweeps/s':>10s} {'seconds':>8s}")
    for name, ll, sps, secs in rows:
        print(f"{name:32s} {ll:12.3f} {sps:10.0f} {secs:8.1f}")


if __name__ == "__main__":
    main()
