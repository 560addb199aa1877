/* PodTable: each pod's row (native.h, built by balancer/policy/row.py), kept from pick to
 * pick and re-read only for the pods whose PodState object changed, and `pick`, which
 * filters (balancer/policy/filters.py), scores with the configured scorers (scorers.c) and
 * ranks a pool in one call, every score the same double as the Python reference's. The
 * scorers, their weights and parameters are given by name when the table is made. */
#include "native.h"

#include <string.h>

#define NO_ENDPOINT 503
#define SHED 429

const char *const lt_columns[LT_ROW_WIDTH] = {
    [LT_QUEUE] = "queue", [LT_KV_USAGE] = "kv_usage", [LT_FRESH] = "fresh",
    [LT_READY] = "ready", [LT_USABLE] = "usable", [LT_LORA_FREE] = "lora_free",
};

typedef struct {         /* one configured scorer */
    const lt_scorer *scorer;
    double weight;
    double params[LT_MAX_PARAMS];
    PyObject *reason;    /* "llm:<name>" when it may name a pick's reason, else NULL */
} Term;

typedef struct {
    PyObject_HEAD
    PyObject *row;       /* row.pod_row: PodState -> (address, running, waiting, values) */
    Term *terms;         /* in the configured order: the order scores are added in */
    Py_ssize_t n_terms;
    Py_ssize_t *claims;  /* terms asked whether they decided a pick, in that order */
    Py_ssize_t n_claims;
    double queue_threshold, kv_threshold;  /* saturation (filters.saturated) */
    lt_row *rows;
    double *col[LT_COLUMNS];  /* col[c][i]: column c of row i (native.h, enum lt_column) */
    Py_ssize_t n;
    double *score;       /* scratch, by row */
    char *cand;          /* scratch, by row: a candidate */
    Py_ssize_t *idx;     /* scratch: the candidates' rows, ascending */
    Py_ssize_t n_cand;
    PyObject *positions; /* address -> row (dict), rebuilt when an address moved */
    int positions_stale;
    int busy;            /* inside pick: re-entry (through pod_row or randrange) is refused */
} PodTable;

static PyObject *s_reason_load;

/* ---- rows ------------------------------------------------------------------------------ */

static void row_clear(lt_row *r) {
    Py_CLEAR(r->state);
    Py_CLEAR(r->address);
    Py_CLEAR(r->running);
    Py_CLEAR(r->waiting);
    PyMem_Free(r->hashes);
    r->hashes = NULL;
    r->n_running = r->n_waiting = 0;
}

/* The adapters as tuples, with their hashes. */
static int read_adapters(lt_row *r, PyObject *running, PyObject *waiting) {
    if ((r->running = PySequence_Tuple(running)) == NULL ||
        (r->waiting = PySequence_Tuple(waiting)) == NULL)
        return -1;
    r->n_running = PyTuple_GET_SIZE(r->running);
    r->n_waiting = PyTuple_GET_SIZE(r->waiting);
    Py_ssize_t total = r->n_running + r->n_waiting;
    r->hashes = PyMem_New(Py_hash_t, total ? total : 1);
    if (r->hashes == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < total; i++) {
        PyObject *a = i < r->n_running ? PyTuple_GET_ITEM(r->running, i)
                                       : PyTuple_GET_ITEM(r->waiting, i - r->n_running);
        if ((r->hashes[i] = PyObject_Hash(a)) == -1)
            return -1;
    }
    return 0;
}

