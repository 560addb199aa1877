/* PodTable: the per-pod values the llm policy scores (queue, KV cache, adapter slots), kept
 * from pick to pick and re-read only for the pods whose PodState object changed, and
 * `pick`, which filters, scores and ranks a pool in one call. The formulas are those of
 * balancer/policy/{filters,queue,kvcache,lora,prefix}.py, evaluated in the same order so
 * that every score is the same double as the Python reference computes. */
#include "native.h"

#include <string.h>

#define RUNNING 1.0
#define FREE_SLOT 0.8
#define WAITING 0.6
#define NONE 0.0
#define NO_ENDPOINT 503
#define SHED 429

typedef struct {
    PyObject *state;     /* the PodState read (strong ref); NULL = not read yet */
    PyObject *address;   /* state.pod.address (strong ref) */
    PyObject *running;   /* metrics.running_adapters (strong ref), NULL without metrics */
    PyObject *waiting;   /* metrics.waiting_adapters (strong ref), NULL without metrics */
    Py_hash_t *hashes;   /* hash of each running adapter, then of each waiting one */
    Py_ssize_t n_running, n_waiting;
    double queue, kv, kv_usage, slot;  /* PodState.queue, kv_score, kv_usage, slot_score */
    char fresh, ready, usable;         /* usable: ready and last_error is None */
} Row;

typedef struct {
    PyObject_HEAD
    Row *rows;
    Py_ssize_t n;
    double *score;       /* scratch, by row */
    char *cand, *prefix; /* scratch, by row: a candidate; has a prefix score > 0 */
    PyObject *positions; /* address -> row (dict), rebuilt when an address moved */
    int positions_stale;
    int busy;            /* inside pick: re-entry (through randrange) is refused */
} PodTable;

/* attribute names, interned once */
static PyObject *s_queue, *s_kv_usage, *s_fresh, *s_pod, *s_ready, *s_address,
    *s_last_error, *s_metrics, *s_max_lora, *s_running_adapters, *s_waiting_adapters,
    *s_reason_prefix, *s_reason_lora, *s_reason_load;

static int intern_names(void) {
    if (s_queue != NULL)
        return 0;
    struct { PyObject **slot; const char *text; } names[] = {
        {&s_queue, "queue"}, {&s_kv_usage, "kv_usage"}, {&s_fresh, "fresh"},
        {&s_pod, "pod"}, {&s_ready, "ready"}, {&s_address, "address"},
        {&s_last_error, "last_error"}, {&s_metrics, "metrics"}, {&s_max_lora, "max_lora"},
        {&s_running_adapters, "running_adapters"},
        {&s_waiting_adapters, "waiting_adapters"}, {&s_reason_prefix, "llm:prefix"},
        {&s_reason_lora, "llm:lora"}, {&s_reason_load, "llm:load"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].text);
        if (*names[i].slot == NULL)
            return -1;
    }
    return 0;
}

/* ---- rows ------------------------------------------------------------------------------ */

static void row_clear(Row *r) {
    Py_CLEAR(r->state);
    Py_CLEAR(r->address);
    Py_CLEAR(r->running);
    Py_CLEAR(r->waiting);
    PyMem_Free(r->hashes);
    r->hashes = NULL;
    r->n_running = r->n_waiting = 0;
}

