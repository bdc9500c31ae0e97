"""No silent failure in EBM training and interpolant generation (issue 9, classes 6–8).

* ``EBMTrainer``: a failure (every walker dead, energy NaN on the data, parameters NaN) is
  recorded in the compiled state, freezes it at the last good update, and arrives as a plain
  ``FloatingPointError`` naming the update, with the completed work on ``err.result``; an
  unstable run (Adam at lr 1e3 on a 5×3 RBM: negative cross-entropy on binary data,
  parameters ×1000, walker ESS 2 of 64) is warned, once per kind, with the result kept.
* ``InterpolantSampler``: every walker dead raises ``FloatingPointError`` naming the step and
  its times, with the partial result; some dead gives a ``UserWarning`` with the count.

Every scenario is deterministic (fixed keys): the exact update / step indices are asserted.
"""

import re
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

from numpyro_jarzynski.ebm import EBMTrainer, EnergyDistribution
from numpyro_jarzynski.interpolants import GaussianMixtureInterpolant, InterpolantSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_ebm_training import RBM_DATA, rbm_model  # the 5×3 RBM and its data

BASE = dist.Normal(0.0, 1.0).expand([1]).to_event(1)
DATA3 = jnp.full((8, 1), 3.0)


def walkers_die_once_m_exceeds_one(x):
    """``U = ½(y − m)²`` but NaN off the data (``y ≠ 3``) once ``m > 1``: SGD from ``m = 0``
    towards the data at 3 crosses 1 at update 3 (m ≈ 0.32, 0.63, 0.92, then > 1; the exact values depend on the initial walkers), where
    the work ``log γ_{θ_4} − log γ_{θ_3}`` is NaN at every walker and finite on the data."""
    m = numpyro.param("m", 0.0)

    def energy(y):
        u = 0.5 * jnp.sum((y - m) ** 2)
        return jnp.where((m > 1.0) & jnp.all(jnp.abs(y - 3.0) > 1e-3), jnp.nan, u)

    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", EnergyDistribution(energy, BASE), obs=x)


def _trainer(model):
    return EBMTrainer(model, optax.sgd(0.1), num_walkers=16, num_init_stages=2, step_size=0.1)


def test_trainer_all_walkers_dead_raises_floating_point_error_with_completed_work():
    trainer = _trainer(walkers_die_once_m_exceeds_one)
    match = r"update 3 failed: every walker has zero weight"
    with pytest.raises(FloatingPointError, match=match) as info:
        trainer.run(jax.random.key(0), 10, DATA3, progress_bar=False, log_every=2)
    err = info.value
    assert not isinstance(err, jax.errors.JaxRuntimeError)
    msg = str(err)
    assert "Lower the learning rate or step_size" in msg and "check the energy" in msg
    assert "the 3 update(s) of this run before it are kept in err.result" in msg
    # The completed chunk (updates 0, 1) and the good part of the failing one (update 2).
    assert err.step == 3 and trainer.last_result is err.result
    assert {k: v.shape for k, v in err.history.items()} == {
        k: (3,) for k in ("cross_entropy", "log_z", "log_z_grad", "ess", "ess_log_z",
                          "log_z_mc_var", "resampled", "loss", "param_max", "dead")
    }
    # Snapshot of this seed (the infinite-walker trajectory is 0.30, 0.585, 0.856; the
    # 16-walker sd 0.017-0.048), with the engine's Box-Muller draws (engine.noise).
    np.testing.assert_allclose(err.history["param_max"], [0.29108986, 0.56053895, 0.82817376],
                               rtol=1e-5)
    # The kept state is the last good one (before update 3), healthy, resumable.
    state = err.result.state
    assert int(state.step) == 3 and int(state.failure) == 0 and int(state.failed_at) == -1
    np.testing.assert_allclose(float(err.result.params["m"]), 0.82817376, rtol=1e-5)
    assert np.isfinite(np.asarray(state.log_weights)).all()

    # The compiled chunks (`steps`, as run uses them) record the failure in the state and
    # freeze it: the failing update and every later one are no-ops, and their stats NaN.
    state, losses = trainer.init(jax.random.key(0), DATA3), []
    for _ in range(3):
        state, stats = trainer._steps_jit(state, DATA3, 2, None, (), {})
        losses.append(np.asarray(stats["loss"]))
    assert (int(state.failure), int(state.failed_at), int(state.step)) == (2, 3, 3)
    np.testing.assert_allclose(float(state.params["m"]), 0.82817376, rtol=1e-5)
    loss = np.concatenate(losses)
    assert np.isfinite(loss[:3]).all() and np.isnan(loss[3:]).all()

    # The single-step API raises the same way, with the last good state.
    state = trainer.init(jax.random.key(0), DATA3)
    with pytest.raises(FloatingPointError, match="update 3 failed") as info:
        for _ in range(6):
            state, _ = trainer.update(state, DATA3)
    assert int(info.value.state.step) == 3 and int(state.step) == 3


