r"""The moves' random numbers, cheaper on CPU than ``jax.random`` (issue 11).

Every gradient move draws an ``N × d`` Gaussian (Langevin noise, fresh momentum, a partial
refresh) and a few ``N``-vectors (accept tests, step jitter), and splits its key. On a CPU
with JAX's default threefry PRNG these draws cost more than the gradient of a small model:

* JAX lowers the threefry hash on CPU as a *rolled* loop (five iterations of four rounds,
  each materialising its ``N × d`` words), to keep compile times down. The same hash written
  out (:func:`threefry2x32`, twenty rounds in one expression that XLA fuses into one loop)
  gives **the same bits** about 10× faster on this CPU (``benchmarks/gradient_floor.py``);
* ``jax.random.normal`` maps uniforms through ``erf_inv``, whose CPU lowering costs several
  times a ``log``; the Box–Muller transform (one ``log``, ``sqrt``, ``cos``, ``sin`` per pair)
  is exact too and much cheaper.

:func:`split` and :func:`bits` therefore return exactly what ``jax.random.split`` and
``jax.random.bits`` return for the same key (bit for bit: only the hash is written out; so does
:func:`uniform` on ``[0, 1)``, ``tests/test_engine.py``);
:func:`normal` is a different, equally exact, standard normal stream (Box–Muller on the two
32-bit words of each threefry block), deterministic in the key: the same user key still
gives the same run, on any backend and any sharding (the bits are a pure function of the key
and the element index, like threefry's, so no ``rbg``-style dependence on the backend).

``rbg``/``unsafe_rbg`` keys were measured too and are *not* used: on this CPU they are no
faster than threefry (XLA's ``RngBitGenerator``), and their streams differ across backends and
shardings. A key of any other implementation than threefry (a user who set
``jax_default_prng_impl``), or ``jax_threefry_partitionable=False``, falls back to
``jax.random`` itself.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotl(x, d):
    return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def threefry2x32(k1, k2, x1, x2):
    """The Threefry-2x32 block cipher (20 rounds), unrolled: JAX's ``threefry2x32`` hash."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = _rotl(x2, r) ^ x1
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _key_data(key):
    """The two threefry words of ``key`` (typed or raw), or None for any other key."""
    if not jax.config.jax_threefry_partitionable:
        return None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != () or str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        return jax.random.key_data(key)
    if key.shape != (2,) or key.dtype != jnp.uint32:
        return None
    return key


def _blocks(data, shape):
    """Both 32-bit words of the threefry blocks at counters ``0 .. prod(shape) − 1``."""
    size = math.prod(shape)
    if size >= 2**32:
        raise ValueError("noise: more than 2**32 draws from one key.")
    lo = jax.lax.iota(jnp.uint32, size).reshape(shape)
    # The barrier keeps XLA from evaluating the hash at compile time when the key is a
    # constant of the program (it would fold N × d draws in its slow constant evaluator).
    data = jax.lax.optimization_barrier(data)
    # Both words from one fused loop, materialised: left to itself XLA fuses the whole hash
    # into every consumer of either word (twice per draw, and again into each use of the
    # draw), which doubled the compile time of a stage and the run time of its draws.
    both = jax.lax.optimization_barrier(
        jnp.stack(threefry2x32(data[0], data[1], jnp.zeros_like(lo), lo)))
    return both[0], both[1]


def bits(key, shape):
    """``jax.random.bits(key, shape, uint32)``, bit for bit (threefry keys)."""
    data = _key_data(key)
    if data is None:
        return jax.random.bits(key, shape, jnp.uint32)
    b1, b2 = _blocks(data, tuple(shape))
    return b1 ^ b2


def split(key, num=2):
    """``jax.random.split(key, num)``, bit for bit (threefry keys)."""
    data = _key_data(key)
    if data is None:
        return jax.random.split(key, num)
    b1, b2 = _blocks(data, (num,))
    out = jnp.stack([b1, b2], axis=-1)
    return jax.random.wrap_key_data(out) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else out


def _unit(b):
    """``[0, 1)`` floats from 32-bit words, as ``jax.random.uniform`` makes them (float32)."""
    f = jax.lax.bitcast_convert_type((b >> np.uint32(9)) | np.uint32(0x3F800000), jnp.float32)
    return f - jnp.float32(1.0)


def uniform(key, shape=(), dtype=None, minval=0.0, maxval=1.0):
    """``jax.random.uniform(key, shape, dtype, minval, maxval)`` (threefry keys, float32; other
    dtypes use ``jax.random``): bit for bit on ``[0, 1)``; with other bounds within an ulp of
    ``hi − lo`` (the affine map ``u·(hi − lo) + lo``, which XLA may or may not fuse into an
    FMA)."""
    dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
    data = _key_data(key)
    if data is None or dtype != jnp.float32:
        return jax.random.uniform(key, shape, dtype, minval, maxval)
    shape = tuple(shape)
    lo, hi = jnp.asarray(minval, dtype), jnp.asarray(maxval, dtype)
    b1, b2 = _blocks(data, shape)
    return jnp.maximum(lo, _unit(b1 ^ b2) * (hi - lo) + lo)


def bernoulli(key, p):
    """``jax.random.bernoulli(key, p)`` for an array ``p`` of probabilities, bit for bit
    (threefry keys, float32 ``p``; it is ``uniform(key, p.shape) < p``, as in JAX). The
    block-Gibbs sweeps of RBMs and lattices draw one per unit."""
    p = jnp.asarray(p)
    return uniform(key, p.shape, p.dtype) < p


def normal(key, shape, dtype=None):
    """Standard normal draws of ``shape``: Box–Muller on both words of ``⌈size/2⌉`` threefry
    blocks (exact; a different stream from ``jax.random.normal``, deterministic in the key).
    Keys that are not threefry, and dtypes other than float32, use ``jax.random.normal``."""
    dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
    data = _key_data(key)
    shape = tuple(shape)
    if data is None or dtype != jnp.float32:
        return jax.random.normal(key, shape, dtype)
    size = math.prod(shape)
    half = (size + 1) // 2
    b1, b2 = _blocks(data, (half,))
    u1 = jnp.float32(1.0) - _unit(b1)  # (0, 1]: log is finite
    theta = jnp.float32(2.0 * math.pi) * _unit(b2)
    r = jnp.sqrt(jnp.float32(-2.0) * jnp.log(u1))
    z = jnp.concatenate([r * jnp.cos(theta), r * jnp.sin(theta)])
    return z[:size].reshape(shape)


__all__ = ["bits", "normal", "split", "threefry2x32", "uniform"]
