"""A neural energy (an equinox MLP registered with ``numpyro.contrib.module.eqx_module``) fitted
to scikit-learn's 8×8 digits by ``EBMTrainer`` with Crooks-weighted ULA walkers, against the
same network fitted by PCD at the same budget.

Data: the 1797 digits (pixel values 0–16), dequantised (``x + u``, ``u ~ U(0, 1)``) and
standardised per pixel, split 1500 train / 297 test. Density: ``log γ_θ(x) = log N(x; 0, I) −
U_θ(x)`` with ``U_θ`` a 64 → 128 → 128 → 1 MLP (``include_base=True``), so ``Z_θ`` is finite for
any θ with a bounded-below energy and the annealing starts from the base.

What it reports, per method, at equal updates, walkers, ULA moves and step:

* the cross-entropy on the test images, ``H = log Z_θ − mean log γ_θ(x_test)`` (nats per
  image), with ``log Z_θ`` from a fresh annealing (``EBMTrainer.init`` of a ``jarzynski``
  trainer at the final parameters, ``--eval-stages`` stages) for both methods;
* for Jarzynski training also the running ``log Z`` that the walkers' weights carry (free
  during training) against that fresh estimate.

    MPLBACKEND=Agg python examples/neural_energy_digits.py            # a few minutes on 2 cores

Saves ``examples/figures/neural_energy_digits.png`` (walkers of both methods and test
cross-entropy curves). Needs equinox (``pip install -e '.[dev]'`` or the ``neural`` extra).
"""

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro import handlers
from numpyro.contrib.module import eqx_module

from numpyro_jarzynski.ebm import EBMTrainer, EnergyDistribution

FIGURES = pathlib.Path(__file__).parent / "figures"


def load_digits_continuous(seed=0):
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    x = load_digits().data.astype(np.float32)
    x = x + rng.uniform(size=x.shape).astype(np.float32)  # dequantise: continuous in [0, 17)
    mean, sd = x.mean(0), x.std(0)
    z = (x - mean) / sd
    perm = rng.permutation(len(z))
    return jnp.asarray(z[perm[:1500]]), jnp.asarray(z[perm[1500:]]), (mean, sd)


def make_network(seed=0, width=128):
    try:
        import equinox as eqx
    except ImportError as e:  # pragma: no cover
        raise SystemExit("this example needs equinox: pip install -e '.[dev]'") from e
    return eqx.nn.MLP(64, "scalar", width, depth=2, activation=jax.nn.softplus,
                      key=jax.random.key(seed))


def make_model(network):
    base = dist.Normal(0.0, 1.0).expand([64]).to_event(1)

    def model(x):
        net = eqx_module("energy", network)
        energy = lambda v: jax.vmap(net)(v.reshape(-1, 64)).reshape(v.shape[:-1])
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", EnergyDistribution(energy, base, include_base=True), obs=x)

    return model


def fresh_log_z(model, params, data, args, seed):
    """``log Z_θ`` by annealing from the base to θ (a ``jarzynski`` trainer's ``init`` at the
    given parameters)."""
    fixed = handlers.substitute(model, data=params)
    tr = EBMTrainer(fixed, optax.sgd(0.0), method="jarzynski", num_walkers=args.eval_walkers,
                    num_moves=args.moves, step_size=args.step, num_init_stages=args.eval_stages)
    st = tr.init(jax.random.key(seed), data)
    from numpyro_jarzynski.engine import weights as W

    return float(st.log_z_banked + W.log_mean_exp(st.log_weights))


def log_gamma(model, params, x):
    tr = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=params)).get_trace(x)
    fn = tr["x"]["fn"]
    while not hasattr(fn, "unnormalized_log_prob"):  # the plate's ExpandedDistribution
        fn = fn.base_dist
    return fn.unnormalized_log_prob(x)


