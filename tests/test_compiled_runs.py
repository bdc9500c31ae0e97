"""Compiled once: reruns of ``mcmc.run`` reuse the program, and the functional API
(``numpyro_jarzynski.smc``) is the same algorithm, jit-able and vmap-able over data sets.

Compilations are counted from JAX's own log (``jax.log_compiles``): every trace of a ``jit``
logs "Finished tracing + transforming", every XLA compilation "Finished XLA compilation"
(or a persistent-cache hit). NumPyro's own ``MCMC.run`` retraces its loop on every call, so
these counts are not zero without the compiled-run cache.
"""

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from conjugate import normal_mean_model, normal_mean_truth
from numpyro.infer import MCMC

import numpyro_jarzynski as nj

SIGMA, TAU = 1.0, 2.0


model = normal_mean_model(TAU, SIGMA)


def exact_log_z(y):
    return normal_mean_truth(y, TAU, SIGMA)[0]


class _Counter(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.events = []

    def emit(self, record):
        msg = record.getMessage()
        if ("Finished tracing" in msg or "Finished XLA compilation" in msg
                or "Persistent compilation cache hit" in msg):
            self.events.append(msg.split(" in ")[0])


class count_compiles:
    """Context manager: ``.events`` lists every trace and compilation inside it."""

    def __enter__(self):
        self.handler = _Counter()
        self.logger = logging.getLogger("jax")
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.DEBUG)
        self.ctx = jax.log_compiles(True)
        self.ctx.__enter__()
        return self.handler

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def _data(seed, n=20):
    return jax.random.normal(jax.random.key(seed), (n,)) + 0.5


def _run(mcmc, key, y):
    mcmc.run(key, y)
    return jax.block_until_ready(mcmc.last_state.log_evidence)


@pytest.mark.parametrize("progress_bar", [False, True])
def test_rerun_does_not_recompile(progress_bar):
    """Two vectorised chains, with the progress bar (one compiled call per stage) and without
    (one call for the whole run): same layout as NumPyro's, no compilation on reruns."""
    mcmc = MCMC(nj.JarzynskiSMC(model, num_particles=200), num_warmup=8, num_samples=3,
                num_chains=2, chain_method="vectorized", progress_bar=progress_bar,
                jit_model_args=True)
    y = _data(0)
    with count_compiles() as first:
        _run(mcmc, jax.random.key(0), y)
    assert first.events, "the counter sees nothing: the check below could not fail"
    assert mcmc.get_samples(group_by_chain=True)["mu"].shape == (2, 3, 200)
    assert mcmc.get_extra_fields(group_by_chain=True)["log_weights"].shape == (2, 3, 200)
    assert mcmc.get_samples()["mu"].shape == (6, 200)
    assert mcmc.last_state.log_evidence.shape == (2,)
    with count_compiles() as second:  # same shapes, new key, same data
        _run(mcmc, jax.random.key(1), y)
    assert second.events == []
    with count_compiles() as third:  # new data of the same shapes
        log_z = _run(mcmc, jax.random.key(2), _data(1))
    assert third.events == []
    # ... and it is that data's evidence, not the first one's (no stale program).
    assert np.all(np.abs(np.asarray(log_z) - exact_log_z(_data(1))) < 0.3)
    assert abs(exact_log_z(_data(1)) - exact_log_z(y)) > 1.0


def test_rerun_same_data_without_jit_model_args_does_not_recompile():
    """NumPyro's default closes over the data: the same data reuses the program, new data of
    the same shapes compiles a new one (the data are constants of the program)."""
    mcmc = MCMC(nj.JarzynskiSMC(model, num_particles=200), num_warmup=8, num_samples=1,
                progress_bar=False)
    y = _data(0)
    _run(mcmc, jax.random.key(0), y)
    y_copy, y_new = jnp.array(np.asarray(y)), _data(1)  # equal data in a new array; new data
    k1, k2 = jax.random.split(jax.random.key(1))
    with count_compiles() as again:
        _run(mcmc, k1, y_copy)
    assert again.events == []
    with count_compiles() as new:
        log_z = _run(mcmc, k2, y_new)
    assert new.events  # a new program for new constants, and the right evidence
    assert abs(float(log_z) - exact_log_z(_data(1))) < 0.3


def test_changed_setting_compiles_a_new_program():
    kernel = nj.JarzynskiSMC(model, num_particles=200, num_moves=1)
    mcmc = MCMC(kernel, num_warmup=8, num_samples=1, progress_bar=False, jit_model_args=True)
    y = _data(0)
    _run(mcmc, jax.random.key(0), y)
    kernel.num_moves = 3
    with count_compiles() as changed:
        _run(mcmc, jax.random.key(0), y)
    assert changed.events
    assert float(mcmc.last_state.history.jump[-1]) > 2.0  # three moves' jump, not one's