/* Fill row i from pod_row's answer `got` (see native.h). */
static int read_row(PodTable *t, Py_ssize_t i, PyObject *got) {
    lt_row *r = &t->rows[i];
    if (!PyTuple_Check(got) || PyTuple_GET_SIZE(got) != 4) {
        PyErr_Format(PyExc_TypeError, "PodTable: pod_row must return (address, running "
                     "adapters, waiting adapters, values), not %.100s", Py_TYPE(got)->tp_name);
        return -1;
    }
    PyObject *address = PyTuple_GET_ITEM(got, 0), *values = PyTuple_GET_ITEM(got, 3);
    if (!PyUnicode_Check(address)) {
        PyErr_Format(PyExc_TypeError, "PodTable: a pod's address must be str, not %.100s",
                     Py_TYPE(address)->tp_name);
        return -1;
    }
    if (!PyTuple_Check(values) || PyTuple_GET_SIZE(values) != LT_ROW_WIDTH) {
        PyErr_Format(PyExc_ValueError, "PodTable: a pod's row must be a tuple of %d values "
                     "(row.COLUMNS), not %.100s of %zd: rebuild the native core "
                     "(pip install -e .)", LT_ROW_WIDTH, Py_TYPE(values)->tp_name,
                     PyTuple_Check(values) ? PyTuple_GET_SIZE(values) : (Py_ssize_t)-1);
        return -1;
    }
    for (Py_ssize_t c = 0; c < LT_ROW_WIDTH; c++) {
        PyObject *x = PyTuple_GET_ITEM(values, c);
        double v = PyFloat_CheckExact(x) ? PyFloat_AS_DOUBLE(x) : PyFloat_AsDouble(x);
        if (v == -1.0 && PyErr_Occurred())
            return -1;
        t->col[c][i] = v;
    }
    r->address = Py_NewRef(address);
    return read_adapters(r, PyTuple_GET_ITEM(got, 1), PyTuple_GET_ITEM(got, 2));
}

/* Read one PodState into row i (pod_row runs Python code: t->busy keeps the table as it
 * is meanwhile). On error the row is left cleared (read again later). */
static int row_read(PodTable *t, Py_ssize_t i, PyObject *state) {
    lt_row *r = &t->rows[i];
    PyObject *old_address = r->address;
    r->address = NULL;
    row_clear(r);
    PyObject *got = PyObject_CallOneArg(t->row, state);
    int rc = got != NULL && read_row(t, i, got) == 0 ? 0 : -1;
    Py_XDECREF(got);
    if (rc == 0) {
        r->state = Py_NewRef(state);
        for (Py_ssize_t s = 0; s < t->n_terms; s++)
            if (t->terms[s].scorer->read != NULL)
                t->terms[s].scorer->read(t->col, i, r);
    } else {
        row_clear(r);
    }
    if (rc < 0 || old_address == NULL || PyUnicode_Compare(old_address, r->address) != 0)
        t->positions_stale = 1;  /* (two str: the comparison cannot fail) */
    Py_XDECREF(old_address);
    return rc;
}

