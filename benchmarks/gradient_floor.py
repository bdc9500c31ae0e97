"""Cost per gradient of our tempered SMC, in units of the gradient floor (issue 11).

The **floor** is one jitted, ``vmap``-ed ``value_and_grad`` of ``log γ_β`` for all ``N``
particles, timed in this process inside a compiled loop of dependent evaluations (a lone call
of a small model times the dispatch). For each target, ``N`` and move (MALA, ULA,
``HMC(num_steps=L)``, ``UHMC(num_steps=L)``) the script times the compiled per-stage CPU time
of the engine's tempering stage (:func:`numpyro_jarzynski.infer.tempering.smc_step`, driven
directly with a pure-JAX ``evaluate``; ``MCMC.run`` is not involved) and reports

    floors per gradient = (CPU per stage) / (gradients per stage × floor CPU),

next to BlackJAX 1.7's adaptive tempered SMC with inner HMC at the same budget
(``blackjax.inner_kernel_tuning`` with the particles' diagonal inverse mass, the setup of
``smc_vs_blackjax.py``), and the ratio of our CPU per gradient to BlackJAX-HMC's.

Targets (float32):

* ``gauss10``: ``z ~ N(0, I_10)``, four observations ``y_j ~ N(z, I)`` (``smc_vs_blackjax.py``);
* ``logistic``: Bayesian logistic regression on scikit-learn's breast-cancer data, 569
  observations, d = 31 (30 standardised features plus an intercept), ``w ~ N(0, 1)``
  (``smc_vs_blackjax.py`` / ``trust_models.py``).

Budget per stage: BlackJAX-HMC runs ``K`` trajectories of ``L`` leapfrog steps after its
one re-initialising gradient (``K·L + 1`` gradients); ours spends ``K·L``: ``K`` moves of
``L`` steps for HMC and UHMC, ``K·L`` moves for MALA and ULA (our cache holds the prior and
likelihood parts, so a new β costs no gradient). Defaults: gauss10 ``K = 1, L = 4``
(5 gradients, the budget of ``smc_vs_blackjax.py``), logistic ``K = 5, L = 10``
(51 gradients, issue 11's BlackJAX HMC); ``--quick`` uses ``K = 2, L = 5`` on logistic.

Timing rules: every program is compiled ahead of time and called once before it is timed;
each timed call runs ``S`` stages (``fori_loop``) from a fresh initial state of its seed;
methods are interleaved seed by seed and the medians over seeds are reported. CPU time
(``time.process_time``, this process, both cores) is the figure of merit on a shared machine;
wall time is printed beside it.

Breakdown (on unless ``--no-breakdown``; ``--quick``: MALA on gauss10 at N = 1024 only): the moves alone (the kernel's ``step`` ×
``num_moves``, :func:`numpyro_jarzynski.engine.kernels.run_moves`), the engine's move block
(:func:`numpyro_jarzynski.engine.stage.move`: moves plus the per-move jump, reweighting and
resampling check), a stage with no moves (``num_moves = 0``: all per-stage bookkeeping), and
its pieces alone: the β bisection, k-hat, a forced resampling (systematic, sort, gather of
the walkers and the cache), the cross-fitted preconditioner; and one ``N × d`` Gaussian draw
with each PRNG implementation (threefry, rbg, unsafe_rbg).

Run: ``MPLBACKEND=Agg .venv/bin/python benchmarks/gradient_floor.py --quick`` (about two
minutes) or without ``--quick`` (N = 1024 and 10⁵, both targets).
"""

import argparse
import functools
import json
import pathlib
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import blackjax
from smc_vs_blackjax import blackjax_algorithm, gaussian_problem, logistic_problem

from numpyro_jarzynski.engine import kernels as K
from numpyro_jarzynski.engine import path as EP
from numpyro_jarzynski.engine import stage as ES
from numpyro_jarzynski.engine import weights as W
from numpyro_jarzynski.engine.population import Population, resample_if
from numpyro_jarzynski.infer import tempering as T

try:  # the engine's own noise source (absent before issue 11's change)
    from numpyro_jarzynski.engine import noise as Z
except ImportError:
    Z = None

CODEC = T.Codec(lambda z: (z, {}), lambda x, disc: x)


@dataclass(frozen=True)
class NoMove:
    """A move that returns its input (invariant, no gradient): a stage with one of it costs
    the per-stage bookkeeping plus one move's bookkeeping (jump, statistics)."""

    name = "none"
    invariant = True
    grads_per_move = 0
    max_step = 1.0
    default_target = 0.65

    def default_step(self, dim):
        return 0.5

    def adjusted(self):
        return self

    def step(self, key, x, cache, target, step_size, scale):
        n = x.shape[0]
        return K.MoveResult(x, cache, jnp.zeros(n, x.dtype), jnp.ones(n, x.dtype),
                            jnp.zeros(n, bool))