def test_trainer_non_finite_parameters_raise_at_the_update():
    """``U = √|y − m|`` with all data at ``m = 0``: the gradient is NaN there (∞ · 0), so
    update 0 would make ``m`` NaN although the energy on the data is finite."""

    def model(x):
        m = numpyro.param("m", 0.0)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample(
                "x", EnergyDistribution(lambda y: jnp.sum(jnp.sqrt(jnp.abs(y - m))), BASE), obs=x
            )

    trainer = _trainer(model)
    with pytest.raises(FloatingPointError, match=r"update 0 failed: the gradient step made the "
                       r"parameters NaN or infinite\. Lower the learning rate, clip") as info:
        trainer.run(jax.random.key(0), 4, jnp.zeros((8, 1)), progress_bar=False, log_every=2)
    err = info.value
    assert err.step == 0 and err.history["loss"].shape == (0,)
    assert float(err.result.params["m"]) == 0.0 and int(err.result.state.step) == 0


def test_trainer_adam_lr_1e3_on_rbm_warns_negative_cross_entropy_explosion_and_ess_collapse():
    """TRUST.md: Adam at lr 1e3 on the 5×3 RBM gave no error, a cross-entropy of −5597 on
    binary data (impossible: H ≥ 0) and a running log Z off by thousands of nats."""
    trainer = EBMTrainer(rbm_model, optax.adam(1e3), num_walkers=64, num_init_stages=10)
    state = trainer.init(jax.random.key(0), RBM_DATA)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = trainer.run(None, 40, RBM_DATA, state=state, batch_size=100, progress_bar=False,
                          log_every=10)
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(msgs) in (3, 4) and res.problems == tuple(msgs) and trainer.last_result is res
    negative, exploded, collapsed = msgs[:3]
    assert re.search(r"the cross-entropy estimate is -\d+(\.\d+)? at update 3, impossible for data "
                     r"on a discrete support", negative) and "Lower the learning rate" in negative
    assert "the parameters exploded: max |θ| (unconstrained) went from 0.698 to 1000 by update 0" \
           in exploded and "lower the learning rate or clip the gradients" in exploded
    assert re.search(r"the walker ESS collapsed to [12](\.\d+)? effective walkers of 64 at "
                     r"update 0", collapsed)
    assert "more walkers (num_walkers)" in collapsed
    # The witness (work at its walkers, then the sweep) and the gradient walkers (sweep, then
    # the work) both lose the model in the first update. Whether they also end up far apart
    # (and are told so) is chance: with some draws the two running log Z are thousands of
    # nats apart after update 1, with others not (both measured on this run's settings).
    if len(msgs) == 4:
        assert re.search(r"the two running log Z disagree: at update 1 .* drifted",
                         msgs[3]) and "Lower the learning rate" in msgs[3]
    ce = res.history["cross_entropy"]
    assert ce.shape == (40,) and int(np.argmax(ce < -0.1)) == 3 and ce.min() < -2000
    np.testing.assert_allclose(res.history["param_max"][0], 1000.0, rtol=1e-3)

    # Warnings turned into errors: the work before the warning is still on the trainer.
    trainer.last_result = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match=r"cross-entropy estimate is -\d+(\.\d+)? at update 3"):
            trainer.run(None, 40, RBM_DATA, state=state, batch_size=100, progress_bar=False,
                        log_every=10)
    assert trainer.last_result.history["loss"].shape == (10,)
    np.testing.assert_array_equal(trainer.last_result.history["loss"], res.history["loss"][:10])