static int attr_double(PyObject *o, PyObject *name, double *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int attr_bool(PyObject *o, PyObject *name, char *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    int t = PyObject_IsTrue(v);
    Py_DECREF(v);
    if (t < 0)
        return -1;
    *out = (char)t;
    return 0;
}

/* The adapters of `metrics` as tuples, with their hashes. */
static int read_adapters(Row *r, PyObject *m) {
    PyObject *run = PyObject_GetAttr(m, s_running_adapters);
    PyObject *wait = run ? PyObject_GetAttr(m, s_waiting_adapters) : NULL;
    PyObject *rt = wait ? PySequence_Tuple(run) : NULL;
    PyObject *wt = rt ? PySequence_Tuple(wait) : NULL;
    Py_XDECREF(run);
    Py_XDECREF(wait);
    if (wt == NULL) {
        Py_XDECREF(rt);
        return -1;
    }
    r->running = rt;
    r->waiting = wt;
    r->n_running = PyTuple_GET_SIZE(rt);
    r->n_waiting = PyTuple_GET_SIZE(wt);
    Py_ssize_t total = r->n_running + r->n_waiting;
    r->hashes = PyMem_New(Py_hash_t, total ? total : 1);
    if (r->hashes == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < total; i++) {
        PyObject *a = i < r->n_running ? PyTuple_GET_ITEM(rt, i)
                                       : PyTuple_GET_ITEM(wt, i - r->n_running);
        if ((r->hashes[i] = PyObject_Hash(a)) == -1)
            return -1;
    }
    return 0;
}

/* slot_score: FREE_SLOT without metrics, without a LoRA limit or with a free slot. */
static int read_slot(Row *r, PyObject *m) {
    if (m == Py_None) {
        r->slot = FREE_SLOT;
        return 0;
    }
    PyObject *v = PyObject_GetAttr(m, s_max_lora);
    if (v == NULL)
        return -1;
    Py_ssize_t max_lora = PyNumber_AsSsize_t(v, NULL);
    Py_DECREF(v);
    if (max_lora == -1 && PyErr_Occurred())
        return -1;
    r->slot = (max_lora <= 0 || r->n_running < max_lora) ? FREE_SLOT : NONE;
    return 0;
}

static double kv_score(double u) {  /* kvcache.kv_score */
    return u > 0.0 ? 1.0 - (u <= 1.0 ? u : 1.0) : 1.0;
}

/* Read one PodState into row `r`. On error the row is left cleared (read again later). */
static int row_read(PodTable *t, Row *r, PyObject *state) {
    PyObject *old_address = r->address;
    r->address = NULL;
    row_clear(r);
    PyObject *pod = NULL, *m = NULL, *err = NULL;
    int rc = -1;
    if (attr_double(state, s_queue, &r->queue) < 0 ||
        attr_double(state, s_kv_usage, &r->kv_usage) < 0 ||
        attr_bool(state, s_fresh, &r->fresh) < 0)
        goto done;
    if ((pod = PyObject_GetAttr(state, s_pod)) == NULL ||
        attr_bool(pod, s_ready, &r->ready) < 0 ||
        (r->address = PyObject_GetAttr(pod, s_address)) == NULL ||
        (err = PyObject_GetAttr(state, s_last_error)) == NULL ||
        (m = PyObject_GetAttr(state, s_metrics)) == NULL)
        goto done;
    if (!PyUnicode_Check(r->address)) {
        PyErr_Format(PyExc_TypeError, "PodTable: a pod's address must be str, not %.100s",
                     Py_TYPE(r->address)->tp_name);
        goto done;
    }
    if (m != Py_None && read_adapters(r, m) < 0)
        goto done;
    if (read_slot(r, m) < 0)
        goto done;
    r->usable = r->ready && err == Py_None;
    r->kv = kv_score(r->kv_usage);
    r->state = Py_NewRef(state);
    rc = 0;
done:
    if (rc < 0)
        row_clear(r);
    if (rc < 0 || old_address == NULL || PyUnicode_Compare(old_address, r->address) != 0)
        t->positions_stale = 1;  /* (two str: the comparison cannot fail) */
    Py_XDECREF(old_address);
    Py_XDECREF(pod);
    Py_XDECREF(m);
    Py_XDECREF(err);
    return rc;
}

static int table_resize(PodTable *t, Py_ssize_t n) {
    for (Py_ssize_t i = n; i < t->n; i++)
        row_clear(&t->rows[i]);
    Py_ssize_t want = n ? n : 1;
    Row *rows = PyMem_Resize(t->rows, Row, want);
    if (rows == NULL) {
        t->n = n < t->n ? n : t->n;
        return -1;
    }
    t->rows = rows;
    for (Py_ssize_t i = t->n; i < n; i++)
        memset(&rows[i], 0, sizeof(Row));
    double *score = PyMem_Resize(t->score, double, want);
    if (score != NULL)
        t->score = score;
    char *cand = PyMem_Resize(t->cand, char, want);
    if (cand != NULL)
        t->cand = cand;
    char *prefix = PyMem_Resize(t->prefix, char, want);
    if (prefix != NULL)
        t->prefix = prefix;
    if (score == NULL || cand == NULL || prefix == NULL) {
        t->n = n < t->n ? n : t->n;
        return -1;
    }
    t->n = n;
    t->positions_stale = 1;
    return 0;
}

/* Re-read every row whose PodState is not the object read last time. */
static int table_refresh(PodTable *t, PyObject *pods) {
    Py_ssize_t n = PyTuple_GET_SIZE(pods);
    if (n != t->n && table_resize(t, n) < 0)
        return PyErr_NoMemory(), -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PyTuple_GET_ITEM(pods, i);
        if (s != t->rows[i].state && row_read(t, &t->rows[i], s) < 0)
            return -1;
    }
    if (t->positions_stale) {
        PyObject *pos = PyDict_New();
        if (pos == NULL)
            return -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *k = PyLong_FromSsize_t(i);
            if (k == NULL || PyDict_SetItem(pos, t->rows[i].address, k) < 0) {
                Py_XDECREF(k);
                Py_DECREF(pos);
                return -1;
            }
            Py_DECREF(k);
        }
        Py_XSETREF(t->positions, pos);
        t->positions_stale = 0;
    }
    return 0;
}