# ------------------------------------------------------------------------------- timing
def compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile()


def timed(fn, *args):
    """One call: (wall s, CPU s)."""
    w0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - w0, time.process_time() - c0


def chain(fn, reps):
    """``reps`` dependent calls of ``fn(x)`` inside one program: each call's outputs are
    reduced to a scalar that nudges ``x`` (so XLA cannot hoist the call out of the loop)."""

    def run(x):
        def body(_, x):
            out = fn(x)
            s = sum(jnp.sum(jnp.nan_to_num(leaf.astype(jnp.float32), posinf=0.0, neginf=0.0))
                    for leaf in jax.tree.leaves(out))
            return x + 1e-30 * s

        return jax.lax.fori_loop(0, reps, body, x)

    return run


# ------------------------------------------------------------------------------- methods
def grads_of(move, num_moves):
    return num_moves * move.grads_per_move


def our_moves(k_traj, leap):
    """Our four moves at ``K·L`` gradients per stage: ``{name: (move, num_moves)}``."""
    return {"mala": (K.MALA(), k_traj * leap), "ula": (K.ULA(), k_traj * leap),
            f"hmc({leap})": (K.HMC(num_steps=leap), k_traj),
            f"uhmc({leap})": (K.UHMC(num_steps=leap), k_traj)}


class Engine:
    """Our tempering stage on ``problem`` driven directly (no NumPyro model, no MCMC)."""

    def __init__(self, problem, n, move, num_moves, num_stages):
        self.problem, self.n, self.move, self.num_moves = problem, n, move, num_moves
        self.evaluate = EP.split_evaluator(problem.log_prior, problem.log_lik)
        self.config = T.TemperingConfig(move=move, num_moves=num_moves, num_stages=num_stages)
        self.step = functools.partial(T.smc_step, evaluate=self.evaluate, codec=CODEC,
                                      config=self.config)
        self.h = min(move.default_step(problem.dim), move.max_step)
        self.num_stages = num_stages

    def init(self, key):
        k_x, k_s = jax.random.split(key)
        x = self.problem.prior_draws(k_x, self.n)
        cache = self.evaluate(x, {})
        return T.init_state(k_s, x, jnp.zeros(self.n, x.dtype), cache, self.h,
                            self.num_stages, CODEC)

    def stages(self, state):
        return jax.lax.fori_loop(0, self.num_stages, lambda i, s: T.record(*self.step(s)),
                                 state)


def blackjax_runner(problem, n, k_traj, leap, num_stages, target_ess=0.9):
    algo, grads = blackjax_algorithm(problem, "hmc", n, k_traj, leap, target_ess)

    def init(key):
        return algo.init(problem.prior_draws(key, n)), jax.random.fold_in(key, 1)

    def stages(carry):
        state, key = carry

        def body(i, state):
            return algo.step(jax.random.fold_in(key, i), state)[0]

        return jax.lax.fori_loop(0, num_stages, body, state), key

    return init, stages, grads


def floor_runner(problem, n, reps):
    def log_density(z, beta):
        return problem.log_prior(z) + beta * problem.log_lik(z)

    vg = jax.vmap(jax.value_and_grad(log_density), (0, None))

    def run(x):
        def body(_, x):
            _, g = vg(x, 0.5)
            return x + 1e-6 * g

        return jax.lax.fori_loop(0, reps, body, x)

    return run


