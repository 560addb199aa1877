/* The module `contracts._records`: a batch of access-log records finished (`finish`, for
 * exporter/fastjson.py: numbers written as strings of ASCII digits, "-") and counted
 * (`tally`, for contracts/tokens.py: the common record). Whatever is not plain is left to the
 * Python code, which decides it as it always did. Optional: without it the same Python code
 * does everything. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* The longest digit string taken: 10**15 - 1 is below 2**53 (MAX_INT), so every value is
 * exact as an int and as a float, and within the record's bounds. */
#define MAX_DIGITS 15

enum kind { AS_INT, AS_FLOAT, AS_STR };

/* 1: `v` is "-"; 0: it is not. */
static int is_dash(PyObject *v) {
    return PyUnicode_GET_LENGTH(v) == 1 && PyUnicode_READ_CHAR(v, 0) == '-';
}

/* The value of `v` when it is 1..MAX_DIGITS ASCII digits, else -1. */
static long long digits(PyObject *v) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    if (n < 1 || n > MAX_DIGITS || !PyUnicode_IS_ASCII(v))
        return -1;
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(v);
    long long x = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        x = x * 10 + (s[i] - '0');
    }
    return x;
}

/* Finish one field of `rec`: 0 done (or nothing to do), 1 left to Python, -1 error. */
static int finish_field(PyObject *rec, PyObject *name, enum kind kind) {
    PyObject *v = PyObject_GetAttr(rec, name);
    if (v == NULL)
        return -1;
    int rc = 0;
    if (PyUnicode_CheckExact(v)) {
        PyObject *out = NULL;
        long long x;
        if (is_dash(v))
            out = Py_NewRef(Py_None);
        else if (kind == AS_STR)
            out = NULL;  /* any other string is the value */
        else if ((x = digits(v)) < 0)
            rc = 1;
        else if (kind == AS_INT)
            out = PyLong_FromLongLong(x);
        else
            out = PyFloat_FromDouble((double)x);
        if (rc == 0 && kind != AS_STR && out == NULL)
            rc = -1;
        if (out != NULL) {
            rc = PyObject_SetAttr(rec, name, out) < 0 ? -1 : 0;
            Py_DECREF(out);
        }
    }
    Py_DECREF(v);
    return rc;
}

static PyObject *finish(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyList_Check(args[0]) || !PyTuple_Check(args[2]) ||
        !PyTuple_Check(args[3]) || !PyTuple_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "finish(records: list, start: int, ints: tuple, floats: tuple, "
                        "dashes: tuple)");
        return NULL;
    }
    PyObject *recs = args[0];
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    PyObject *groups[3] = {args[2], args[3], args[4]};
    PyObject *left = PyList_New(0);
    if (left == NULL)
        return NULL;
    for (Py_ssize_t i = start < 0 ? 0 : start; i < PyList_GET_SIZE(recs); i++) {
        PyObject *rec = PyList_GET_ITEM(recs, i);
        Py_INCREF(rec);
        int rc = 0;
        for (int g = 0; g < 3 && rc == 0; g++) {
            for (Py_ssize_t f = 0; f < PyTuple_GET_SIZE(groups[g]) && rc == 0; f++)
                rc = finish_field(rec, PyTuple_GET_ITEM(groups[g], f), (enum kind)g);
        }
        Py_DECREF(rec);
        if (rc < 0) {
            Py_DECREF(left);
            return NULL;
        }
        if (rc > 0) {
            PyObject *k = PyLong_FromSsize_t(i);
            if (k == NULL || PyList_Append(left, k) < 0) {
                Py_XDECREF(k);
                Py_DECREF(left);
                return NULL;
            }
            Py_DECREF(k);
        }
    }
    return left;
}

/* ---- tally: TokenCounters.observe_many's common record, counted in C ------------------ */

static PyObject *n_model, *n_code, *n_prompt, *n_completion, *n_ttft, *n_duration, *n_counts,
    *n_buckets, *n_sum;

/* rec.<name> as a new reference when it is None or of exactly `type`; else NULL without an
 * error set (*err stays 0) or NULL with one (*err = 1). */
static PyObject *get_as(PyObject *rec, PyObject *name, PyTypeObject *type, int *err) {
    PyObject *v = PyObject_GetAttr(rec, name);
    if (v == NULL) {
        *err = 1;
        return NULL;
    }
    if (v != Py_None && Py_TYPE(v) != type) {
        Py_DECREF(v);
        return NULL;
    }
    return v;
}

/* A histogram's state for one value `x` (seconds): its counts list, the bucket the value
 * falls in (bisect_left over its buckets) and its sum; 0 when the Hist is not as expected
 * (left to Python), -1 on error. */
typedef struct {
    PyObject *hist, *counts, *sum;
    Py_ssize_t bucket;
    double x;
} hist_step;

