/* Shared declarations of the llm policy's native core, the extension module
 * `balancer.policy._native`: chained xxh64 block hashes (xxh64.c), the prefix index
 * (prefix.c), the pod table that filters and ranks a pool (table.c) and the scorers' native
 * twins it composes (scorers.c). Each mirrors a pure-Python reference in balancer/policy/
 * and is tested pick for pick against it. */
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

/* ---- the pod row -------------------------------------------------------------------------
 * What the pod table keeps of each pod. balancer/policy/row.py declares it once: COLUMNS
 * names the values, pod_row(state) builds a pod's row from its PodState. The table keeps
 * the values by column (col[LT_QUEUE][i] is row i's queue: a pass over one column of a
 * large pool stays in the CPU's first-level cache). It calls pod_row for every PodState it
 * has not read yet (the store hands out the same object until the pod's entry changes) and
 * gets
 *     (address: str, running adapters: tuple[str], waiting adapters: tuple[str],
 *      values: tuple of exactly LT_ROW_WIDTH numbers, read as doubles in this order): */
enum lt_column {
    LT_QUEUE,      /* PodState.queue: waiting + sent since the scrape (in flight when stale) */
    LT_KV_USAGE,   /* PodState.kv_usage: 0..1, 0 when stale */
    LT_FRESH,      /* 1.0 when the metrics are present and fresh, else 0.0 */
    LT_READY,      /* 1.0 when the pod is ready */
    LT_USABLE,     /* 1.0 when ready and its last scrape or connect did not fail */
    LT_LORA_FREE,  /* lora.slots_free: adapter slots free (+inf: no limit known) */
    LT_ROW_WIDTH,
    /* Then what a native scorer derives from a row once, when the row is read (its `read`),
     * so that picks do not recompute it for every pod: */
    LT_KV_SCORE = LT_ROW_WIDTH,  /* kv: kvcache.kv_score */
    LT_LORA_SLOT,                /* lora: lora.slot_score */
    LT_COLUMNS
};
/* The row's columns' names, as row.COLUMNS lists them; a table refuses other names. */
extern const char *const lt_columns[LT_ROW_WIDTH];

typedef struct {         /* the rest of a row: its Python objects */
    PyObject *state;     /* the PodState read (strong ref); NULL = not read yet */
    PyObject *address;   /* str (strong ref) */
    PyObject *running;   /* running adapters (tuple, strong ref) */
    PyObject *waiting;   /* waiting adapters (tuple, strong ref) */
    Py_hash_t *hashes;   /* hash of each running adapter, then of each waiting one */
    Py_ssize_t n_running, n_waiting;
} lt_row;

/* What a scorer sees of one pick: the rows, which are candidates, and the request. */
typedef struct {
    const double *const *col;  /* col[c][i]: column c (enum lt_column) of row i */
    const lt_row *rows;
    const char *cand;        /* by row: 1 = a candidate */
    const Py_ssize_t *idx;   /* the candidates' rows, ascending */
    Py_ssize_t n_cand;
    PyObject *positions;     /* dict: address -> row */
    PyObject *adapter;       /* str, or None for the base model */
    Py_hash_t adapter_hash;  /* its hash (0 for None) */
    PyObject *matched;       /* dict: address -> leading prompt blocks the prefix index holds */
    PyObject *uncached;      /* dict: address -> moving average of uncached prompt tokens */
    Py_ssize_t prompt_tokens;
    double q_min, q_max;     /* least and greatest LT_QUEUE of the candidates */
} lt_pick;

/* ---- scorers ----------------------------------------------------------------------------
 * The native twin of a Python scorer (balancer/policy/<scorer>.py), under the same name.
 * A table composes the configured ones: each candidate's score starts at 0.0 and each
 * scorer with a weight other than 0, in the configured order, adds weight x its score, so
 * every score is the double the Python reference computes. */
#define LT_MAX_PARAMS 4
typedef struct {
    const char *name;
    /* fill its derived columns of row i, just read; NULL = nothing to derive */
    void (*read)(double *const *col, Py_ssize_t i, const lt_row *r);
    /* add weight x score to score[i] of each candidate row i (see idx); 0, or -1 with an
     * exception */
    int (*add)(const lt_pick *p, double weight, const double *params, double *score);
    /* 1 when it decided the pick of row i (names the reason), 0 if not, -1 with an
     * exception; NULL = never */
    int (*claims)(const lt_pick *p, Py_ssize_t i, const double *params);
    /* the parameters it reads (as the Python scorer's native_params names them), in the
     * order `params` holds them; NULL-ended */
    const char *params[LT_MAX_PARAMS + 1];
} lt_scorer;

/* scorers.c: every native scorer; a NULL name ends the list. */
extern const lt_scorer lt_scorers[];

#endif