/* ---- scoring --------------------------------------------------------------------------- */

/* 1 when `adapter` (hash `h`) is among row items [from, to), 0 if not, -1 on error. */
static int holds(Row *r, Py_ssize_t from, Py_ssize_t to, PyObject *adapter, Py_hash_t h) {
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

/* lora.lora_score for an adapter; -1.0 on error. */
static double lora_score(Row *r, PyObject *adapter, Py_hash_t h) {
    if (r->running == NULL)
        return r->slot;
    int in = holds(r, 0, r->n_running, adapter, h);
    if (in != 0)
        return in > 0 ? RUNNING : -1.0;
    if (r->slot == NONE) {
        in = holds(r, r->n_running, r->n_running + r->n_waiting, adapter, h);
        if (in != 0)
            return in > 0 ? WAITING : -1.0;
    }
    return r->slot;
}

typedef struct {
    double queue_weight, kv_weight, lora_weight, prefix_weight, prefix_queue_tokens,
        queue_threshold, kv_threshold, tokens_per_block;
} Weights;

static int read_weights(PyObject *tuple, Weights *w) {
    double *f = (double *)w;
    Py_ssize_t want = sizeof(Weights) / sizeof(double);
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) != want) {
        PyErr_Format(PyExc_TypeError, "PodTable.pick: weights must be a tuple of %zd numbers",
                     want);
        return -1;
    }
    for (Py_ssize_t i = 0; i < want; i++)
        if ((f[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(tuple, i))) == -1.0 && PyErr_Occurred())
            return -1;
    return 0;
}

/* prefix.net_saved */
static double net_saved(Py_ssize_t matched, double excess, double per_queued,
                        Py_ssize_t prompt_tokens, double tokens_per_block) {
    double saved = (double)matched * tokens_per_block;
    double net = saved - excess * per_queued;
    double whole = (double)prompt_tokens > saved ? (double)prompt_tokens : saved;
    return net > 0 ? net / whole : 0.0;
}

