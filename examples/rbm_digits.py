"""Bernoulli RBM (16 hidden units) on binarised scikit-learn digits: exact test
log-likelihood (log Z by enumerating the 2^16 hidden states) for Jarzynski-weighted training,
CD-1 and PCD at the same number of Gibbs sweeps (one sweep per walker per update).

    MPLBACKEND=Agg python examples/rbm_digits.py [--steps 3000]
"""

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

from numpyro_jarzynski.ebm import BernoulliRBM, EBMTrainer, bernoulli_rbm_model

N_HIDDEN = 16


def load_data(seed=0):
    x = (load_digits().data > 7).astype(np.float32)
    perm = np.random.default_rng(seed).permutation(len(x))
    return jnp.asarray(x[perm[:1500]]), jnp.asarray(x[perm[1500:]])


def make_model(train):
    return bernoulli_rbm_model(train, N_HIDDEN)


@jax.jit
def exact_log_likelihood(params, v):
    rbm = BernoulliRBM(params["W"], params["b"], params["c"])
    return jnp.mean(-rbm.free_energy(v)) - rbm.log_partition()


def train(method, train_x, test_x, steps, chunk, num_walkers=500, lr=0.01, batch_size=100, seed=0):
    trainer = EBMTrainer(make_model(train_x), optax.adam(lr), method=method,
                         num_walkers=num_walkers, num_moves=1, num_init_stages=50)
    state, curve, running = None, [], []
    t0 = time.time()
    for _ in range(steps // chunk):
        res = trainer.run(jax.random.key(seed), chunk, train_x, batch_size=batch_size, state=state,
                          progress_bar=False, log_every=chunk)
        state = res.state
        curve.append(float(exact_log_likelihood(res.params, test_x)))
        running.append(float(res.history["log_z"][-1]))
    elapsed = time.time() - t0
    rbm = BernoulliRBM(res.params["W"], res.params["b"], res.params["c"])
    return {"curve": curve, "log_z_running": running[-1], "log_z_exact": float(rbm.log_partition()),
            "seconds": elapsed, "sweeps_per_s": steps * num_walkers / elapsed, "params": res.params}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--chunk", type=int, default=150)
    args = parser.parse_args()
    train_x, test_x = load_data()
    results = {}
    for method in ("jarzynski", "pcd", "cd"):
        r = train(method, train_x, test_x, args.steps, args.chunk)
        results[method] = r
        print(f"{method:10s} exact test log-lik {r['curve'][-1]:.3f} nats/image  running log Z "
              f"{r['log_z_running']:.3f} exact {r['log_z_exact']:.3f}  [{r['seconds']:.0f} s]", flush=True)

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, r in results.items():
        its = np.arange(1, len(r["curve"]) + 1) * args.chunk
        ax.plot(its, r["curve"], label=method if method != "cd" else "CD-1")
    ax.set_xlabel("update (one Gibbs sweep per walker each)")
    ax.set_ylabel("exact test log-likelihood (nats)")
    ax.set_title("Bernoulli RBM, 16 hidden units, binarised digits")
    ax.legend()
    out = pathlib.Path(__file__).parent / "figures"
    out.mkdir(exist_ok=True)
    fig.savefig(out / "rbm_digits.png", dpi=120, bbox_inches="tight")
    return results


if __name__ == "__main__":
    main()