static int hist_prepare(PyObject *hist, double x, hist_step *out) {
    out->hist = hist;
    out->x = x;
    out->counts = out->sum = NULL;
    PyObject *buckets = PyObject_GetAttr(hist, n_buckets);
    if (buckets == NULL)
        return -1;
    int rc = 0;
    if (PyTuple_CheckExact(buckets)) {
        Py_ssize_t lo = 0, hi = PyTuple_GET_SIZE(buckets);
        rc = 1;
        while (lo < hi) {
            Py_ssize_t mid = (lo + hi) / 2;
            PyObject *b = PyTuple_GET_ITEM(buckets, mid);
            if (!PyFloat_CheckExact(b)) {
                rc = 0;  /* an int bucket: Python compares it exactly */
                break;
            }
            if (PyFloat_AS_DOUBLE(b) < x)
                lo = mid + 1;
            else
                hi = mid;
        }
        out->bucket = lo;
    }
    Py_DECREF(buckets);
    if (rc != 1)
        return rc;
    out->counts = PyObject_GetAttr(hist, n_counts);
    out->sum = out->counts ? PyObject_GetAttr(hist, n_sum) : NULL;
    if (out->sum == NULL) {
        Py_CLEAR(out->counts);
        return -1;
    }
    if (!PyList_CheckExact(out->counts) || out->bucket >= PyList_GET_SIZE(out->counts) ||
        !PyFloat_CheckExact(out->sum)) {
        Py_CLEAR(out->counts);
        Py_CLEAR(out->sum);
        return 0;
    }
    return 1;
}

static int hist_apply(hist_step *h) {
    PyObject *item = PyList_GET_ITEM(h->counts, h->bucket);
    PyObject *one = PyLong_FromLong(1);
    PyObject *count = one ? PyNumber_Add(item, one) : NULL;
    Py_XDECREF(one);
    if (count == NULL)
        return -1;
    PyList_SetItem(h->counts, h->bucket, count);  /* steals count */
    PyObject *sum = PyFloat_FromDouble(PyFloat_AS_DOUBLE(h->sum) + h->x);
    int rc = sum ? PyObject_SetAttr(h->hist, n_sum, sum) : -1;
    Py_XDECREF(sum);
    return rc;
}

static void hist_release(hist_step *h) {
    Py_CLEAR(h->counts);
    Py_CLEAR(h->sum);
}

/* acc[k] = v if acc[k] is None else acc[k] + v */
static int add_to(PyObject *acc, Py_ssize_t k, PyObject *v) {
    PyObject *old = PyList_GET_ITEM(acc, k);
    PyObject *sum = old == Py_None ? Py_NewRef(v) : PyNumber_Add(old, v);
    if (sum == NULL)
        return -1;
    PyList_SetItem(acc, k, sum);
    return 0;
}

