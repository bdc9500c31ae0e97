"""Shared test set-up: a persistent JAX compilation cache (MCMC.run recompiles on every call)
and fixed float32 defaults, as users get them."""

import os
import pathlib

import jax

CACHE = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", os.environ.get("JAX_CACHE_DIR", str(CACHE)))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
