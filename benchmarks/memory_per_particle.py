"""Memory per particle and cost against N (issue 11: N = 10⁶ at d = 10 in ≤ 1 KB per particle,
cost linear in N).

For a d = 10 Gaussian model (20 observations), ``jax.jit(smc(model).run)`` is compiled at each
N and XLA's own ``memory_analysis()`` of the compiled program gives the bytes it needs:
arguments, outputs and temporaries (the peak working set of the run, not counting the
program's code). The run is then timed once, compilation excluded, process CPU time beside
wall time, so the cost per particle and stage shows whether it is linear in N.

The working set per particle grows with the model's data: the vmapped log density keeps its
per-observation terms for the backward pass (``--num-obs``); ``--remat`` recomputes them there
instead (``JarzynskiSMC(remat=True)``), ``--chunk-size C`` evaluates C particles at a time
(``JarzynskiSMC(chunk_size=C)``), which bounds those terms by C instead of N.

Run: ``python benchmarks/memory_per_particle.py`` (``--sizes 10000,100000`` for a quick run,
``--no-run`` for the memory only).
"""

import argparse
import time

import jax
import numpyro
import numpyro.distributions as dist

import numpyro_jarzynski as nj

D = 10


def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0).expand([D]).to_event(1))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--stages", type=int, default=10)
    p.add_argument("--move", default="mala")
    p.add_argument("--num-obs", type=int, default=20,
                   help="observations of the model (each a d-vector)")
    p.add_argument("--no-run", action="store_true", help="memory only (compile, no run)")
    p.add_argument("--remat", action="store_true",
                   help="JarzynskiSMC(remat=True): recompute the model's terms in the "
                        "backward pass")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="JarzynskiSMC(chunk_size=...): evaluate the density this many "
                        "particles at a time")
    a = p.parse_args(argv)
    y = jax.random.normal(jax.random.key(1), (a.num_obs, D)) + 1.0
    print(f"d={D}, {a.num_obs} observations, {a.stages} stages, move={a.move}, 2 moves/stage, "
          f"float32, remat={a.remat}, chunk_size={a.chunk_size}, "
          f"{jax.devices()[0].platform}; compilation excluded from the times")
    print(f"{'N':>9s} {'bytes/particle':>15s} {'(args+out+temp)':>16s} {'run wall s':>11s} "
          f"{'run CPU s':>10s} {'CPU us/particle/stage':>22s} {'log Z':>10s}")
    for n in (int(s) for s in a.sizes.split(",")):
        algo = nj.smc(model, num_stages=a.stages, num_particles=n, move=a.move,
                      remat=a.remat, chunk_size=a.chunk_size)
        compiled = jax.jit(algo.run).lower(jax.random.key(0), y).compile()
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        if a.no_run:
            print(f"{n:9d} {total / n:15.0f} {m.argument_size_in_bytes:>5d}+"
                  f"{m.output_size_in_bytes}+{m.temp_size_in_bytes}", flush=True)
            continue
        c, w = time.process_time(), time.perf_counter()
        state = jax.block_until_ready(compiled(jax.random.key(0), y))
        cpu, wall = time.process_time() - c, time.perf_counter() - w
        print(f"{n:9d} {total / n:15.0f} {m.argument_size_in_bytes:>5d}+"
              f"{m.output_size_in_bytes}+{m.temp_size_in_bytes} {wall:11.2f} {cpu:10.2f} "
              f"{1e6 * cpu / (n * a.stages):22.3f} {float(state.log_evidence):10.4f}",
              flush=True)
        algo.report(state)


if __name__ == "__main__":
    main()