# ------------------------------------------------------------------------------ breakdown
def breakdown_programs(eng, reps, shared=True):
    """Programs (each a function of one array, looped ``reps`` times) for the pieces of one
    stage, on a population drawn from the prior with random log-weights: the moves of
    ``eng`` alone and in the engine's move block, and (``shared``) the move-independent
    per-stage bookkeeping and the PRNG draws."""
    problem, n, move = eng.problem, eng.n, eng.move
    dim = problem.dim
    key = jax.random.key(7)
    x0 = problem.prior_draws(key, n)
    lw0 = 0.3 * jax.random.normal(jax.random.key(8), (n,))
    cache0 = eng.evaluate(x0, {})
    beta = 0.3
    path = EP.TemperingPath(eng.evaluate)
    target = path.target(beta)(None)
    scale0 = jnp.broadcast_to(jnp.std(x0, axis=0), x0.shape)
    progs = {}

    def rkey(x, seed):
        """A key that depends on the loop carry: a constant key would let XLA fold the
        draws into constants at compile time."""
        return jax.random.fold_in(jax.random.key(seed), x.reshape(-1)[0].astype(jnp.int32))

    def moves_alone(x):  # kernel steps alone (num_moves per stage); the carry is the walkers
        out = K.run_moves(move, rkey(x, 1), x, cache0, target, eng.h, scale0,
                          eng.num_moves)
        return out[0]

    progs[f"{move.name}: moves alone (kernel.step x num_moves)"] = (moves_alone, x0)

    def engine_moves(x):
        pop = Population(x, lw0, jnp.zeros(()))
        out = ES.move(rkey(x, 1), pop, cache0, move, path.target(beta), eng.h, scale0,
                      eng.num_moves, 0.5)
        return out[0].x, out[0].log_weights

    progs[f"{move.name}: engine move block (moves + jump, reweight, resample checks)"] = (
        engine_moves, x0)
    if not shared:
        return progs

    def bisection(lw):
        cess = T._work_cess(lw, path, x0, cache0, 0.2)
        return T.solve_next_beta(cess, jnp.float32(0.2), 0.9, 1e-20)

    progs["beta bisection (solve_next_beta on the work's CESS)"] = (bisection, lw0)
    progs["weight tail record (top-k for the k-hat fitted after the run)"] = (
        W.weight_tail, lw0)

    def forced_resample(lw):
        pop = Population(x0, lw, jnp.zeros(()))
        out = resample_if(rkey(lw, 2), pop, 2.0, "systematic", cache0)
        return out[0].x, out[1]

    progs["resampling (forced: systematic, sort, gather x + cache)"] = (forced_resample, lw0)

    def crossfit(lw):
        pop = Population(x0, lw, jnp.zeros(()))
        return T.crossfit_scale(pop, jnp.ones(dim))

    progs["cross-fitted preconditioner"] = (crossfit, lw0)
    for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
        def draw(x, impl=impl):
            bits = jax.random.bits(rkey(x, 3), (4 if "rbg" in impl else 2,), jnp.uint32)
            k = jax.random.wrap_key_data(bits, impl=impl)
            return jax.random.normal(k, x.shape, x.dtype)

        progs[f"N x d normal draw, {impl}"] = (draw, x0)
    if Z is not None:
        def draw_engine(x):
            return Z.normal(rkey(x, 3), x.shape, x.dtype)

        def bits_engine(x):
            return Z.bits(rkey(x, 3), x.shape).astype(jnp.float32)

        progs["N x d threefry bits, unrolled (engine.noise.bits; = jax.random.bits)"] = (
            bits_engine, x0)
        progs["N x d normal draw, engine.noise.normal (Box-Muller, unrolled threefry)"] = (
            draw_engine, x0)

    def bits_jax(x):
        return jax.random.bits(rkey(x, 3), x.shape, jnp.uint32).astype(jnp.float32)

    progs["N x d threefry bits, jax.random.bits (rolled loop on CPU)"] = (bits_jax, x0)
    progs["N x d reduction alone (the loop's feedback, included above)"] = (
        lambda x: x, x0)
    return progs


# ----------------------------------------------------------------------------------- main
def constant(arg):
    return lambda _key: arg


def measure(target, n, methods, floor_prog, seeds, num_stages, reps, breakdown, log):
    """Interleaved timings of every method for one (target, N)."""
    problem = target["problem"]
    keys = [jax.random.key(1000 + s) for s in range(seeds)]
    progs = {}  # name -> (compiled fn, make_input(seed) -> args, grads per stage, calls/stage)
    t0 = time.perf_counter()
    for name, (move, m) in methods.items():
        eng = Engine(problem, n, move, m, num_stages)
        st = eng.init(keys[0])
        progs[name] = (compiled(eng.stages, st), eng.init, grads_of(move, m), num_stages)
        if breakdown and name in breakdown:
            shared = name == breakdown[0]
            if shared:
                eng0 = Engine(problem, n, NoMove(), 1, num_stages)
                progs["stage with a no-op move (per-stage bookkeeping)"] = (
                    compiled(eng0.stages, eng0.init(keys[0])), eng0.init, 0, num_stages)
            for part, (fn, arg) in breakdown_programs(eng, reps, shared).items():
                progs[part] = (compiled(chain(fn, reps), arg), constant(arg), None, reps)
    bj_init, bj_stages, bj_grads = blackjax_runner(problem, n, target["k"], target["leap"],
                                                   num_stages)
    progs["bj-hmc"] = (compiled(bj_stages, bj_init(keys[0])), bj_init, bj_grads, num_stages)
    x0 = problem.prior_draws(keys[0], n)
    progs["floor"] = (compiled(floor_prog, x0), lambda k: problem.prior_draws(k, n), 1, reps)
    log(f"  (compiled {len(progs)} programs in {time.perf_counter() - t0:.0f} s)")
    inputs = {name: [mk(k) for k in keys] for name, (_, mk, _, _) in progs.items()}
    for name, (fn, _, _, _) in progs.items():  # warm-up call
        jax.block_until_ready(fn(inputs[name][0]))
    cpu = {name: [] for name in progs}
    wall = {name: [] for name in progs}
    for s in range(seeds):  # interleaved, seed by seed
        for name, (fn, _, _, calls) in progs.items():
            w, c = timed(fn, inputs[name][s])
            cpu[name].append(c / calls)
            wall[name].append(w / calls)
    med = {name: (statistics.median(cpu[name]), statistics.median(wall[name]))
           for name in progs}
    return med, {name: g for name, (_, _, g, _) in progs.items()}