/* Add each matched candidate's prefix score; mark it in t->prefix. */
static int add_prefix(PodTable *t, PyObject *matched, PyObject *uncached,
                      Py_ssize_t prompt_tokens, double q_min, const Weights *w) {
    Py_ssize_t it = 0;
    PyObject *address, *blocks;
    while (PyDict_Next(matched, &it, &address, &blocks)) {
        PyObject *j_obj = PyDict_GetItemWithError(t->positions, address);
        if (j_obj == NULL) {
            if (PyErr_Occurred())
                return -1;
            continue;
        }
        Py_ssize_t j = PyLong_AsSsize_t(j_obj);
        if (!t->cand[j])
            continue;
        Py_ssize_t m = PyLong_AsSsize_t(blocks);
        if (m == -1 && PyErr_Occurred())
            return -1;
        double per_queued = (double)prompt_tokens;  /* uncached.get(address, prompt_tokens) */
        PyObject *u = PyDict_GetItemWithError(uncached, address);
        if (u != NULL) {
            if ((per_queued = PyFloat_AsDouble(u)) == -1.0 && PyErr_Occurred())
                return -1;
        } else if (PyErr_Occurred()) {
            return -1;
        }
        if (!(per_queued > w->prefix_queue_tokens))  /* max(floor, ...) keeps the floor */
            per_queued = w->prefix_queue_tokens;
        double x = net_saved(m, t->rows[j].queue - q_min, per_queued, prompt_tokens,
                             w->tokens_per_block);
        if (x > 0) {
            t->score[j] += w->prefix_weight * x;
            t->prefix[j] = 1;
        }
    }
    return 0;
}

/* Mark the candidates (usable pods, else ready ones); their count. */
static Py_ssize_t mark_candidates(PodTable *t) {
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < t->n; i++)
        count += (t->cand[i] = t->rows[i].usable);
    if (count == 0)
        for (Py_ssize_t i = 0; i < t->n; i++)
            count += (t->cand[i] = t->rows[i].ready);
    return count;
}

/* Scores of the candidates (queue, KV, LoRA; `h` is the adapter's hash); 1 when the pool is saturated for a Sheddable
 * request, 0 otherwise, -1 on error. `*q_min` gets the least candidate queue. */
static int score_candidates(PodTable *t, PyObject *adapter, Py_hash_t h, int sheddable,
                            const Weights *w, double *q_min) {
    double lo = 0, hi = 0;
    int first = 1, room = 0;
    for (Py_ssize_t i = 0; i < t->n; i++) {
        if (!t->cand[i])
            continue;
        Row *r = &t->rows[i];
        if (first || r->queue < lo)  /* as min() and max(): the first of equals stays */
            lo = r->queue;
        if (first || r->queue > hi)
            hi = r->queue;
        first = 0;
        room |= r->fresh && r->queue <= w->queue_threshold && r->kv_usage <= w->kv_threshold;
    }
    *q_min = lo;
    if (sheddable && !room)
        return 1;
    for (Py_ssize_t i = 0; i < t->n; i++) {
        t->prefix[i] = 0;
        if (!t->cand[i])
            continue;
        Row *r = &t->rows[i];
        double qs = hi == lo ? 1.0 : (hi - r->queue) / (hi - lo);
        double s = w->queue_weight * qs + w->kv_weight * r->kv;
        if (adapter != Py_None) {
            double l = lora_score(r, adapter, h);
            if (l < 0)
                return -1;
            s = s + w->lora_weight * l;
        }
        t->score[i] = s;
    }
    return 0;
}

/* The `k + 1` best candidates, best first, ties in row order; their count. */
static Py_ssize_t top_rows(PodTable *t, Py_ssize_t k, Py_ssize_t *top) {
    Py_ssize_t have = 0;
    for (Py_ssize_t i = 0; i < t->n; i++) {
        if (!t->cand[i])
            continue;
        double s = t->score[i];
        Py_ssize_t at = have;
        while (at > 0 && s > t->score[top[at - 1]])
            at--;
        if (at > k)
            continue;
        Py_ssize_t end = have < k + 1 ? have : k;
        memmove(top + at + 1, top + at, (size_t)(end - at) * sizeof(Py_ssize_t));
        top[at] = i;
        if (have < k + 1)
            have++;
    }
    return have;
}