def test_functional_run_is_the_kernel_warmup():
    """For the same key and data, ``smc(...).run`` is the state ``mcmc.warmup`` leaves."""
    y = _data(0)
    opts = {"num_particles": 300, "move": "hmc", "num_moves": 2}
    mcmc = MCMC(nj.JarzynskiSMC(model, **opts), num_warmup=10, num_samples=1,
                progress_bar=False, jit_model_args=True)
    mcmc.warmup(jax.random.key(3), y)
    ref = mcmc.last_state
    algo = nj.smc(model, num_stages=10, **opts)
    init, step = algo  # BlackJAX-style unpacking
    state = jax.jit(algo.run)(jax.random.key(3), y)
    np.testing.assert_allclose(state.log_evidence, ref.log_evidence, rtol=1e-5)
    # The two programs are compiled separately (different fusion, so different rounding): an
    # accept/reject decision near its threshold can flip, which moves the adapted step size
    # and so every particle a little. The weighted population agrees far inside its Monte
    # Carlo error (posterior sd 0.22; MC sd of the mean at N = 300 about 0.013).

    def moments(s_):
        w = np.exp(np.asarray(s_.log_weights) - np.max(s_.log_weights))
        w /= w.sum()
        m = float(np.sum(w * s_.z["mu"]))
        return m, float(np.sqrt(np.sum(w * (np.asarray(s_.z["mu"]) - m) ** 2)))

    np.testing.assert_allclose(moments(state), moments(ref), atol=4e-3)
    # init and step by hand (BlackJAX style, each stage hands back its record): the same run.
    s = init(jax.random.key(3), y)
    stage = jax.jit(step)
    infos = []
    for _ in range(10):
        s, info = stage(s, y)
        infos.append(info)
    np.testing.assert_allclose(s.log_evidence, ref.log_evidence, rtol=1e-5)
    np.testing.assert_allclose(moments(s), moments(ref), atol=4e-3)
    # The stage leaves the history alone; the records are the kernel run's history.
    assert np.all(np.isnan(np.asarray(s.history.beta)))
    stacked = jax.tree.map(lambda *v: np.stack(v), *infos)
    np.testing.assert_allclose(stacked.beta, ref.history.beta, rtol=1e-5)
    np.testing.assert_allclose(stacked.log_evidence_increment.sum(), ref.log_evidence,
                               rtol=1e-5)
    np.testing.assert_array_equal(stacked.resampled, ref.history.resampled)
    # Unrecorded stages cannot be checked, and the report says so (with the fix).
    with pytest.warns(UserWarning, match=r"never recorded in state.history.*record\("):
        algo.report(s)
    health = algo.report(state)
    assert len(health) == 1 and not health[0].failed
    mu = algo.samples(state, y)["mu"]
    assert mu.shape == (300,)


def test_functional_vmap_over_data_sets():
    """Eight data sets (different sizes of evidence) in one compiled call: each estimate is
    the per-data-set run's, and within Monte Carlo error of its exact evidence."""
    algo = nj.smc(model, num_stages=12, num_particles=400)
    ys = jnp.stack([_data(s) * (1 + s) for s in range(8)])
    keys = jax.random.split(jax.random.key(7), 8)
    states = jax.jit(jax.vmap(algo.run))(keys, ys)
    assert states.log_evidence.shape == (8,)
    one = jax.jit(algo.run)(keys[5], ys[5])
    np.testing.assert_allclose(states.log_evidence[5], one.log_evidence, rtol=1e-5)
    exact = np.array([exact_log_z(y) for y in ys])
    err = np.asarray(states.log_evidence) - exact
    # sd of one estimate at N = 400, 12 stages: 0.04-0.06 here; 0.25 is > 4 sd.
    assert np.all(np.abs(err) < 0.25), err
    assert np.ptp(exact) > 20  # the data sets differ: a shared result could not pass
    health = algo.report(states)
    assert len(health) == 8 and not any(h.failed for h in health)


