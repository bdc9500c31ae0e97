"""RBM training throughput against scikit-learn's ``BernoulliRBM`` and the GEMM floor.

For each size (``784x500`` on random binary data shaped like MNIST, ``64x16`` on binarised
scikit-learn digits) and each method (this package's ``jarzynski``, ``pcd``, ``cd``; scikit-learn's
``BernoulliRBM``, which is PCD), the same number of walkers (= scikit-learn's batch of
persistent chains = the minibatch), one Gibbs sweep per walker per update:

* **sweeps per CPU-second** (walkers × updates / process CPU time) and per wall-second, with
  **compilation excluded**: every JAX configuration runs one untimed chunk first, then the
  timed chunk reuses the compiled program;
* ``jarzynski`` runs with ``log_z="shared"`` (the gradient walkers alone);
  ``jarzynski-crossfit`` with the default cross-fitted running log Z, which adds a witness
  population of the same size (moved and reweighted every update, no gradient): its rate
  counts the gradient walkers' sweeps only, i.e. updates per CPU-second at the same
  minibatch, so it shows what the trustworthy log Z costs;
* the **GEMM floor**: the two matrix products of one sweep (``v W`` and ``h Wᵀ`` for all
  walkers) compiled alone, as sweeps per CPU-second, and each method's throughput as a
  fraction of it.

Threads are matched: the whole process is pinned to one core before JAX starts
(``RBM_BENCH_CORES``, default 1; 0 leaves the affinity alone), Eigen's products are
single-threaded (``XLA_FLAGS``) and NumPy's BLAS is limited to one thread with
``threadpoolctl``, so CPU seconds compare like with like on a shared machine (unpinned, XLA's
runtime used a second thread: 1.7 CPU-seconds per wall-second). Methods are interleaved
repeat by repeat.

    python benchmarks/rbm_vs_sklearn.py [--updates 200] [--repeats 3] [--sizes 784x500,64x16]
                                        [--methods jarzynski,jarzynski-crossfit,pcd,cd]

``--methods`` also takes ``jarzynski-crossfit/k``: the cross-fitted trainer with a witness of
``walkers // k`` walkers (``num_log_z_walkers``; its log-Z accuracy against the witness size
is ``benchmarks/ebm_witness_size.py``).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
# One core for the whole process, set before JAX starts its thread pools. The flag above keeps
# Eigen's matrix products single-threaded, but XLA's CPU runtime still runs independent ops of
# a program on a second thread: unpinned, our runs used 1.7 CPU-seconds per wall-second, so
# "per CPU-second" charged them for a second core that scikit-learn (one BLAS thread) did not
# get. Pinned, every method runs on one core and CPU time equals wall time (checked in the
# output: both columns are printed). RBM_BENCH_CORES=0 leaves the affinity alone.
_CORES = os.environ.get("RBM_BENCH_CORES", "1")

if int(_CORES) > 0 and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(_CORES)])

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from threadpoolctl import threadpool_limits

from numpyro_jarzynski.ebm import EBMTrainer, bernoulli_rbm_model


def data_for(n_v, n_items=4000, seed=0):
    if n_v == 64:
        from sklearn.datasets import load_digits

        return (load_digits().data > 7).astype(np.float32)
    rng = np.random.default_rng(seed)
    p = rng.beta(0.3, 1.5, n_v)  # sparse, MNIST-like pixel frequencies
    return (rng.uniform(size=(n_items, n_v)) < p).astype(np.float32)


class Ours:
    def __init__(self, method, n_v, n_h, data, walkers, updates, lr):
        # "jarzynski": log_z="shared", the gradient walkers only. "jarzynski-crossfit": the
        # default cross-fitted log Z, which also moves and reweights a witness population of
        # the same size.
        # "jarzynski-crossfit/k": a witness of walkers // k (num_log_z_walkers).
        extra = {"log_z": "shared"} if method == "jarzynski" else {}
        if method.startswith("jarzynski-crossfit/"):
            extra = {"num_log_z_walkers": walkers // int(method.split("/")[1])}
        method = "jarzynski" if method.startswith("jarzynski-crossfit") else method
        self.trainer = EBMTrainer(bernoulli_rbm_model(data, n_h), optax.sgd(lr), method=method,
                                  num_walkers=walkers, num_moves=1, num_init_stages=5, **extra)
        self.data, self.walkers, self.updates = jnp.asarray(data), walkers, updates
        self.state = None
        self._chunk()  # init and compile (untimed); later chunks reuse the compiled scan

    def _chunk(self):
        import warnings

        with warnings.catch_warnings():  # short, untuned runs: health warnings are not the point
            warnings.simplefilter("ignore")
            res = self.trainer.run(jax.random.key(0), self.updates, self.data,
                                   batch_size=self.walkers, state=self.state,
                                   progress_bar=False, log_every=self.updates)
        self.state = jax.block_until_ready(res.state)

    def timed(self):
        return self._chunk

    def sweeps(self):
        return self.walkers * self.updates


class Sklearn:
    def __init__(self, n_h, data, walkers, updates, lr):
        from sklearn.neural_network import BernoulliRBM as SkRBM

        self.rbm = SkRBM(n_components=n_h, learning_rate=lr, batch_size=walkers, n_iter=1,
                         random_state=0)
        self.data, self.walkers, self.updates = data, walkers, updates
        self.rng = np.random.default_rng(0)
        self.rbm.partial_fit(data[:walkers])
        self.batches = [data[self.rng.choice(len(data), walkers, replace=False)]
                        for _ in range(updates)]

    def timed(self):
        def run():
            for b in self.batches:
                self.rbm.partial_fit(b)
        return run

    def sweeps(self):
        return self.walkers * self.updates


class Floor:
    """The two products of one block-Gibbs sweep, alone, ``updates`` times in one scan."""

    def __init__(self, n_v, n_h, walkers, updates):
        w = jnp.asarray(np.random.default_rng(0).normal(size=(n_v, n_h)), jnp.float32)
        v = jnp.ones((walkers, n_v), jnp.float32)

        def loop(v):
            def body(v, _):
                h = (v @ w > 0).astype(v.dtype)
                return (h @ w.T > 0).astype(v.dtype), None
            return jax.lax.scan(body, v, None, length=updates)[0]

        self.fn = jax.jit(loop).lower(v).compile()
        self.v, self.walkers, self.updates = v, walkers, updates

    def timed(self):
        return lambda: jax.block_until_ready(self.fn(self.v))

    def sweeps(self):
        return self.walkers * self.updates


def measure(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=200, help="updates per timed chunk")
    p.add_argument("--walkers", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", default="784x500,64x16")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--methods", default="jarzynski,jarzynski-crossfit,pcd,cd",
                   help="our methods to time (scikit-learn and the GEMM floor always run)")
    args = p.parse_args(argv)
    print(f"# rbm_vs_sklearn: walkers {args.walkers}, {args.updates} updates per chunk, best "
          f"of {args.repeats}; compile excluded; NumPy BLAS 1 thread, Eigen 1 thread, process "
          f"pinned to {len(os.sched_getaffinity(0))} of {os.cpu_count()} cores; "
          f"jax {jax.__version__}, {platform.machine()}")
    with threadpool_limits(limits=1):
        for size in args.sizes.split(","):
            n_v, n_h = map(int, size.split("x"))
            data = data_for(n_v)
            runners = {m: Ours(m, n_v, n_h, data, args.walkers, args.updates, args.lr)
                       for m in args.methods.split(",")}
            runners["sklearn"] = Sklearn(n_h, data, args.walkers, args.updates, args.lr)
            runners["gemm floor"] = Floor(n_v, n_h, args.walkers, args.updates)
            best = {m: (np.inf, np.inf) for m in runners}
            for _ in range(args.repeats):  # interleaved: every method once per repeat
                for m, r in runners.items():
                    cpu, wall = measure(r.timed())
                    best[m] = (min(best[m][0], cpu), min(best[m][1], wall))
            rate = {m: runners[m].sweeps() / best[m][0] for m in runners}
            print(f"\n## {n_v} x {n_h}")
            print(f"{'method':18s} {'sweeps/CPU-s':>13s} {'sweeps/wall-s':>14s} "
                  f"{'/ sklearn':>10s} {'/ floor':>8s}")
            for m, r in runners.items():
                wall_rate = r.sweeps() / best[m][1]
                print(f"{m:18s} {rate[m]:13.0f} {wall_rate:14.0f} "
                      f"{rate[m] / rate['sklearn']:10.2f} {rate[m] / rate['gemm floor']:8.2f}")


if __name__ == "__main__":
    main()
