"""How small can the cross-fitted trainer's witness population be? Running-log-Z error and cost.

``EBMTrainer(log_z="crossfit")`` moves and reweights a second, *witness* population of
``num_log_z_walkers`` walkers every update (default: as many as the gradient's). It is what
keeps the running log Z unbiased, and it is also what makes the default trainer slower than
``log_z="shared"`` (``benchmarks/rbm_vs_sklearn.py``). This script measures the trade-off on
the digits RBM (binarised scikit-learn digits, 16 hidden units, exact log Z by enumerating
the 2^16 hidden states at every checkpoint), for several witness sizes at a fixed gradient
population, with several independent runs per size (vmapped through one compiled program):

* the error of the running log Z against exact at every checkpoint: the largest over the run
  and the runs, and at the end its mean (bias) and sd over runs;
* the CPU time per update of the whole trainer (compilation excluded: one untimed chunk
  first), the sizes interleaved chunk by chunk.

    python benchmarks/ebm_witness_size.py [--walkers 500] [--witness 500,250,100] [--runs 4]
                                          [--updates 1500] [--chunk 300] [--optimizer adam]
"""

import argparse
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from numpyro_jarzynski.ebm import BernoulliRBM, EBMTrainer, bernoulli_rbm_model

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
from rbm_digits import load_data  # the example's data: 1500 train images


@jax.jit
@jax.vmap
def exact(params):
    rbm = BernoulliRBM(params["W"], params["b"], params["c"])
    return rbm.log_partition()


def log_z_error(trainer, states):
    """The witness's running log Z minus the exact log Z, per run."""
    running = jax.vmap(lambda w: w.log_evidence)(states.witness)
    return np.asarray(running - exact(jax.vmap(trainer.constrain)(states.params)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--walkers", type=int, default=500, help="gradient walkers")
    p.add_argument("--witness", default="500,250,100", help="witness sizes to compare")
    p.add_argument("--runs", type=int, default=4, help="independent runs per size")
    p.add_argument("--updates", type=int, default=1500)
    p.add_argument("--chunk", type=int, default=300, help="updates between checkpoints")
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--lr", type=float, default=None, help="default: Adam 0.01, SGD 0.1")
    args = p.parse_args(argv)
    lr = args.lr or (0.01 if args.optimizer == "adam" else 0.1)
    opt = optax.adam(lr) if args.optimizer == "adam" else optax.sgd(lr)
    train, _ = load_data()
    model = bernoulli_rbm_model(train, args.hidden)
    sizes = [int(s) for s in args.witness.split(",")]
    print(f"# ebm_witness_size: digits RBM {train.shape[1]}x{args.hidden}, {args.walkers} "
          f"gradient walkers, {args.optimizer} {lr}, batch 100, {args.runs} runs per size, "
          f"{args.updates} updates; jax {jax.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    setups = {}
    for n in sizes:
        tr = EBMTrainer(model, opt, num_walkers=args.walkers, num_log_z_walkers=n,
                        num_init_stages=20)
        keys = jax.random.split(jax.random.key(0), args.runs)
        states = jax.tree.map(lambda *a: jnp.stack(a), *[tr.init(k, train) for k in keys])
        run = jax.jit(jax.vmap(lambda s, tr=tr: tr.steps(s, train, args.chunk, 100)))
        run = run.lower(states).compile()
        setups[n] = {"trainer": tr, "run": run, "states": states,
                     "errs": [log_z_error(tr, states)], "cpu": 0.0}
    for _ in range(args.updates // args.chunk):  # sizes interleaved chunk by chunk
        for n, s in setups.items():
            c0 = time.process_time()
            s["states"], _ = jax.block_until_ready(s["run"](s["states"]))
            s["cpu"] += time.process_time() - c0
            s["errs"].append(log_z_error(s["trainer"], s["states"]))
    base = None
    print(f"\n{'witness':>8s} {'max |err|':>10s} {'end bias':>9s} {'end sd':>7s} "
          f"{'CPU ms/update/run':>18s} {'/ full witness':>15s}")
    for n, s in setups.items():
        e = np.stack(s["errs"])  # (checkpoint, run)
        ms = 1e3 * s["cpu"] / (args.updates // args.chunk * args.chunk) / args.runs
        base = base or ms
        print(f"{n:8d} {np.abs(e).max():10.3f} {e[-1].mean():+9.3f} {e[-1].std(ddof=1):7.3f} "
              f"{ms:18.3f} {ms / base:15.2f}")
        print(f"{'':8s} error per checkpoint (rows) and run: "
              + "; ".join(" ".join(f"{v:+.2f}" for v in row) for row in e))


if __name__ == "__main__":
    main()
