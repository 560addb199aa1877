/* Shared declarations of the llm policy's native core, the extension module
 * `balancer.policy._native`: chained xxh64 block hashes (xxh64.c), the prefix index
 * (prefix.c) and the pod table that scores and ranks a pool (table.c). Each mirrors a
 * pure-Python reference in balancer/policy/ and is tested pick for pick against it. */
#ifndef LLMTRAFFIC_NATIVE_H
#define LLMTRAFFIC_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

/* xxh64.c: XXH64 of `len` bytes with `seed` (the xxHash specification). */
uint64_t lt_xxh64(const void *data, size_t len, uint64_t seed);

/* xxh64.c: block_hashes(model: str, prompt: str, block_chars: int = 128,
 * max_blocks: int = 256) -> list[int], as balancer.policy.prefix.block_hashes. */
PyObject *lt_block_hashes(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* prefix.c: PrefixIndex, as balancer.policy.prefix.PrefixIndex. */
extern PyTypeObject lt_PrefixIndexType;

/* table.c: PodTable, the per-pod values the llm policy scores, kept from pick to pick. */
extern PyTypeObject lt_PodTableType;

#endif
