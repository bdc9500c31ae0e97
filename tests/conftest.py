"""Shared test set-up: a persistent JAX compilation cache (a program that several tests
compile is compiled once per run of the suite), float32 defaults as users get them, and XLA's
CPU backend at optimisation level 0.

The suite compiles many small programs and runs each briefly: compiling is most of its time.
``--xla_backend_optimization_level=0`` halves the CPU time of compiling a stage (LLVM skips its
optimisation passes) and about doubles the run time of the compiled code. It is not meant to
change what the programs compute (the suite's exact-value snapshots agree at both levels).
Set ``XLA_FLAGS`` yourself to run the suite at another level.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax

CACHE = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", os.environ.get("JAX_CACHE_DIR", str(CACHE)))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