static int table_resize(PodTable *t, Py_ssize_t n) {
    for (Py_ssize_t i = n; i < t->n; i++)
        row_clear(&t->rows[i]);
    Py_ssize_t want = n ? n : 1;
    lt_row *rows = PyMem_Resize(t->rows, lt_row, want);
    if (rows == NULL) {
        t->n = n < t->n ? n : t->n;
        return -1;
    }
    t->rows = rows;
    for (Py_ssize_t i = t->n; i < n; i++)
        memset(&rows[i], 0, sizeof(lt_row));
    double *score = PyMem_Resize(t->score, double, want);
    if (score != NULL)
        t->score = score;
    char *cand = PyMem_Resize(t->cand, char, want);
    if (cand != NULL)
        t->cand = cand;
    Py_ssize_t *idx = PyMem_Resize(t->idx, Py_ssize_t, want);
    if (idx != NULL)
        t->idx = idx;
    int failed = score == NULL || cand == NULL || idx == NULL;
    for (int c = 0; c < LT_COLUMNS; c++) {
        double *col = PyMem_Resize(t->col[c], double, want);
        if (col != NULL)
            t->col[c] = col;
        failed |= col == NULL;
    }
    if (failed) {
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
        if (s != t->rows[i].state && row_read(t, i, s) < 0)
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

/* ---- filters (filters.py) and scores --------------------------------------------------- */

/* Mark and list the rows whose `column` is true, their scores 0.0; their count. */
static Py_ssize_t mark_where(PodTable *t, int column) {
    const double *yes = t->col[column];
    char *cand = t->cand;
    double *score = t->score;
    Py_ssize_t *idx = t->idx, n = t->n, count = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if ((cand[i] = yes[i] != 0.0)) {
            idx[count++] = i;
            score[i] = 0.0;
        }
    return t->n_cand = count;
}

/* The candidates: usable pods, else ready ones (filters.usable); their count. */
static Py_ssize_t mark_candidates(PodTable *t) {
    Py_ssize_t usable = mark_where(t, LT_USABLE);
    return usable ? usable : mark_where(t, LT_READY);
}

/* filters.has_room of row i: fresh, queue <= queue_threshold and KV usage <= kv_threshold. */
static inline int has_room(const PodTable *t, Py_ssize_t i) {
    return t->col[LT_FRESH][i] != 0.0 && t->col[LT_QUEUE][i] <= t->queue_threshold &&
           t->col[LT_KV_USAGE][i] <= t->kv_threshold;
}

/* The candidates' least and greatest queue into `p`; whether some candidate has room
 * (filters.saturated is false). */
static int queue_range(const PodTable *t, lt_pick *p) {
    const double *queue = t->col[LT_QUEUE];
    const Py_ssize_t *idx = t->idx;
    double lo = queue[idx[0]], hi = lo;
    int room = 0;
    for (Py_ssize_t k = 0; k < t->n_cand; k++) {
        double q = queue[idx[k]];
        if (q < lo)  /* as min() and max(): the first of equals stays */
            lo = q;
        if (q > hi)
            hi = q;
        room |= has_room(t, idx[k]);
    }
    p->q_min = lo;
    p->q_max = hi;
    return room;
}

/* A Sheddable request's candidates: only those with room (filters.with_room; some has,
 * queue_range said), with their queue range taken again. */
static void keep_room(PodTable *t, lt_pick *p) {
    Py_ssize_t *idx = t->idx, count = 0;
    for (Py_ssize_t k = 0; k < t->n_cand; k++) {
        Py_ssize_t i = idx[k];
        if (has_room(t, i))
            idx[count++] = i;
        else
            t->cand[i] = 0;
    }
    t->n_cand = p->n_cand = count;
    queue_range(t, p);
}

/* Each candidate's score: 0.0 (mark_where) plus weight x score of each configured scorer,
 * in order (a scorer at weight 0 adds nothing and is skipped). */
static int score_candidates(PodTable *t, const lt_pick *p) {
    for (Py_ssize_t s = 0; s < t->n_terms; s++) {
        const Term *term = &t->terms[s];
        if (term->weight != 0.0 &&
            term->scorer->add(p, term->weight, term->params, t->score) < 0)
            return -1;
    }
    return 0;
}

/* The `k + 1` best candidates, best first, ties in row order; their count. */
static Py_ssize_t top_rows(PodTable *t, Py_ssize_t k, Py_ssize_t *top) {
    Py_ssize_t have = 0;
    for (Py_ssize_t c = 0; c < t->n_cand; c++) {
        Py_ssize_t i = t->idx[c];
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
        for (Py_ssize_t c = 0; c < t->n_cand; c++)
            tied += t->score[t->idx[c]] == best;
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
        for (Py_ssize_t c = 0; c < t->n_cand && first < 0; c++)
            if (t->score[t->idx[c]] == best && d-- == 0)
                first = t->idx[c];
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

/* The reason: the first claiming term's ("llm:<name>"), else "llm:load". */
static PyObject *pick_reason(PodTable *t, const lt_pick *p, Py_ssize_t top) {
    for (Py_ssize_t c = 0; c < t->n_claims; c++) {
        const Term *term = &t->terms[t->claims[c]];
        int yes = term->scorer->claims(p, top, term->params);
        if (yes < 0)
            return NULL;
        if (yes)
            return term->reason;
    }
    return s_reason_load;
}

static PyObject *pick_result(PodTable *t, const lt_pick *p, Py_ssize_t *order,
                             Py_ssize_t count) {
    PyObject *reason = pick_reason(t, p, order[0]);
    if (reason == NULL)
        return NULL;
    PyObject *fallbacks = PyTuple_New(count - 1);
    if (fallbacks == NULL)
        return NULL;
    for (Py_ssize_t i = 1; i < count; i++)
        PyTuple_SET_ITEM(fallbacks, i - 1, Py_NewRef(t->rows[order[i]].address));
    return Py_BuildValue("(ONO)", t->rows[order[0]].state, fallbacks, reason);
}

#define MAX_K 64

static PyObject *do_pick(PodTable *t, PyObject *const *a) {
    PyObject *pods = a[0], *adapter = a[1], *matched = a[2], *uncached = a[5],
             *randrange = a[6];
    if (!PyTuple_Check(pods) || !PyDict_Check(matched) || !PyDict_Check(uncached)) {
        PyErr_SetString(PyExc_TypeError, "PodTable.pick: pods must be a tuple, matched and "
                        "uncached dicts");
        return NULL;
    }
    Py_ssize_t prompt_tokens = PyLong_AsSsize_t(a[3]);
    int sheddable = PyObject_IsTrue(a[4]);
    Py_ssize_t k = PyLong_AsSsize_t(a[7]);
    if ((prompt_tokens == -1 || k == -1) && PyErr_Occurred())
        return NULL;
    if (sheddable < 0)
        return NULL;
    if (k < 1 || k > MAX_K) {
        PyErr_Format(PyExc_ValueError, "PodTable.pick: k must be 1..%d, not %zd", MAX_K, k);
        return NULL;
    }
    if (t->row == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "PodTable.pick: the table was cleared");
        return NULL;
    }
    if (table_refresh(t, pods) < 0)
        return NULL;
    if (mark_candidates(t) == 0)
        return PyLong_FromLong(NO_ENDPOINT);
    lt_pick p = {.col = (const double *const *)t->col, .rows = t->rows, .cand = t->cand,
                 .idx = t->idx, .n_cand = t->n_cand, .positions = t->positions,
                 .adapter = adapter, .matched = matched, .uncached = uncached,
                 .prompt_tokens = prompt_tokens};
    if (adapter != Py_None && (p.adapter_hash = PyObject_Hash(adapter)) == -1)
        return NULL;
    if (!queue_range(t, &p) && sheddable)
        return PyLong_FromLong(SHED);
    if (sheddable)
        keep_room(t, &p);
    if (score_candidates(t, &p) < 0)
        return NULL;
    Py_ssize_t top[MAX_K + 1], order[MAX_K];
    Py_ssize_t count = rank(t, k, randrange, top, order);
    if (count < 0)
        return NULL;
    return pick_result(t, &p, order, count);
}

PyDoc_STRVAR(pick_doc,
"pick(pods, adapter, matched, prompt_tokens, sheddable, uncached, randrange, k)\n"
"\n"
"Filter, score and rank `pods` (a tuple of PodState) as the llm policy does. `matched`:\n"
"address -> leading prefix blocks held; `uncached`: address -> moving average of\n"
"uncached prompt tokens; `randrange`: called with n only when n pods tie for the best;\n"
"`k`: pods to return (the pick, then fallbacks).\n"
"Returns (top PodState, fallback addresses, reason), or 503 (no candidate) or 429\n"
"(saturated, for a Sheddable request).");

static PyObject *PodTable_pick(PodTable *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "PodTable.pick takes 8 arguments (%zd given)", nargs);
        return NULL;
    }
    if (t->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "PodTable.pick re-entered (from pod_row or randrange?)");
        return NULL;
    }
    t->busy = 1;
    PyObject *out = do_pick(t, args);
    t->busy = 0;
    return out;
}

