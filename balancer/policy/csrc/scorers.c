/* The native twins of the llm policy's scorers, one section each, with the formula of
 * balancer/policy/<scorer>.py evaluated in the same order (so the same doubles), and
 * `lt_scorers`, which names them. A new native scorer is one section and one entry. */
#include "native.h"

/* ---- queue (queue.py): 1 - (q - minQ) / max(maxQ - minQ, queue_span), 1 when that is 0 -- */

enum { QUEUE_SPAN };

static int queue_add(const lt_pick *p, double w, const double *params, double *score) {
    const double *queue = p->col[LT_QUEUE];  /* (locals: not reloaded for each row) */
    const Py_ssize_t *idx = p->idx, n = p->n_cand;
    double lo = p->q_min, spread = p->q_max - p->q_min;
    if (!(spread > params[QUEUE_SPAN]))
        spread = params[QUEUE_SPAN];
    if (spread == 0) {  /* every candidate scores 1.0 */
        for (Py_ssize_t k = 0; k < n; k++)
            score[idx[k]] += w * 1.0;
        return 0;
    }
    for (Py_ssize_t k = 0; k < n; k++)
        score[idx[k]] += w * (1.0 - (queue[idx[k]] - lo) / spread);
    return 0;
}

/* ---- kv (kvcache.py): 1 - usage, usage clamped to 0..1 (NaN counts as 0) --------------- */

static void kv_read(double *const *col, Py_ssize_t i, const lt_row *r) {
    (void)r;
    double u = col[LT_KV_USAGE][i];
    col[LT_KV_SCORE][i] = u > 0.0 ? 1.0 - (u <= 1.0 ? u : 1.0) : 1.0;
}

static int kv_add(const lt_pick *p, double w, const double *params, double *score) {
    (void)params;
    const double *kv = p->col[LT_KV_SCORE];
    const Py_ssize_t *idx = p->idx, n = p->n_cand;
    for (Py_ssize_t k = 0; k < n; k++)
        score[idx[k]] += w * kv[idx[k]];
    return 0;
}

/* ---- lora (lora.py): running 1.0 > free slot 0.8 > waiting for a slot 0.6 > 0 ---------- */

#define RUNNING 1.0
#define FREE_SLOT 0.8
#define WAITING 0.6
#define NONE 0.0

/* 1 when `adapter` (hash `h`) is among row items [from, to), 0 if not, -1 on error. */
static int holds(const lt_row *r, Py_ssize_t from, Py_ssize_t to, PyObject *adapter,
                 Py_hash_t h) {
    for (Py_ssize_t i = from; i < to; i++) {
        if (r->hashes[i] != h)
            continue;
        PyObject *a = i < r->n_running ? PyTuple_GET_ITEM(r->running, i)
                                       : PyTuple_GET_ITEM(r->waiting, i - r->n_running);
        int eq = PyObject_RichCompareBool(a, adapter, Py_EQ);
        if (eq != 0)
            return eq;
    }
    return 0;
}

/* lora.slot_score: a free adapter slot (lora.slots_free > 0; NaN is none). */
static void lora_read(double *const *col, Py_ssize_t i, const lt_row *r) {
    (void)r;
    col[LT_LORA_SLOT][i] = col[LT_LORA_FREE][i] > 0 ? FREE_SLOT : NONE;
}

/* lora.lora_score of row i for the request's adapter (not None); -1.0 on error. */
static inline double lora_score(const lt_pick *p, Py_ssize_t i) {
    const lt_row *r = &p->rows[i];
    double slot = p->col[LT_LORA_SLOT][i];
    int in = holds(r, 0, r->n_running, p->adapter, p->adapter_hash);
    if (in != 0)
        return in > 0 ? RUNNING : -1.0;
    if (slot == NONE) {
        in = holds(r, r->n_running, r->n_running + r->n_waiting, p->adapter, p->adapter_hash);
        if (in != 0)
            return in > 0 ? WAITING : -1.0;
    }
    return slot;
}

