"""Discrete sites: plate blocks vs coordinate sweeps.

Targets:

* ``toy``: NumPyro's toy mixture example (``examples/toy_mixture_model_discrete_enumeration.py``),
  without enumeration marks: ``p_A ~ Beta(1, 1)``, ``p_B, p_C ~ Beta(1, 1)`` (2 each), and in
  a data plate of n elements ``A ~ Bernoulli(p_A)`` (observed), ``B ~ Bernoulli(p_B[A])``
  (discrete latent, one per observation), ``C ~ Bernoulli(p_C[B])`` (observed). Data from the
  example's ``generate_data`` (seed 0) at n = 200, 800, 10 000.
* ``gmm``: NumPyro's GMM tutorial model (data [0, 1, 10, 11, 12], K = 2), reference
  log Z = -17.1255, exact (``gmm_exact_log_z``: the 2^5 assignments summed, weights and
  locations integrated in closed form, the scale by quadrature; importance sampling on the
  marginalised model gave -17.1326).

Reference log Z of ``toy``: ``log p(A) = log B(1 + ΣA, 1 + n − ΣA)`` exactly, plus the log
evidence of the marginal model (B summed out: ``C_i | A_i ~ Bernoulli(q_{A_i})`` with
``q_a = p_B[a] p_C[1] + (1 − p_B[a]) p_C[0]``), which depends on the data only through the
four counts ``n_{ac}``. It is computed by importance sampling in logit space with a Student-t
(ν = 5) proposal fitted to NUTS on the marginal model (mean, covariance × 1.5).

The marginal model is exactly symmetric under relabelling B (``p_B → 1 − p_B``, swap
``p_C[0] ↔ p_C[1]``: ``q_a`` and the uniform priors are unchanged), so the posterior has two
mirror modes of equal mass. NUTS stays in one; the proposal is the equal mixture of the
fitted t and its mirror image (exact whatever the overlap), and posterior means are reported
folded onto the mode of the generating parameters (``p_C[0] > p_C[1]``).

Subcommands (``python benchmarks/discrete_mixture.py CMD``):

* ``reference``: NUTS + importance sampling, cached in ``discrete_mixture_reference.json``;
* ``cost``: time of one Gibbs sweep alone (plate block / coordinate sweep) vs n;
* ``toy``: ``JarzynskiSMC(model, num_particles=1000, move=[MALA(), Gibbs(...)])``, configs
  ``collapsed:n`` (B summed out of the path, the default ``Gibbs()``), ``plate:n`` /
  ``coordinate:n`` (B sampled along the path: ``collapse=False``);
* ``gmm``: the GMM settings (a)–(p) (``--gmm`` picks them: ``i`` is the schedule before ``budget_fill``), with the moves' renewal of the log likelihood below and from β = 0.5.

SMC timings: the kernel's own ``init`` + ``sample`` loop (what ``MCMC.run`` runs, chains
vmapped as with ``chain_method="vectorized"``) is compiled ahead of time with
``jax.jit(loop).lower(keys).compile()``, so compile and run are timed separately; the run's
warnings come from ``numpyro_jarzynski.infer.report.report_run`` on the final state (the
function ``MCMC.run`` calls after its loop).
"""

import argparse
import json
import math
import pathlib
import sys
import time
import warnings

HERE = pathlib.Path(__file__).parent
REF_PATH = HERE / "discrete_mixture_reference.json"
NS = (200, 800, 10_000)