/* ---- making a table: the row's columns, the scorers and their parameters, by name ------ */

/* The columns `row.COLUMNS` names must be this core's, in its order. */
static int check_columns(PyObject *columns) {
    PyObject *seq = PySequence_Fast(columns, "PodTable: columns must be a sequence of str "
                                    "(row.COLUMNS)");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int rc = 0;
    if (n != LT_ROW_WIDTH) {
        PyErr_Format(PyExc_ValueError, "PodTable: row.COLUMNS has %zd columns but this "
                     "native core reads %d (csrc/native.h): rebuild it (pip install -e .)",
                     n, LT_ROW_WIDTH);
        rc = -1;
    }
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        PyObject *c = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyUnicode_Check(c) || PyUnicode_CompareWithASCIIString(c, lt_columns[i]) != 0) {
            PyErr_Format(PyExc_ValueError, "PodTable: column %zd is %R in row.COLUMNS but "
                         "%s in this native core (csrc/native.h): rebuild it "
                         "(pip install -e .)", i, c, lt_columns[i]);
            rc = -1;
        }
    }
    Py_DECREF(seq);
    return rc;
}

static const lt_scorer *find_scorer(PyObject *name) {
    for (const lt_scorer *s = lt_scorers; s->name != NULL; s++)
        if (PyUnicode_CompareWithASCIIString(name, s->name) == 0)
            return s;
    return NULL;
}