/* One record: 1 counted, 0 left to Python (nothing changed), -1 error. */
static int tally_one(PyObject *rec, PyObject *keys, PyObject *sums, PyObject *cells,
                     long long limit) {
    int err = 0, rc = 0, n_h = 0;
    PyObject *model = NULL, *code = NULL, *p = NULL, *c = NULL, *t = NULL, *d = NULL;
    hist_step hs[2];
    model = PyObject_GetAttr(rec, n_model);
    if (model == NULL)
        return -1;
    if (!PyUnicode_CheckExact(model) || PyUnicode_GET_LENGTH(model) == 0)
        goto done;
    if (!(code = get_as(rec, n_code, &PyLong_Type, &err)))
        goto done;
    if (code != Py_None) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(code, &overflow);
        if (v == 404 || overflow || (v == -1 && PyErr_Occurred()))
            goto done;  /* its own label: Python */
    }
    PyObject *entry = PyDict_GetItemWithError(keys, model);  /* borrowed */
    if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4)
        goto done;
    PyObject *codes = PyTuple_GET_ITEM(entry, 1), *hists = PyTuple_GET_ITEM(entry, 2),
             *acc = PyTuple_GET_ITEM(entry, 3);
    if (!PyDict_CheckExact(codes) || !PyList_CheckExact(hists) || PyList_GET_SIZE(hists) != 2 ||
        !PyList_CheckExact(acc) || PyList_GET_SIZE(acc) != 3)
        goto done;
    if (!(p = get_as(rec, n_prompt, &PyLong_Type, &err)) ||
        !(c = get_as(rec, n_completion, &PyLong_Type, &err)))
        goto done;
    if (p == Py_None && c == Py_None)
        goto done;  /* maybe no token field at all: Python says so */
    PyObject *both[2] = {p, c};
    for (int k = 0; k < 2; k++) {
        if (both[k] == Py_None)
            continue;
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(both[k], &overflow);
        if (overflow || v < 0 || v > limit)
            goto done;  /* rejected usage: Python counts it */
    }
    PyObject *cell = PyDict_GetItemWithError(codes, code);  /* borrowed */
    if (cell == NULL || !PyList_CheckExact(cell) || PyList_GET_SIZE(cell) != 2 ||
        !PyLong_CheckExact(PyList_GET_ITEM(cell, 1)))
        goto done;
    if (!(t = get_as(rec, n_ttft, &PyFloat_Type, &err)) ||
        !(d = get_as(rec, n_duration, &PyFloat_Type, &err)))
        goto done;
    PyObject *xs[2] = {t, d};
    for (int k = 0; k < 2; k++) {
        if (xs[k] == Py_None)
            continue;
        PyObject *hist = PyList_GET_ITEM(hists, k);
        if (hist == Py_None)
            goto done;  /* made by Python on first use */
        int ok = hist_prepare(hist, PyFloat_AS_DOUBLE(xs[k]) / 1000, &hs[n_h]);
        if (ok != 1) {
            err = ok < 0;
            goto done;
        }
        n_h++;
    }
    /* every check passed: count it */
    err = 1;
    if (PyList_GET_ITEM(acc, 0) == Py_None && PyList_GET_ITEM(acc, 1) == Py_None &&
        PyList_Append(sums, acc) < 0)
        goto done;
    if ((p != Py_None && add_to(acc, 0, p) < 0) || (c != Py_None && add_to(acc, 1, c) < 0))
        goto done;
    PyObject *n = PyList_GET_ITEM(cell, 1);
    int zero = PyObject_Not(n);
    if (zero < 0 || (zero && PyList_Append(cells, cell) < 0))
        goto done;
    PyObject *one = PyLong_FromLong(1);
    PyObject *next = one ? PyNumber_Add(n, one) : NULL;
    Py_XDECREF(one);
    if (next == NULL)
        goto done;
    PyList_SetItem(cell, 1, next);
    for (int k = 0; k < n_h; k++)
        if (hist_apply(&hs[k]) < 0)
            goto done;
    err = 0;
    rc = 1;
done:
    for (int k = 0; k < n_h; k++)
        hist_release(&hs[k]);
    Py_DECREF(model);
    Py_XDECREF(code);
    Py_XDECREF(p);
    Py_XDECREF(c);
    Py_XDECREF(t);
    Py_XDECREF(d);
    if (err || PyErr_Occurred())
        return -1;
    return rc;
}

static PyObject *tally(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !(PyList_Check(args[0]) || PyTuple_Check(args[0])) ||
        !PyDict_Check(args[2]) || !PyList_Check(args[3]) || !PyList_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "tally(records: list | tuple, start: int, keys: dict, sums: list, "
                        "cells: list, limit: int)");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    long long limit = PyLong_AsLongLong(args[5]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *recs = args[0];
    for (i = i < 0 ? 0 : i; i < PySequence_Fast_GET_SIZE(recs); i++) {
        PyObject *rec = PySequence_Fast_GET_ITEM(recs, i);
        Py_INCREF(rec);
        int rc = tally_one(rec, args[2], args[3], args[4], limit);
        Py_DECREF(rec);
        if (rc < 0)
            return NULL;
        if (rc == 0)
            break;
    }
    return PyLong_FromSsize_t(i);
}

static PyMethodDef module_methods[] = {
    {"tally", (PyCFunction)(void (*)(void))tally, METH_FASTCALL,
     "tally(records, start, keys, sums, cells, limit) -> int\n"
     "Counts records[start:] as TokenCounters.observe_many does (counters by model only), up\n"
     "to the first record it leaves to Python (a 404, no usage or a rejected one, a model or\n"
     "a code not seen yet, a histogram not made yet); returns that record's position."},
    {"finish", (PyCFunction)(void (*)(void))finish, METH_FASTCALL,
     "finish(records, start, ints, floats, dashes) -> list[int]\n"
     "For records[start:]: each field named in `ints` / `floats` holding a string of up to 15\n"
     "ASCII digits gets its int / float, and \"-\" in any named field becomes None. Returns\n"
     "the positions of the records with a string it did not take (left to Python)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_records",
    "Finishing decoded access-log records in C (numbers written as strings, \"-\").", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__records(void) {
    struct { PyObject **slot; const char *name; } names[] = {
        {&n_model, "model"}, {&n_code, "response_code"}, {&n_prompt, "prompt_tokens"},
        {&n_completion, "completion_tokens"}, {&n_ttft, "ttft_ms"},
        {&n_duration, "duration_ms"}, {&n_counts, "counts"}, {&n_buckets, "buckets"},
        {&n_sum, "sum"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL)
            return NULL;
    return PyModule_Create(&module_def);
}