def generate_data(num_obs):
    """The example's generate_data, seeded with PRNGKey(0) as in its main()."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro import handlers

    def gen(num_obs):
        prior = {
            "A": jnp.array([1.0, 10.0]),
            "B": jnp.array([[10.0, 1.0], [1.0, 10.0]]),
            "C": jnp.array([[10.0, 1.0], [1.0, 10.0]]),
        }
        cpds = {
            "p_A": numpyro.sample("p_A", dist.Beta(prior["A"][0], prior["A"][1])),
            "p_B": numpyro.sample("p_B", dist.Beta(prior["B"][:, 0], prior["B"][:, 1])),
            "p_C": numpyro.sample("p_C", dist.Beta(prior["C"][:, 0], prior["C"][:, 1])),
        }
        data = {"A": numpyro.sample("A", dist.Bernoulli(jnp.ones(num_obs) * cpds["p_A"]))}
        data["B"] = numpyro.sample("B", dist.Bernoulli(cpds["p_B"][data["A"]]))
        data["C"] = numpyro.sample("C", dist.Bernoulli(cpds["p_C"][data["B"]]))
        return cpds, data

    return handlers.seed(gen, jax.random.PRNGKey(0))(num_obs)


def toy_model(obs_A, obs_C):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    n = obs_A.shape[0]
    p_A = numpyro.sample("p_A", dist.Beta(1.0, 1.0))
    p_B = numpyro.sample("p_B", dist.Beta(jnp.ones(2), jnp.ones(2)).to_event(1))
    p_C = numpyro.sample("p_C", dist.Beta(jnp.ones(2), jnp.ones(2)).to_event(1))
    with numpyro.plate("data_plate", n):
        A = numpyro.sample("A", dist.Bernoulli(p_A), obs=obs_A)
        B = numpyro.sample("B", dist.Bernoulli(p_B[A]))
        numpyro.sample("C", dist.Bernoulli(p_C[B]), obs=obs_C)


def counts(data):
    import numpy as np

    a, c = np.asarray(data["A"]).astype(int), np.asarray(data["C"]).astype(int)
    return np.array([[np.sum((a == i) & (c == j)) for j in (0, 1)] for i in (0, 1)])


# ----------------------------------------------------------------------------- reference
def reference(num_draws=4_000_000, batch=1_000_000, seed=0):
    import jax

    # The data first, in the default float32 mode the SMC runs use: with x64 enabled the
    # same PRNG key draws different data (an earlier version of this reference did, and was
    # the evidence of other data sets: 30-140 nats away).
    datasets = {n: generate_data(n) for n in NS}
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    from jax.scipy.special import betaln
    from numpyro.infer import MCMC, NUTS

    out = {}
    for n in NS:
        cpds, data = datasets[n]
        nac = counts(data)
        n_a = nac.sum(axis=1)
        sum_a = int(n_a[1])
        log_pa = float(betaln(1.0 + sum_a, 1.0 + n - sum_a) - betaln(1.0, 1.0))
        nac_j = jnp.asarray(nac, jnp.float64)

        def log_lik(p_b, p_c):  # (..., 2), (..., 2)
            q = p_b * p_c[..., 1:2] + (1 - p_b) * p_c[..., 0:1]  # (..., 2): q_a
            return jnp.sum(nac_j[:, 1] * jnp.log(q) + nac_j[:, 0] * jnp.log1p(-q), axis=-1)  # noqa: B023 (used within the iteration)

        def marginal():
            p_b = numpyro.sample("p_B", dist.Beta(jnp.ones(2), jnp.ones(2)).to_event(1))
            p_c = numpyro.sample("p_C", dist.Beta(jnp.ones(2), jnp.ones(2)).to_event(1))
            numpyro.factor("lik", log_lik(p_b, p_c))

        mcmc = MCMC(NUTS(marginal), num_warmup=2000, num_samples=5000, num_chains=4,
                    chain_method="sequential", progress_bar=False)
        mcmc.run(jax.random.key(seed))
        s = mcmc.get_samples(group_by_chain=True)
        pb, pc = np.asarray(s["p_B"]), np.asarray(s["p_C"])  # (chains, draws, 2)
        mode = pc[..., 0] > pc[..., 1]  # True: the generating labelling
        frac_per_chain = mode.mean(axis=1)
        # Fold every draw onto the generating mode (label swap is exact, see module doc).
        pb_f = np.where(mode[..., None], pb, 1 - pb).reshape(-1, 2)
        pc_f = np.where(mode[..., None], pc, pc[..., ::-1]).reshape(-1, 2)
        logit = lambda p: np.log(p) - np.log1p(-p)
        u = np.concatenate([logit(pb_f), logit(pc_f)], axis=1)  # (M, 4)
        mu, cov = u.mean(0), np.cov(u.T) * 1.5
        # Mirror: u_B -> -u_B, swap u_C.
        mirror = np.array([[-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], float)
        t1 = dist.MultivariateStudentT(5.0, jnp.asarray(mu), jnp.linalg.cholesky(cov))
        t2 = dist.MultivariateStudentT(5.0, jnp.asarray(mirror @ mu),
                                       jnp.linalg.cholesky(mirror @ cov @ mirror.T))

        @jax.jit
        def log_w(key):
            k1, k2, k3 = jax.random.split(key, 3)
            pick = jax.random.bernoulli(k1, 0.5, (batch,))
            x = jnp.where(pick[:, None], t1.sample(k2, (batch,)), t2.sample(k3, (batch,)))  # noqa: B023
            log_g = jnp.logaddexp(t1.log_prob(x), t2.log_prob(x)) - jnp.log(2.0)  # noqa: B023
            p = jax.nn.sigmoid(x)
            log_prior = jnp.sum(jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x), axis=-1)
            return log_lik(p[:, :2], p[:, 2:]) + log_prior - log_g

        lw = np.concatenate([np.asarray(log_w(k)) for k in
                             jax.random.split(jax.random.key(seed + 1), num_draws // batch)])
        m = lw.max()
        w = np.exp(lw - m)
        log_z_marg = float(m + np.log(w.mean()))
        se = float(w.std() / (w.mean() * math.sqrt(len(w))))
        ess = float(w.sum() ** 2 / np.sum(w ** 2))
        out[str(n)] = {
            "n": n, "counts_AC": nac.tolist(), "sum_A": sum_a,
            "log_p_A": log_pa, "log_z_marginal": log_z_marg, "log_z": log_pa + log_z_marg,
            "is_se": se, "is_ess": ess, "is_draws": len(w),
            "nuts_mode_fraction_per_chain": frac_per_chain.tolist(),
            "nuts_p_B_mean_folded": pb_f.mean(0).tolist(), "nuts_p_C_mean_folded": pc_f.mean(0).tolist(),
            "nuts_p_B_sd_folded": pb_f.std(0).tolist(), "nuts_p_C_sd_folded": pc_f.std(0).tolist(),
            "true_cpds": {k: np.asarray(v).tolist() for k, v in cpds.items()},
        }
        print(json.dumps(out[str(n)]), flush=True)
    REF_PATH.write_text(json.dumps(out, indent=1) + "\n")
    return out


# ----------------------------------------------------------------------------- SMC runs
def toy_args(n):
    import jax.numpy as jnp

    _, data = generate_data(n)
    return (jnp.asarray(data["A"]), jnp.asarray(data["C"]))


def gmm_model(data):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    k = 2
    weights = numpyro.sample("weights", dist.Dirichlet(0.5 * jnp.ones(k)))
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with numpyro.plate("components", k):
        locs = numpyro.sample("locs", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", len(data)):
        assignment = numpyro.sample("assignment", dist.Categorical(weights))
        numpyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


GMM_DATA = [0.0, 1.0, 10.0, 11.0, 12.0]


def gmm_exact_log_z(data=GMM_DATA, tau=10.0, alpha=0.5, grid=24001):
    """Exact log evidence of ``gmm_model``: the sum over the 2^n assignments of the Dirichlet-
    multinomial term and, per component, the Gaussian marginal of its points
    (``N(0, s²I + τ²11ᵀ)``, closed form), integrated over ``log s ~ N(0, 2²)`` by the
    trapezoid rule on [−14, 10] (the integrand is negligible outside)."""
    import itertools

    import numpy as np
    from scipy.special import betaln, logsumexp

    y = np.asarray(data, np.float64)
    u = np.linspace(-14.0, 10.0, grid)
    s2 = np.exp(2 * u)

    def log_marg(yk):
        n = len(yk)
        if n == 0:
            return np.zeros_like(s2)
        sy, syy = yk.sum(), (yk**2).sum()
        logdet = (n - 1) * np.log(s2) + np.log(s2 + n * tau**2)
        quad = (syy - tau**2 * sy**2 / (s2 + n * tau**2)) / s2
        return -0.5 * (n * np.log(2 * np.pi) + logdet + quad)

    terms = []
    for a in itertools.product([0, 1], repeat=len(y)):
        a = np.array(a)
        n1 = a.sum()
        lw = betaln(alpha + len(y) - n1, alpha + n1) - betaln(alpha, alpha)
        terms.append(lw + log_marg(y[a == 0]) + log_marg(y[a == 1]))
    f = logsumexp(np.stack(terms), axis=0) - 0.5 * (u / 2.0) ** 2 - np.log(2 * np.sqrt(2 * np.pi))
    m = f.max()
    return float(m + np.log(np.trapezoid(np.exp(f - m), u)))


GMM_REF = -17.1255  # gmm_exact_log_z(), rounded


def run_smc(model, args, num_seeds, seed, num_warmup, **kernel_kw):
    """The kernel's init + (num_warmup + 1) x sample loop, chains vmapped, AOT-compiled.

    Returns a dict with the final state, compile / run wall seconds, run CPU seconds and the
    warnings ``report_run`` issues on the final state."""
    import jax
    import jax.numpy as jnp

    from numpyro_jarzynski import JarzynskiSMC
    from numpyro_jarzynski.infer import report

    kernel = JarzynskiSMC(model, **kernel_kw)
    keys = jax.random.split(jax.random.key(seed), num_seeds)

    def loop(keys):
        state = kernel.init(keys, num_warmup, None, args, {})
        return jax.lax.fori_loop(0, num_warmup + 1, lambda i, s: kernel.sample(s, args, {}),
                                 state)

    t0 = time.perf_counter()
    compiled = jax.jit(loop).lower(keys).compile()
    compile_s = time.perf_counter() - t0
    # A new set of keys for the timed run (same shapes: no recompilation).
    keys = jax.random.split(jax.random.key(seed + 1000), num_seeds)
    w0, c0 = time.perf_counter(), time.process_time()
    state = jax.block_until_ready(compiled(keys))
    run_s, cpu_s = time.perf_counter() - w0, time.process_time() - c0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            report.report_run(state, kernel.num_particles, kernel.target_ess,
                              num_chains=num_seeds, num_moves=kernel.num_moves)
        except Exception as e:  # SMCFailure  # noqa: BLE001
            caught.append(type("W", (), {"message": f"FAILURE: {e}"})())
    msgs = [str(w.message)[:200] for w in caught]
    beta = jnp.asarray(state.history.beta)
    beta_one = jnp.argmax(beta >= 1.0, axis=-1) + 1
    return {"state": state, "compile_s": compile_s, "run_s": run_s, "cpu_s": cpu_s,
            "warnings": msgs, "beta_one": [int(b) for b in beta_one]}


def gibbs_sweep_cost(n, blocks, num_particles=1000, repeats=2):
    """Wall / CPU seconds of one Gibbs sweep (the kernel's discrete move, one chain of N
    particles at β = 0.5), compiled ahead of time."""
    import jax
    import jax.numpy as jnp

    from numpyro_jarzynski import MALA, Gibbs, JarzynskiSMC, gibbs_plan

    args = toy_args(n)
    plan = gibbs_plan(toy_model, args, blocks=blocks)
    k = JarzynskiSMC(toy_model, num_particles=num_particles, move=[MALA(), Gibbs(blocks=blocks)])
    state = k.init(jax.random.key(0), 10, None, args, {})
    _, codec, config = k._stage_program(k._model_spec(args, {}), state.z, 10, args, {})
    x, disc = codec.split(state.z)
    move = jax.jit(config.discrete_move)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    compiled = move.lower(key, jnp.float32(0.5), x, disc).compile()
    compile_s = time.perf_counter() - t0
    best_w, best_c = math.inf, math.inf
    for r in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(jax.random.key(2 + r), jnp.float32(0.5), x, disc))
        best_w, best_c = min(best_w, time.perf_counter() - w0), min(best_c, time.process_time() - c0)
    return {"n": n, "blocks": blocks, "plan": plan, "compile_s": compile_s, "wall_s": best_w,
            "cpu_s": best_c}


def cost(ns_plate, ns_coord):
    rows = []
    for blocks, ns in (("plate", ns_plate), ("coordinate", ns_coord)):
        for n in ns:
            r = gibbs_sweep_cost(n, blocks)
            rows.append(r)
            print(json.dumps(r), flush=True)
    return rows


def toy(configs, num_seeds, num_warmup, num_moves, num_particles=1000):
    import numpy as np

    from numpyro_jarzynski import MALA, Gibbs

    ref = json.loads(REF_PATH.read_text())
    for blocks, n in configs:
        args = toy_args(n)
        # "collapsed": B summed out of the tempered path (the default Gibbs()); "plate" and
        # "coordinate": B sampled along the path, as one block or element by element.
        gibbs = (Gibbs() if blocks == "collapsed"
                 else Gibbs(blocks="plate" if blocks == "plate" else "coordinate",
                            collapse=False))
        r = run_smc(toy_model, args, num_seeds, 0, num_warmup, num_particles=num_particles,
                    move=[MALA(), gibbs], num_moves=num_moves)
        st = r.pop("state")
        lz = np.asarray(st.log_evidence)
        w = np.asarray(jax_softmax(st.log_weights))
        # state.z holds unconstrained values: logit for the Beta sites.
        pb, pc = (1 / (1 + np.exp(-np.asarray(st.z[s], np.float64))) for s in ("p_B", "p_C"))
        mode = pc[..., 0] > pc[..., 1]
        pb_f = np.where(mode[..., None], pb, 1 - pb)
        pc_f = np.where(mode[..., None], pc, pc[..., ::-1])
        rf = ref[str(n)]
        out = {
            "blocks": blocks, "n": n, "seeds": num_seeds, "num_warmup": num_warmup,
            "num_moves": num_moves, "log_z": lz.tolist(), "mean": float(lz.mean()),
            "sd": float(lz.std(ddof=1)), "ref": rf["log_z"], "bias": float(lz.mean() - rf["log_z"]),
            "mode_weight": np.sum(w * mode, axis=-1).tolist(),
            "p_B_folded": np.sum(w[..., None] * pb_f, axis=1).mean(0).tolist(),
            "p_C_folded": np.sum(w[..., None] * pc_f, axis=1).mean(0).tolist(),
            "nuts_p_B": rf["nuts_p_B_mean_folded"], "nuts_p_C": rf["nuts_p_C_mean_folded"],
            **r,
        }
        print(json.dumps(out), flush=True)


def jax_softmax(x):
    import jax

    return jax.nn.softmax(x, axis=-1)


def gmm(num_seeds=8, num_particles=2000, num_warmup=100, which="afgh"):
    import jax.numpy as jnp
    import numpy as np

    from numpyro_jarzynski import HMC, MALA, UHMC, Gibbs

    joint = Gibbs(collapse=False)  # the assignments sampled along the path (before 2026-12-02)
    settings = {
        "a": ("defaults (collapsed)", {}),
        "f": ("move=[MALA(), Gibbs(collapse=False)]", {"move": [MALA(), joint]}),
        "g": ("num_moves=5, target_ess=0.99 (collapsed)", {"num_moves": 5, "target_ess": 0.99}),
        "h": ("num_moves=5, target_ess=0.99, Gibbs(collapse=False)",
              {"num_moves": 5, "target_ess": 0.99, "move": [MALA(), joint]}),
        "b": ("move=[Gibbs(), MALA()]", {"move": [Gibbs(), MALA()]}),
        "c": ("target_ess=0.99", {"target_ess": 0.99}),
        "d": ("num_moves=5", {"num_moves": 5}),
        "e": ("move=[UHMC(), Gibbs()]", {"move": [UHMC(), Gibbs()]}),
        "i": ("budget_fill=None (the schedule before 2026-12-03)", {"budget_fill": None}),
        "j": ("budget_fill=0.8", {"budget_fill": 0.8}),
        "k": ('move="auto" (with the collapsed Gibbs draw)', {"move": "auto"}),
        "l": ("num_moves=10 (auto's gradients per stage, without its trials)",
              {"num_moves": 10}),
        "m": ('move=[HMC(), Gibbs()], num_moves=2 (auto\'s gradients per stage)',
              {"move": [HMC(), Gibbs()], "num_moves": 2}),
        "n": ("target_renewal=0.3 (moves per stage from the last stage's renewal, 2 to 20)",
              {"target_renewal": 0.3}),
        "o": ("target_renewal=0.5 (2 to 20 moves per stage)", {"target_renewal": 0.5}),
        "p": ("target_renewal=0.5, max_moves=40", {"target_renewal": 0.5, "max_moves": 40}),
        "q": ("target_renewal=0.8 (2 to 20 moves per stage)", {"target_renewal": 0.8}),
        "r": ("num_moves=4", {"num_moves": 4}),
    }
    args = (jnp.asarray(GMM_DATA),)
    for key in which:
        label, kw = settings[key]
        r = run_smc(gmm_model, args, num_seeds, 0, num_warmup, num_particles=num_particles, **kw)
        st = r.pop("state")
        lz = np.asarray(st.log_evidence)
        w = np.asarray(jax_softmax(st.log_weights))
        # Weighted mass of the one-wide-cluster mode (log σ > 1.2; exact 0.13) and of the
        # labelling loc_0 < loc_1 (exact 0.5), per seed.
        wide = np.sum(w * (np.asarray(st.z["scale"]) > 1.2), axis=-1)
        locs = np.asarray(st.z["locs"])
        order = np.sum(w * (locs[..., 0] < locs[..., 1]), axis=-1)
        # The moves' renewal of the log likelihood per stage (StageHistory.renewal, the
        # statistic move="auto" scores), median over the stages below / from β = 0.5, then
        # over seeds: where along the path the moves fall short.
        ren, beta = np.asarray(st.history.renewal), np.asarray(st.history.beta)
        band = [np.nanmedian(np.where(m, ren, np.nan), axis=-1) for m in (beta < 0.5, beta >= 0.5)]
        out = {"setting": key, "label": label, "wide_mass": wide.round(3).tolist(),
               "renewal_beta_below_half": float(np.nanmedian(band[0])),
               "renewal_beta_from_half": float(np.nanmedian(band[1])),
               # Moves per run (each one MALA gradient and one Gibbs draw), mean over seeds.
               "moves_per_run": float(np.asarray(st.history.num_moves).sum(-1).mean()),
               "label_mass": order.round(3).tolist(), "log_z": lz.tolist(), "mean": float(lz.mean()),
               "sd": float(lz.std(ddof=1)), "min": float(lz.min()), "max": float(lz.max()),
               "bias": float(lz.mean() - GMM_REF), **r}
        print(json.dumps(out), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["reference", "cost", "toy", "gmm"])
    p.add_argument("--configs", default="collapsed:200,collapsed:800,collapsed:10000,plate:200")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--num-warmup", type=int, default=50)
    p.add_argument("--num-moves", type=int, default=2)
    p.add_argument("--ns-plate", default="200,800,2000,10000")
    p.add_argument("--ns-coord", default="50,100,200,400")
    p.add_argument("--gmm", default="afgh")
    p.add_argument("--gmm-seeds", type=int, default=16)
    args = p.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')} argv={sys.argv[1:]}", flush=True)
    if args.cmd == "reference":
        reference()
    elif args.cmd == "cost":
        cost([int(v) for v in args.ns_plate.split(",")], [int(v) for v in args.ns_coord.split(",")])
    elif args.cmd == "toy":
        configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
        toy(configs, args.seeds, args.num_warmup, args.num_moves)
    elif args.cmd == "gmm":
        gmm(num_seeds=args.gmm_seeds, which=args.gmm)


if __name__ == "__main__":
    main()