/* params[name] as a double; `reader` says who needs it. */
static int read_param(PyObject *params, const char *name, const char *reader, double *out) {
    PyObject *key = PyUnicode_FromString(name);
    if (key == NULL)
        return -1;
    PyObject *v = PyDict_GetItemWithError(params, key);
    Py_DECREF(key);
    if (v == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "PodTable: params lacks %s, which %s reads",
                         name, reader);
        return -1;
    }
    *out = PyFloat_AsDouble(v);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* 1 when some part of the table reads parameter `key`. */
static int param_known(const PodTable *t, PyObject *key) {
    if (PyUnicode_CompareWithASCIIString(key, "queue_threshold") == 0 ||
        PyUnicode_CompareWithASCIIString(key, "kv_threshold") == 0)
        return 1;
    for (Py_ssize_t s = 0; s < t->n_terms; s++)
        for (const char *const *q = t->terms[s].scorer->params; *q != NULL; q++)
            if (PyUnicode_CompareWithASCIIString(key, *q) == 0)
                return 1;
    return 0;
}

/* The configured scorers (name -> weight, in order) with their parameters. */
static int set_terms(PodTable *t, PyObject *scorers, PyObject *params) {
    Py_ssize_t room = PyDict_GET_SIZE(scorers);
    t->terms = PyMem_Calloc((size_t)(room + 1), sizeof(Term));
    if (t->terms == NULL)
        return PyErr_NoMemory(), -1;
    Py_ssize_t it = 0;
    PyObject *name, *weight;
    while (PyDict_Next(scorers, &it, &name, &weight)) {
        if (t->n_terms == room) {  /* a weight's __float__ added scorers */
            PyErr_SetString(PyExc_RuntimeError, "PodTable: scorers changed while read");
            return -1;
        }
        Term *term = &t->terms[t->n_terms];
        if (!PyUnicode_Check(name) || (term->scorer = find_scorer(name)) == NULL) {
            PyErr_Format(PyExc_ValueError, "PodTable: scorer %R has no native twin "
                         "(csrc/scorers.c)", name);
            return -1;
        }
        t->n_terms++;
        if ((term->weight = PyFloat_AsDouble(weight)) == -1.0 && PyErr_Occurred())
            return -1;
        for (int q = 0; term->scorer->params[q] != NULL; q++)
            if (read_param(params, term->scorer->params[q], term->scorer->name,
                           &term->params[q]) < 0)
                return -1;
    }
    it = 0;
    while (PyDict_Next(params, &it, &name, &weight))
        if (!PyUnicode_Check(name) || !param_known(t, name)) {
            PyErr_Format(PyExc_ValueError, "PodTable: unknown parameter %R (neither the "
                         "filters nor a configured scorer reads it)", name);
            return -1;
        }
    return read_param(params, "queue_threshold", "the saturation filter",
                      &t->queue_threshold) < 0 ||
           read_param(params, "kv_threshold", "the saturation filter", &t->kv_threshold) < 0
        ? -1 : 0;
}