def report(label, med, grads, methods, log):
    floor_cpu, floor_wall = med["floor"]
    bj_cpu = med["bj-hmc"][0] / grads["bj-hmc"]
    log(f"\n## {label}: floor {floor_cpu * 1e3:.3f} ms CPU ({floor_wall * 1e3:.3f} ms wall) "
        f"per value_and_grad of all particles")
    log(f"{'method':10s} {'grads':>5s} {'cpu ms/stage':>12s} {'wall ms/stage':>13s} "
        f"{'floors/grad':>11s} {'/bj-hmc per grad':>16s} {'/bj-hmc per stage':>17s}")
    rows = {}
    for name in list(methods) + ["bj-hmc"]:
        c, w = med[name]
        g = grads[name]
        per = c / g / floor_cpu
        rows[name] = {"grads": g, "cpu_ms": c * 1e3, "wall_ms": w * 1e3, "floors": per,
                      "vs_bj_grad": (c / g) / bj_cpu, "vs_bj_stage": c / med["bj-hmc"][0]}
        log(f"{name:10s} {g:5d} {c * 1e3:12.3f} {w * 1e3:13.3f} {per:11.2f} "
            f"{rows[name]['vs_bj_grad']:16.2f} {rows[name]['vs_bj_stage']:17.2f}")
    parts = [k for k in med if grads[k] in (None, 0)]
    if parts:
        log("breakdown (CPU ms per stage or per call; floors = / floor CPU):")
        for k in parts:
            c, w = med[k]
            log(f"  {k:78s} {c * 1e3:9.3f} ms  {c / floor_cpu:6.2f} floors")
    return rows, {k: med[k][0] * 1e3 for k in parts}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="about two minutes: 3 seeds, fewer stages, logistic at K=2, L=5")
    p.add_argument("--targets", default="gauss10,logistic")
    p.add_argument("--particles", default="1024,100000")
    p.add_argument("--seeds", type=int, default=3, help="timed calls per method (default 3)")
    p.add_argument("--no-breakdown", action="store_true")
    p.add_argument("--save", default=None, help="write the medians here (JSON)")
    a = p.parse_args(argv)
    seeds = a.seeds
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    log(f"# gradient_floor: seeds={seeds}, quick={a.quick}, jax {jax.__version__}, "
        f"blackjax {blackjax.__version__}, {jax.devices()[0].platform}, {platform.machine()}, "
        f"default PRNG {jax.config.jax_default_prng_impl}")
    makers = {"gauss10": lambda: {"problem": gaussian_problem(10), "k": 1, "leap": 4},
              "logistic": lambda: {"problem": logistic_problem(None),
                                   "k": 2 if a.quick else 5, "leap": 5 if a.quick else 10}}
    saved = {}
    start = time.perf_counter(), time.process_time()
    for tname in a.targets.split(","):
        target = makers[tname]()
        for n in (int(v) for v in a.particles.split(",")):
            big = n >= 20000
            stages = (1 if a.quick else 2) if big else (5 if a.quick else 10)
            reps = 3 if big else 20
            methods = our_moves(target["k"], target["leap"])
            label = (f"{tname} (d={target['problem'].dim}), N={n}, {stages} stages per call, "
                     f"K={target['k']} x L={target['leap']}")
            log(f"\n# {label}")
            floor = floor_runner(target["problem"], n, reps)
            if a.no_breakdown or (a.quick and (big or tname != "gauss10")):
                parts = ()
            elif a.quick:
                parts = ("mala",)
            else:
                parts = ("mala", f"hmc({target['leap']})")
            med, grads = measure(target, n, methods, floor, seeds, stages, reps, parts, log)
            rows, parts = report(label, med, grads, methods, log)
            saved[f"{tname}/N={n}"] = {"rows": rows, "breakdown_ms": parts,
                                       "floor_ms": med["floor"][0] * 1e3}
    log(f"\n(total {time.perf_counter() - start[0]:.0f} s wall, "
        f"{time.process_time() - start[1]:.0f} s CPU, compilation included)")
    if a.save:
        pathlib.Path(a.save).write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
