/* The module `contracts._records`: finishing a batch of decoded access-log records in C
 * (exporter/fastjson.py). A field whose value came as a string of ASCII digits gets its
 * number, "-" becomes None; anything else is left for the Python code, which decides it as
 * the reference parser does. Optional: without it the same Python code does everything. */
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

static PyMethodDef module_methods[] = {
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

PyMODINIT_FUNC PyInit__records(void) { return PyModule_Create(&module_def); }