/* llm._ranked_list: the best is drawn among the candidates tied for it (one call of
 * `randrange`, only on a tie); then the rest by score. Writes `k` or fewer rows to `order`. */
static Py_ssize_t rank(PodTable *t, Py_ssize_t k, PyObject *randrange, Py_ssize_t *top,
                       Py_ssize_t *order) {
    Py_ssize_t have = top_rows(t, k, top);
    if (have > 1 && t->score[top[1]] == t->score[top[0]]) {
        double best = t->score[top[0]];
        Py_ssize_t tied = 0;
        for (Py_ssize_t i = 0; i < t->n; i++)
            tied += t->cand[i] && t->score[i] == best;
        PyObject *n = PyLong_FromSsize_t(tied);
        PyObject *drawn = n ? PyObject_CallOneArg(randrange, n) : NULL;
        Py_XDECREF(n);
        Py_ssize_t d = drawn ? PyLong_AsSsize_t(drawn) : -1;
        Py_XDECREF(drawn);
        if (d == -1 && PyErr_Occurred())
            return -1;
        if (d < 0 || d >= tied) {
            PyErr_Format(PyExc_ValueError, "randrange(%zd) returned %zd", tied, d);
            return -1;
        }
        Py_ssize_t first = -1;
        for (Py_ssize_t i = 0; i < t->n && first < 0; i++)
            if (t->cand[i] && t->score[i] == best && d-- == 0)
                first = i;
        Py_ssize_t out = 0;
        order[out++] = first;
        for (Py_ssize_t i = 0; i < have && out < k; i++)
            if (top[i] != first)
                order[out++] = top[i];
        return out;
    }
    Py_ssize_t out = have < k ? have : k;
    memcpy(order, top, (size_t)out * sizeof(Py_ssize_t));
    return out;
}

static PyObject *pick_result(PodTable *t, Py_ssize_t *order, Py_ssize_t count,
                             PyObject *adapter, Py_hash_t h) {
    Row *top = &t->rows[order[0]];
    PyObject *reason;
    if (t->prefix[order[0]]) {
        reason = s_reason_prefix;
    } else if (adapter != Py_None) {
        double l = lora_score(top, adapter, h);
        if (l < 0)
            return NULL;
        reason = l >= 1.0 ? s_reason_lora : s_reason_load;
    } else {
        reason = s_reason_load;
    }
    PyObject *fallbacks = PyTuple_New(count - 1);
    if (fallbacks == NULL)
        return NULL;
    for (Py_ssize_t i = 1; i < count; i++)
        PyTuple_SET_ITEM(fallbacks, i - 1, Py_NewRef(t->rows[order[i]].address));
    return Py_BuildValue("(ONO)", top->state, fallbacks, reason);
}

#define MAX_K 64

static PyObject *do_pick(PodTable *t, PyObject *const *a) {
    PyObject *pods = a[0], *adapter = a[1], *matched = a[2], *uncached = a[5],
             *randrange = a[6];
    Weights w;
    if (!PyTuple_Check(pods) || !PyDict_Check(matched) || !PyDict_Check(uncached)) {
        PyErr_SetString(PyExc_TypeError, "PodTable.pick: pods must be a tuple, matched and "
                        "uncached dicts");
        return NULL;
    }
    Py_ssize_t prompt_tokens = PyLong_AsSsize_t(a[3]);
    int sheddable = PyObject_IsTrue(a[4]);
    Py_ssize_t k = PyLong_AsSsize_t(a[8]);
    if ((prompt_tokens == -1 || k == -1) && PyErr_Occurred())
        return NULL;
    if (sheddable < 0 || read_weights(a[7], &w) < 0)
        return NULL;
    if (k < 1 || k > MAX_K) {
        PyErr_Format(PyExc_ValueError, "PodTable.pick: k must be 1..%d, not %zd", MAX_K, k);
        return NULL;
    }
    if (table_refresh(t, pods) < 0)
        return NULL;
    if (mark_candidates(t) == 0)
        return PyLong_FromLong(NO_ENDPOINT);
    Py_hash_t h = 0;
    if (adapter != Py_None && (h = PyObject_Hash(adapter)) == -1)
        return NULL;
    double q_min;
    int shed = score_candidates(t, adapter, h, sheddable, &w, &q_min);
    if (shed < 0)
        return NULL;
    if (shed)
        return PyLong_FromLong(SHED);
    if (PyDict_GET_SIZE(matched) &&
        add_prefix(t, matched, uncached, prompt_tokens, q_min, &w) < 0)
        return NULL;
    Py_ssize_t top[MAX_K + 1], order[MAX_K];
    Py_ssize_t count = rank(t, k, randrange, top, order);
    if (count < 0)
        return NULL;
    return pick_result(t, order, count, adapter, h);
}