def run(method, model, train, test, args):
    trainer = EBMTrainer(model, optax.adam(args.lr), method=method, num_walkers=args.walkers,
                         num_moves=args.moves, step_size=args.step,
                         num_init_stages=args.init_stages)
    state, rows, cpu = None, [], 0.0
    chunk = args.updates // args.checkpoints
    for i in range(args.checkpoints):
        c0 = time.process_time()
        res = trainer.run(jax.random.key(args.seed), chunk, train, batch_size=args.batch,
                          state=state, progress_bar=False, log_every=chunk)
        cpu += time.process_time() - c0
        state = res.state
        raw = {"energy$params": res.state.params["energy$params"]}
        log_z = fresh_log_z(model, raw, train, args, 1000 + i)
        h_test = log_z - float(jnp.mean(log_gamma(model, raw, test)))
        row = {"update": (i + 1) * chunk, "log_z_fresh": log_z, "h_test": h_test,
               "log_z_running": float(res.history["log_z"][-1]),
               "h_train_running": float(res.history["cross_entropy"][-1])}
        rows.append(row)
        print(f"  {method:9s} update {row['update']:5d}: test cross-entropy {h_test:8.2f}  "
              f"log Z fresh {log_z:8.2f}  running {row['log_z_running']:8.2f}", flush=True)
    return {"rows": rows, "walkers": np.asarray(res.state.walkers),
            "log_weights": np.asarray(res.state.log_weights), "cpu": cpu,
            "problems": res.problems}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=2000)
    p.add_argument("--checkpoints", type=int, default=4)
    p.add_argument("--walkers", type=int, default=512)
    p.add_argument("--moves", type=int, default=10)
    p.add_argument("--step", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--init-stages", type=int, default=100)
    p.add_argument("--eval-stages", type=int, default=300)
    p.add_argument("--eval-walkers", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    train, test, (mean, sd) = load_digits_continuous()
    network = make_network()
    model = make_model(network)
    print(f"digits: {train.shape[0]} train / {test.shape[0]} test, MLP energy 64-128-128-1 "
          f"(equinox via eqx_module), {args.walkers} ULA walkers x {args.moves} moves at "
          f"h = {args.step}, {args.updates} Adam updates (lr {args.lr}, batch {args.batch})",
          flush=True)
    results = {m: run(m, model, train, test, args) for m in ("jarzynski", "pcd")}
    print("\nmethod     test cross-entropy   log Z fresh   running log Z   train CPU s")
    for m, r in results.items():
        last = r["rows"][-1]
        print(f"{m:9s} {last['h_test']:12.2f}   {last['log_z_fresh']:12.2f}   "
              f"{last['log_z_running']:12.2f}   {r['cpu']:10.1f}")
        for prob in r["problems"]:
            print(f"  [{m}] warned: {prob[:160]}")
    plot(results, mean, sd)
    return results


def plot(results, mean, sd):
    import matplotlib.pyplot as plt

    FIGURES.mkdir(exist_ok=True)
    fig = plt.figure(figsize=(12, 4.2))
    for r_i, (m, r) in enumerate(results.items()):
        order = np.argsort(-r["log_weights"])[:8]  # the heaviest walkers
        for j, idx in enumerate(order):
            ax = fig.add_subplot(2, 12, r_i * 12 + j + 1)
            img = np.clip(r["walkers"][idx] * sd + mean, 0, 17).reshape(8, 8)
            ax.imshow(img, cmap="gray_r", vmin=0, vmax=17)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(m, fontsize=8)
    ax = fig.add_subplot(1, 3, 3)
    for m, r in results.items():
        ax.plot([row["update"] for row in r["rows"]], [row["h_test"] for row in r["rows"]],
                marker="o", label=f"{m}: test cross-entropy")
    jr = results["jarzynski"]["rows"]
    ax.plot([row["update"] for row in jr], [row["log_z_running"] - row["log_z_fresh"]
                                             for row in jr], ls=":", label="running − fresh log Z")
    ax.set_xlabel("update")
    ax.set_ylabel("nats / image")
    ax.legend(fontsize=7)
    fig.savefig(FIGURES / "neural_energy_digits.png", dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