static int lora_add(const lt_pick *p, double w, const double *params, double *score) {
    (void)params;
    if (p->adapter == Py_None)  /* no opinion on base-model requests */
        return 0;
    const Py_ssize_t *idx = p->idx, n = p->n_cand;
    for (Py_ssize_t k = 0; k < n; k++) {
        double l = lora_score(p, idx[k]);
        if (l < 0)
            return -1;
        score[idx[k]] += w * l;
    }
    return 0;
}

static int lora_claims(const lt_pick *p, Py_ssize_t i, const double *params) {
    (void)params;
    if (p->adapter == Py_None)
        return 0;
    double l = lora_score(p, i);
    return l < 0 ? -1 : l >= RUNNING;
}

/* ---- prefix (prefix.py PrefixScorer): prefill saved net of the queue ahead ------------- */

enum { PREFIX_QUEUE_TOKENS, TOKENS_PER_BLOCK };

/* prefix.net_saved of row i holding `blocks` leading blocks; -1.0 on error. */
static double prefix_saved(const lt_pick *p, Py_ssize_t i, PyObject *blocks,
                           const double *params) {
    Py_ssize_t m = PyLong_AsSsize_t(blocks);
    if (m == -1 && PyErr_Occurred())
        return -1.0;
    double per_queued = (double)p->prompt_tokens;  /* uncached.get(address, prompt_tokens) */
    PyObject *u = PyDict_GetItemWithError(p->uncached, p->rows[i].address);
    if (u != NULL) {
        if ((per_queued = PyFloat_AsDouble(u)) == -1.0 && PyErr_Occurred())
            return -1.0;
    } else if (PyErr_Occurred()) {
        return -1.0;
    }
    if (!(per_queued > params[PREFIX_QUEUE_TOKENS]))  /* max(floor, ...) keeps the floor */
        per_queued = params[PREFIX_QUEUE_TOKENS];
    double excess = p->col[LT_QUEUE][i] - p->q_min;
    double saved = (double)m * params[TOKENS_PER_BLOCK];
    double net = saved - excess * per_queued;
    double whole = (double)p->prompt_tokens > saved ? (double)p->prompt_tokens : saved;
    return net > 0 ? net / whole : 0.0;
}

/* Only the matched candidates score above 0: walk `matched`, not every row. */
static int prefix_add(const lt_pick *p, double w, const double *params, double *score) {
    Py_ssize_t it = 0;
    PyObject *address, *blocks;
    while (PyDict_Next(p->matched, &it, &address, &blocks)) {
        PyObject *j_obj = PyDict_GetItemWithError(p->positions, address);
        if (j_obj == NULL) {
            if (PyErr_Occurred())
                return -1;
            continue;
        }
        Py_ssize_t j = PyLong_AsSsize_t(j_obj);
        if (!p->cand[j])
            continue;
        double x = prefix_saved(p, j, blocks, params);
        if (x < 0)
            return -1;
        if (x > 0)
            score[j] += w * x;
    }
    return 0;
}

static int prefix_claims(const lt_pick *p, Py_ssize_t i, const double *params) {
    if (PyDict_GET_SIZE(p->matched) == 0)
        return 0;
    PyObject *blocks = PyDict_GetItemWithError(p->matched, p->rows[i].address);
    if (blocks == NULL)
        return PyErr_Occurred() ? -1 : 0;
    double x = prefix_saved(p, i, blocks, params);
    return x < 0 ? -1 : x > 0;
}

/* ---- the scorers by name --------------------------------------------------------------- */

const lt_scorer lt_scorers[] = {
    {"queue", NULL, queue_add, NULL, {"queue_span", NULL}},
    {"kv", kv_read, kv_add, NULL, {NULL}},
    {"lora", lora_read, lora_add, lora_claims, {NULL}},
    {"prefix", NULL, prefix_add, prefix_claims,
     {"prefix_queue_tokens", "tokens_per_block", NULL}},
    {NULL, NULL, NULL, NULL, {NULL}},
};
