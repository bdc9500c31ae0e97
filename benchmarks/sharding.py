"""Speed-up of sharding the particles over devices (``JarzynskiSMC(..., devices="all")``).

One tempered SMC run of a d = 10 Gaussian model at ``N`` particles, on 1, 2, 4, ... devices.
Each device count runs in its own subprocess. Where JAX sees only one device (a CPU machine),
the subprocesses force host devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=k``: on a CPU those are threads of one
machine, so the speed-up is bounded by its cores (say which). On a machine with several GPUs
it runs as is and uses the real devices (``jax.devices()``).

Compilation is excluded (a first, untimed call); the compiled run is timed ``--repeats``
times, median, process CPU time beside wall time. Also checks that every device count gives
the same log Z for the same key.

Run: ``python benchmarks/sharding.py [--particles 65536] [--max-devices 4]``.
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
import numpyro, numpyro.distributions as dist
import numpyro_jarzynski as nj

k, n, repeats, stages = (int(a) for a in sys.argv[1:5])
devices = jax.devices()[:k]
assert len(devices) == k, jax.devices()

def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0).expand([10]).to_event(1))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)

y = jax.random.normal(jax.random.key(1), (20, 10)) + 1.0
algo = nj.smc(model, num_stages=stages, num_particles=n,
              devices=None if k == 1 else devices)
run = jax.jit(algo.run)
jax.block_until_ready(run(jax.random.key(0), y))  # compile
cpu, wall = [], []
for r in range(repeats):
    c, w = time.process_time(), time.perf_counter()
    s = jax.block_until_ready(run(jax.random.key(0), y))
    cpu.append(time.process_time() - c)
    wall.append(time.perf_counter() - w)
print(json.dumps({"devices": k, "platform": devices[0].platform, "cpu": float(np.median(cpu)),
                  "wall": float(np.median(wall)), "log_z": float(s.log_evidence)}))
"""


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--particles", type=int, default=65536)
    p.add_argument("--max-devices", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stages", type=int, default=10)
    a = p.parse_args(argv)
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.device_count(), jax.devices()[0].platform)"],
        capture_output=True, text=True, check=True)
    native, platform = probe.stdout.split()
    native = int(native)
    counts = [k for k in (1, 2, 4, 8, 16) if k <= a.max_devices]
    env = dict(os.environ)
    forced = native < max(counts)
    if forced:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                            f"{max(counts)}").strip()
        env["JAX_PLATFORMS"] = "cpu"
    print(f"N={a.particles}, d=10, {a.stages} stages; {'forced host' if forced else platform} "
          f"devices; {os.cpu_count()} cores; compilation excluded; median of {a.repeats}")
    rows = []
    for k in counts:
        r = subprocess.run([sys.executable, "-c", CHILD, str(k), str(a.particles),
                            str(a.repeats), str(a.stages)], env=env, capture_output=True,
                           text=True, check=False)
        if r.returncode:
            print(r.stderr[-3000:])
            raise SystemExit(f"{k} devices failed")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        base = rows[0]
        row = rows[-1]
        print(f"{k:2d} devices: wall {row['wall']:.3f} s, CPU {row['cpu']:.3f} s, speed-up "
              f"(wall) {base['wall'] / row['wall']:.2f}x, log Z {row['log_z']:.5f}", flush=True)
    spread = max(r["log_z"] for r in rows) - min(r["log_z"] for r in rows)
    print(f"log Z spread across device counts (same key): {spread:.2e}")


if __name__ == "__main__":
    main()