/* The terms asked, in this order, whether they decided a pick (named by `reasons`). */
static int set_claims(PodTable *t, PyObject *reasons) {
    PyObject *seq = PySequence_Fast(reasons, "PodTable: reasons must be a sequence of "
                                    "scorer names");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    t->claims = PyMem_New(Py_ssize_t, n ? n : 1);
    int rc = t->claims == NULL ? (PyErr_NoMemory(), -1) : 0;
    for (Py_ssize_t c = 0; rc == 0 && c < n; c++) {
        PyObject *name = PySequence_Fast_GET_ITEM(seq, c);
        Py_ssize_t s = 0;
        while (s < t->n_terms && !(PyUnicode_Check(name) &&
               PyUnicode_CompareWithASCIIString(name, t->terms[s].scorer->name) == 0))
            s++;
        Term *term = s < t->n_terms ? &t->terms[s] : NULL;
        if (term == NULL || term->scorer->claims == NULL || term->reason != NULL) {
            PyErr_Format(PyExc_ValueError, "PodTable: reason %R is not a configured scorer "
                         "that can decide a pick, or is named twice", name);
            rc = -1;
        } else if ((term->reason = PyUnicode_FromFormat("llm:%s", term->scorer->name))
                   == NULL) {
            rc = -1;
        } else {
            PyUnicode_InternInPlace(&term->reason);
            t->claims[t->n_claims++] = s;
        }
    }
    Py_DECREF(seq);
    return rc;
}

/* ---- type ------------------------------------------------------------------------------ */

static int PodTable_traverse(PodTable *t, visitproc visit, void *arg) {
    Py_VISIT(t->row);
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
    Py_CLEAR(t->row);
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
    for (Py_ssize_t s = 0; s < t->n_terms; s++)
        Py_XDECREF(t->terms[s].reason);
    PyMem_Free(t->terms);
    PyMem_Free(t->claims);
    PyMem_Free(t->rows);
    PyMem_Free(t->score);
    PyMem_Free(t->cand);
    PyMem_Free(t->idx);
    for (int c = 0; c < LT_COLUMNS; c++)
        PyMem_Free(t->col[c]);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *PodTable_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"row", "columns", "scorers", "reasons", "params", NULL};
    PyObject *row, *columns, *scorers, *reasons, *params;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO!OO!:PodTable", kwlist, &row, &columns,
                                     &PyDict_Type, &scorers, &reasons, &PyDict_Type, &params))
        return NULL;
    if (!PyCallable_Check(row)) {
        PyErr_SetString(PyExc_TypeError, "PodTable: row must be callable (row.pod_row)");
        return NULL;
    }
    if (s_reason_load == NULL &&
        (s_reason_load = PyUnicode_InternFromString("llm:load")) == NULL)
        return NULL;
    if (check_columns(columns) < 0)
        return NULL;
    PodTable *t = (PodTable *)type->tp_alloc(type, 0);
    if (t == NULL)
        return NULL;
    t->positions_stale = 1;
    t->row = Py_NewRef(row);
    if (set_terms(t, scorers, params) < 0 || set_claims(t, reasons) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    return (PyObject *)t;
}

static PyMethodDef PodTable_methods[] = {
    {"pick", (PyCFunction)(void (*)(void))PodTable_pick, METH_FASTCALL, pick_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(table_doc,
"PodTable(row, columns, scorers, reasons, params)\n"
"\n"
"One pool's rows, kept from pick to pick. `row`: row.pod_row; `columns`: row.COLUMNS\n"
"(checked against this core's); `scorers`: name -> weight, in the order their terms are\n"
"added (each needs a native twin, see SCORERS); `reasons`: the scorers asked, in order,\n"
"whether they decided a pick; `params`: name -> number, queue_threshold and kv_threshold\n"
"and what each scorer reads.");

PyTypeObject lt_PodTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "balancer.policy._native.PodTable",
    .tp_doc = table_doc,
    .tp_basicsize = sizeof(PodTable),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PodTable_new,
    .tp_dealloc = (destructor)PodTable_dealloc,
    .tp_traverse = (traverseproc)PodTable_traverse,
    .tp_clear = (inquiry)PodTable_clear,
    .tp_methods = PodTable_methods,
};
