"""Particles sharded over devices give the one-device run (same key, same result).

Four CPU devices are forced in a subprocess (``XLA_FLAGS=--xla_force_host_platform_device_count
=4`` must be set before JAX starts), which runs the same SMC on one device and on four, through
the functional API and through ``MCMC`` (one chain, and two vectorised chains).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import numpyro_jarzynski as nj

SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
import numpyro, numpyro.distributions as dist
from numpyro.infer import MCMC
import numpyro_jarzynski as nj

assert jax.device_count() == 4, jax.devices()

def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0).expand([3]).to_event(1))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)

y = jax.random.normal(jax.random.key(1), (10, 3)) + 1.0
out = {}
for dev in (None, "all"):
    algo = nj.smc(model, num_stages=6, num_particles=256, devices=dev)
    s = jax.jit(algo.run)(jax.random.key(0), y)
    mcmc = MCMC(nj.JarzynskiSMC(model, num_particles=256, devices=dev), num_warmup=6,
                num_samples=1, progress_bar=False)
    mcmc.warmup(jax.random.key(0), y)
    out[str(dev)] = dict(
        log_z=float(s.log_evidence), mcmc_log_z=float(mcmc.last_state.log_evidence),
        mu=np.asarray(s.z["mu"]).tolist(), log_w=np.asarray(s.log_weights).tolist(),
        devices=len(s.log_weights.sharding.device_set),
        mcmc_devices=len(mcmc.last_state.log_weights.sharding.device_set))
    # Vectorised chains on top: the chain axis is replicated, the particle axis sharded.
    chains = MCMC(nj.JarzynskiSMC(model, num_particles=256, devices=dev), num_warmup=6,
                  num_samples=2, num_chains=2, chain_method="vectorized", progress_bar=False)
    chains.run(jax.random.key(0), y)
    lw = chains.last_state.log_weights
    out[str(dev)].update(
        chains_log_z=np.asarray(chains.last_state.log_evidence).tolist(),
        chains_shape=list(lw.shape), chains_devices=len(lw.sharding.device_set),
        samples_shape=list(chains.get_samples()["mu"].shape))
print(json.dumps(out))
"""


def test_sharded_run_equals_one_device_run():
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
           + " --xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                       text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    one, four = out["None"], out["all"]
    assert one["devices"] == 1 and four["devices"] == 4 and four["mcmc_devices"] == 4
    np.testing.assert_allclose(four["log_z"], one["log_z"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(four["mcmc_log_z"], one["log_z"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(four["mu"], one["mu"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(four["log_w"], one["log_w"], rtol=1e-4, atol=1e-4)
    assert one["chains_devices"] == 1 and four["chains_devices"] == 4
    assert four["chains_shape"] == [2, 256] and four["samples_shape"] == [4, 256, 3]
    np.testing.assert_allclose(four["chains_log_z"], one["chains_log_z"], rtol=1e-5, atol=1e-5)
    assert abs(four["chains_log_z"][0] - four["chains_log_z"][1]) > 1e-3  # two distinct runs


def test_devices_argument_errors():
    import jax

    def model():
        pass

    with pytest.raises(ValueError, match="multiple of"):
        nj.JarzynskiSMC(model, num_particles=1001, devices=jax.devices() * 2)
    with pytest.raises(ValueError, match="'all'"):
        nj.JarzynskiSMC(model, devices="gpu")
    with pytest.raises(TypeError, match="list of jax devices"):
        nj.JarzynskiSMC(model, devices=[0, 1])