def test_trainer_healthy_rbm_run_reports_no_problem():
    trainer = EBMTrainer(rbm_model, optax.adam(0.05), num_walkers=64, num_init_stages=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = trainer.run(jax.random.key(0), 40, RBM_DATA, batch_size=100, progress_bar=False,
                          log_every=10)
    assert res.problems == () and int(res.state.failure) == 0
    assert res.history["dead"].sum() == 0 and res.history["cross_entropy"].min() > 1.0


GAUSS = GaussianMixtureInterpolant.gaussian([1.0, -0.5], [[2.0, 0.8], [0.8, 0.5]])
X0 = GAUSS.sample(jax.random.key(10), 0.0, 256)


def test_interpolant_all_walkers_dead_raises_with_partial_result():
    dead_after_half = lambda t, x: jnp.where(t > 0.5, jnp.nan, GAUSS.log_density(t, x))
    sampler = InterpolantSampler(dead_after_half, GAUSS.velocity, score=GAUSS.score, num_steps=5)
    match = r"every walker died at step 2 \(t = 0\.4 → 0\.6\)"
    with pytest.raises(FloatingPointError, match=match) as info:
        sampler.run(jax.random.key(9), X0)
    err = info.value
    assert "Use more steps" in str(err) and "check log_density, velocity and score" in str(err)
    assert err.step == 2 and abs(err.time - 0.4) < 1e-6
    res = err.result  # frozen at t = 0.4: finite, and log Z_{0.4}/Z_0 = 0 (ρ_t is normalised)
    np.testing.assert_array_equal(res.num_alive, [256, 256, 0, 0, 0])
    np.testing.assert_array_equal(res.deaths, [0, 0, 256, 0, 0])
    assert np.isfinite(res.x).all() and np.isfinite(res.log_weights).all()
    assert abs(float(res.log_evidence)) < 0.2
    ess = np.asarray(res.ess)
    assert np.isfinite(ess[:2]).all() and np.isnan(ess[2:]).all()


def test_interpolant_some_walkers_dead_warns_with_count_and_first_step():
    """NaN beyond x₀ = 1.5 after t = 0.5: 106 of 256 walkers die, from step 2 (t 0.4 → 0.6)."""
    holey = lambda t, x: jnp.where((t > 0.5) & (x[0] > 1.5), jnp.nan, GAUSS.log_density(t, x))
    sampler = InterpolantSampler(holey, GAUSS.velocity, score=GAUSS.score, num_steps=5)
    with pytest.warns(UserWarning, match=r"106 walker death\(s\), the first at step 2 "
                      r"\(t = 0\.4 → 0\.6\); 106 of 256 walkers are dead at t = 1"):
        res = sampler.run(jax.random.key(9), X0)
    assert int(res.num_dead) == 106
    np.testing.assert_array_equal(res.deaths, [0, 0, 40, 30, 36])
    np.testing.assert_array_equal(res.num_alive, [256, 256, 216, 186, 150])
    assert np.isfinite(float(res.log_evidence))

    # The pure integrator never raises; `check` on a vmapped result names the run.
    keys = jax.random.split(jax.random.key(9), 2)
    batched = jax.vmap(lambda k: sampler.integrate(k, X0, sampler.grid, sampler.noise))(keys)
    assert batched.deaths.shape == (2, 5)
    with pytest.warns(UserWarning, match=r"walker death\(s\) in 2 of 2 runs \(first: run 0\)"):
        InterpolantSampler.check(batched)