PyDoc_STRVAR(pick_doc,
"pick(pods, adapter, matched, prompt_tokens, sheddable, uncached, randrange, weights, k)\n"
"\n"
"Filter, score and rank `pods` (a tuple of PodState) as the llm policy does. `matched`:\n"
"address -> leading prefix blocks held; `uncached`: address -> moving average of\n"
"uncached prompt tokens; `randrange`: called with n only when n pods tie for the best;\n"
"`weights`: (queue, kv, lora, prefix, prefix_queue_tokens, queue_threshold,\n"
"kv_threshold, tokens_per_block); `k`: pods to return (the pick, then fallbacks).\n"
"Returns (top PodState, fallback addresses, reason), or 503 (no candidate) or 429\n"
"(saturated, for a Sheddable request).");

static PyObject *PodTable_pick(PodTable *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "PodTable.pick takes 9 arguments (%zd given)", nargs);
        return NULL;
    }
    if (t->busy) {
        PyErr_SetString(PyExc_RuntimeError, "PodTable.pick re-entered (from randrange?)");
        return NULL;
    }
    t->busy = 1;
    PyObject *out = do_pick(t, args);
    t->busy = 0;
    return out;
}

/* ---- type ------------------------------------------------------------------------------ */

static int PodTable_traverse(PodTable *t, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < t->n; i++) {
        Py_VISIT(t->rows[i].state);
        Py_VISIT(t->rows[i].running);
        Py_VISIT(t->rows[i].waiting);
    }
    Py_VISIT(t->positions);
    return 0;
}

static int PodTable_clear(PodTable *t) {
    if (t->busy)
        return 0;
    for (Py_ssize_t i = 0; i < t->n; i++)
        row_clear(&t->rows[i]);
    t->n = 0;
    t->positions_stale = 1;
    Py_CLEAR(t->positions);
    return 0;
}

static void PodTable_dealloc(PodTable *t) {
    PyObject_GC_UnTrack(t);
    PodTable_clear(t);
    PyMem_Free(t->rows);
    PyMem_Free(t->score);
    PyMem_Free(t->cand);
    PyMem_Free(t->prefix);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *PodTable_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (intern_names() < 0)
        return NULL;
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "PodTable() takes no arguments");
        return NULL;
    }
    PodTable *t = (PodTable *)type->tp_alloc(type, 0);
    if (t == NULL)
        return NULL;
    t->positions_stale = 1;
    return (PyObject *)t;
}

static PyMethodDef PodTable_methods[] = {
    {"pick", (PyCFunction)(void (*)(void))PodTable_pick, METH_FASTCALL, pick_doc},
    {NULL, NULL, 0, NULL},
};

PyTypeObject lt_PodTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "balancer.policy._native.PodTable",
    .tp_doc = "The llm policy's per-pod values, kept from pick to pick.",
    .tp_basicsize = sizeof(PodTable),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PodTable_new,
    .tp_dealloc = (destructor)PodTable_dealloc,
    .tp_traverse = (traverseproc)PodTable_traverse,
    .tp_clear = (inquiry)PodTable_clear,
    .tp_methods = PodTable_methods,
};