def test_functional_log_density_front_door():
    """``smc(log_likelihood=f, prior=...)``: the same conjugate model written as a log density
    (d = 3 independent copies of the module's model, its prior a NumPyro distribution of one
    particle) gives the exact evidence within Monte Carlo error, on a positive-support prior
    too; bad inputs name the fix."""
    y = _data(1)
    d = 3
    ys = jnp.stack([y + k for k in range(d)])  # (d, n): one data set per coordinate

    def log_lik(x, ys):
        return jnp.sum(dist.Normal(x[:, None], SIGMA).log_prob(ys))

    prior = dist.Normal(jnp.zeros(d), TAU).to_event(1)
    algo = nj.smc(log_likelihood=log_lik, prior=prior, num_stages=12, num_particles=400)
    keys = jax.random.split(jax.random.key(11), 6)
    states = jax.jit(jax.vmap(algo.run, in_axes=(0, None)))(keys, ys)
    exact = sum(exact_log_z(ys[k]) for k in range(d))
    lz = np.asarray(states.log_evidence)
    # sd of one estimate here about 0.07 (three coordinates of the module's model); the
    # tolerance is 4 sd of the mean of six runs plus the spread's own error.
    assert abs(lz.mean() - exact) < 4 * 0.1 / math.sqrt(6), (lz, exact)
    assert lz.std() < 0.2, lz
    x = algo.samples(jax.tree.map(lambda a: a[0], states), ys)["x"]
    assert x.shape == (400, d)
    assert not any(h.failed for h in algo.report(states))
    # A prior with a constrained support: the moves run in its unconstrained space.
    lam = nj.smc(log_likelihood=lambda s, y: jnp.sum(dist.Normal(0.0, s).log_prob(y)),
                 prior=dist.Gamma(2.0, 1.0), num_stages=12, num_particles=400)
    st = jax.jit(lam.run)(jax.random.key(2), y)
    assert np.all(np.asarray(lam.samples(st, y)["x"]) > 0)
    grid = np.linspace(1e-3, 30.0, 200_001)  # log ∫ Gamma(s; 2, 1) Π N(y_i; 0, s²) ds
    yy = np.asarray(y, np.float64)
    log_f = (np.log(grid) - grid - yy.size * np.log(grid * math.sqrt(2 * math.pi))
             - 0.5 * np.sum(yy**2) / grid**2)
    exact_s = np.log(np.sum(np.exp(log_f - log_f.max())) * (grid[1] - grid[0])) + log_f.max()
    assert abs(float(st.log_evidence) - exact_s) < 0.15, (float(st.log_evidence), exact_s)
    with pytest.raises(TypeError, match="prior="):
        nj.smc(log_likelihood=log_lik)
    with pytest.raises(TypeError, match="log_likelihood="):
        nj.smc(prior=prior)
    with pytest.raises(TypeError, match="not both"):
        nj.smc(model, log_likelihood=log_lik, prior=prior)
    with pytest.raises(ValueError, match="to_event"):
        nj.smc(log_likelihood=log_lik, prior=dist.Normal(jnp.zeros(d), 1.0))
    with pytest.raises(TypeError, match="needs a NumPyro model"):
        nj.smc()
    bad = nj.smc(log_likelihood=lambda x, ys: x[:, None] - ys, prior=prior, num_stages=2,
                 num_particles=100)
    with pytest.raises(ValueError, match="must return a scalar"):
        bad.run(jax.random.key(0), ys)


# Records of the weights' tail per traced stage: one after the annealing increment, and one at
# the end of the stage for an unadjusted move (an adjusted one leaves the weights as recorded).
# "auto" traces a stage for each of its candidates ULA, MALA, HMC and UHMC: 2 + 1 + 1 + 2.
@pytest.mark.parametrize("move,records", [("mala", 1), ("ula", 2), ("uhmc", 2), ("auto", 6)])
def test_one_stage_is_traced_once_per_candidate_move(move, records):
    """The stage is in the program once per move it can run: an unadjusted move, which runs
    as its adjusted twin once β = 1, switches around the move only (it traced and compiled
    the whole stage twice before, 1.5-2.5 CPU s more on eight schools). Counted by the
    stage's records of the weights' tail (``top_k``)."""
    algo = nj.smc(model, num_stages=4, num_particles=64, move=move)
    y = jnp.ones(3)
    state = jax.jit(algo.init)(jax.random.key(0), y)
    assert str(jax.make_jaxpr(algo.step)(state, y)).count("top_k") == records


