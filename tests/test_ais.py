"""AIS and RAISE for RBMs against enumeration.

An RBM with 12 hidden units (exact ``log Z`` by enumerating the hidden layer) and weights large
enough that a short annealing is visibly off. With few temperatures forward AIS overestimates
the test log-likelihood and RAISE underestimates it, each by many of its own Monte Carlo
errors (so the bracket is a real check, not a tautology); with enough temperatures both agree
with the exact value within their errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_jarzynski import BernoulliRBM, GaussianBernoulliRBM
from numpyro_jarzynski.ebm import ais as A


def _digits_rbm():
    from sklearn.datasets import load_digits

    x = (load_digits().data > 7).astype(np.float32)
    rng = np.random.default_rng(0)
    w = rng.normal(0.0, 1.5, (64, 12)).astype(np.float32)
    b_base = np.asarray(A.base_rate_bias(x[:1000]))
    rbm = BernoulliRBM(w, (b_base - 0.3 * w.sum(1)).astype(np.float32),
                       rng.normal(0.0, 1.0, 12).astype(np.float32))
    return rbm, b_base, x[1000:1200]


@pytest.fixture(scope="module")
def digits():
    rbm, b_base, test = _digits_rbm()
    exact_ll = float(jnp.mean(-rbm.free_energy(test)) - rbm.log_partition())
    run = jax.jit(lambda k, betas: A.log_likelihood_bounds(
        k, rbm, test, b_base, num_runs=200, num_temperatures=betas, num_raise_runs=20))
    return exact_ll, run


def test_ais_and_raise_bracket_the_exact_log_likelihood(digits):
    exact, run = digits
    short = run(jax.random.key(1), A.schedule(30))
    # Short annealing: AIS is optimistic and RAISE conservative, each by > 5 of its errors.
    assert float(short.upper) > exact + 5 * float(short.upper_se), (short.upper, exact)
    assert float(short.lower) < exact - 5 * float(short.lower_se), (short.lower, exact)
    long = run(jax.random.key(2), A.schedule(400))
    for est, se in [(long.upper, long.upper_se), (long.lower, long.lower_se)]:
        assert abs(float(est) - exact) < 4 * float(se) + 0.02, (float(est), exact, float(se))
    assert float(long.lower) <= float(long.upper) + 4 * float(long.upper_se)


def test_log_partition_ais_matches_enumeration():
    rbm, b_base, _ = _digits_rbm()
    res = rbm.log_partition(method="ais", rng_key=jax.random.key(3), base_bias=b_base,
                            num_runs=200, num_temperatures=400)
    exact = float(rbm.log_partition())
    assert abs(float(res.log_z) - exact) < 4 * float(res.log_z_se) + 0.02, (res.log_z, exact)
    assert res.num_temperatures == 400 and res.log_weights.shape == (200,)


def test_ais_bad_inputs():
    rbm, b_base, test = _digits_rbm()
    with pytest.raises(ValueError, match="base_bias must have shape"):
        A.ais(jax.random.key(0), rbm, 10, 10, base_bias=b_base[:5])
    with pytest.raises(ValueError, match="increasing array"):
        A.ais(jax.random.key(0), rbm, 10, jnp.array([0.0, 0.7, 0.5, 1.0]))
    with pytest.raises(ValueError, match="data must have shape"):
        A.raise_log_likelihood(jax.random.key(0), rbm, test[:, :10], 2, 10)
    gb = GaussianBernoulliRBM(np.zeros((3, 2), np.float32), np.zeros(3, np.float32),
                              np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="BernoulliRBM"):
        A.ais(jax.random.key(0), gb, 10, 10)
    with pytest.raises(ValueError, match="rng_key"):
        rbm.log_partition(method="ais")
    with pytest.raises(ValueError, match="method"):
        rbm.log_partition(method="bridge")