def _switch_widths(jaxpr):
    """Branch counts of every ``cond`` in a jaxpr, nested ones included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cond":
            out.append(len(eqn.params["branches"]))
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out += _switch_widths(inner)
    return out


@pytest.mark.parametrize("how", ["mcmc", "sample"])
def test_auto_on_vectorised_chains_runs_only_each_chains_candidate(how):
    """``move="auto"`` chooses a candidate per run with a ``lax.switch`` over its four
    candidates (and a fifth branch, "no trial", for its shadow trials). Vectorised
    chains under ``vmap`` batch the index, and the switch becomes a select over all four
    candidates' moves (each stage paid for all of them: 3.1x MALA's CPU on 8 chains, before
    this fix). The chains are mapped one after the other instead: the 4-way switch is in the
    program, and the runs are the per-chain runs."""
    kernel = nj.JarzynskiSMC(model, num_particles=100, move="auto")
    y = jnp.ones(3)
    keys = jax.random.split(jax.random.key(0), 2)
    if how == "sample":  # the MCMCKernel API on a batch of states
        states = kernel.init(keys, 4, None, (y,), {})
        jaxpr = jax.make_jaxpr(lambda s: kernel.sample(s, (y,), {}))(states).jaxpr
        assert 5 in _switch_widths(jaxpr)  # the four candidates and "no trial"
        return
    mcmc = MCMC(kernel, num_warmup=4, num_samples=2, num_chains=2,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(1), y)
    program = next(iter(kernel._programs.values()))  # the run mcmc.run compiled
    jaxpr = jax.make_jaxpr(program)(jax.random.split(jax.random.key(1), 2), ()).jaxpr
    assert 5 in _switch_widths(jaxpr)
    one = MCMC(nj.JarzynskiSMC(model, num_particles=100, move="auto"), num_warmup=4,
               num_samples=2, progress_bar=False)
    split = jax.random.split(jax.random.key(1), 2)
    for c in range(2):
        one.run(split[c], y)
        np.testing.assert_allclose(mcmc.last_state.log_evidence[c],
                                   one.last_state.log_evidence, rtol=1e-5)


def test_a_first_call_traces_the_model_and_never_runs_it_op_by_op():
    """The model is inspected abstractly, as the program sees the data: an eager inspection
    dispatched and compiled every op of the model one at a time (1.4 of a first call's CPU
    seconds on eight schools). Its errors still come from Python before anything compiles."""
    import numpyro

    concrete = []

    def counted(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, TAU))
        concrete.append(not isinstance(mu, jax.core.Tracer))
        numpyro.sample("y", dist.Normal(mu, SIGMA), obs=y)

    for jit_args in (False, True):
        concrete.clear()
        mcmc = MCMC(nj.JarzynskiSMC(counted, num_particles=100), num_warmup=3, num_samples=1,
                    progress_bar=False, jit_model_args=jit_args)
        mcmc.run(jax.random.key(0), _data(0))
        assert concrete and not any(concrete), concrete

    def subsampled(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, TAU))
        with numpyro.plate("data", y.shape[0], subsample_size=2):
            numpyro.sample("y", dist.Normal(mu, SIGMA), obs=y[:2])

    mcmc = MCMC(nj.JarzynskiSMC(subsampled, num_particles=100), num_warmup=3, num_samples=1,
                progress_bar=False)
    with count_compiles() as events, pytest.raises(ValueError, match="subsample"):
        mcmc.run(jax.random.key(0), _data(0))
    assert not any("Finished XLA compilation" in e for e in events.events)



@pytest.mark.parametrize("option", [{"remat": True}, {"chunk_size": 250}],
                         ids=["remat", "chunk_size"])
def test_memory_options_need_less_memory_for_the_same_result(option):
    """``remat=True`` (``jax.checkpoint`` around the log density): the backward pass
    recomputes the model's per-observation terms instead of keeping them; ``chunk_size``:
    the density and gradients are evaluated 250 particles at a time, so only a chunk's
    terms are held. Either way a model with many observations needs less working memory per
    particle, and the run is the same (to rounding: XLA may order a chunk's sums
    differently)."""
    import numpyro

    d = 5
    y = jax.random.normal(jax.random.key(1), (40, d)) + 1.0

    def gaussian(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0).expand([d]).to_event(1))
        with numpyro.plate("n", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)

    temp, states = {}, {}
    for on in (False, True):
        algo = nj.smc(gaussian, num_stages=3, num_particles=2000, **(option if on else {}))
        compiled = jax.jit(algo.run).lower(jax.random.key(0), y).compile()
        temp[on] = compiled.memory_analysis().temp_size_in_bytes
        states[on] = compiled(jax.random.key(0), y)
    # Without either option the gradient keeps the (N, 40, d) terms: 1.6 MB in float32.
    assert temp[True] < temp[False] - 2000 * 40 * d * 4 * 0.5, temp
    np.testing.assert_allclose(states[True].log_evidence, states[False].log_evidence,
                               rtol=1e-5)
    np.testing.assert_allclose(states[True].z["mu"], states[False].z["mu"], atol=1e-4)


def test_memory_options_refuse_bad_values():
    import numpyro

    def gaussian(y):
        numpyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(TypeError, match="remat"):
        nj.JarzynskiSMC(gaussian, remat="yes")
    for bad in (0, -3, 2.5, True, "100"):
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            nj.JarzynskiSMC(gaussian, chunk_size=bad)
    assert nj.JarzynskiSMC(gaussian, num_particles=100, chunk_size=10**6).chunk_size == 100
    with pytest.raises(ValueError, match="chunk_size and devices"):
        nj.JarzynskiSMC(gaussian, num_particles=100, chunk_size=10, devices="all")
