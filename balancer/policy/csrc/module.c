/* The module `balancer.policy._native`: registers the types and functions of the llm
 * policy's native core (see native.h), and the names of its scorers (SCORERS) and of its
 * pod row's columns (COLUMNS). */
#include "native.h"

static PyMethodDef module_methods[] = {
    {"block_hashes", (PyCFunction)(void (*)(void))lt_block_hashes, METH_FASTCALL,
     "block_hashes(model, prompt, block_bytes=128, max_blocks=256) -> list[int]\n"
     "Chained XXH64 of the prompt's full UTF-8 blocks; the model's hash seeds block 0."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_native",
    "Native core of the llm policy: block hashes, prefix index, pod table.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

static const char *scorer_name(size_t i) { return lt_scorers[i].name; }

static const char *column_name(size_t i) { return i < LT_ROW_WIDTH ? lt_columns[i] : NULL; }

/* module.<attr> = the tuple of names name(0), name(1), ... up to the first NULL. */
static int add_names(PyObject *m, const char *attr, const char *(*name)(size_t)) {
    PyObject *names = PyList_New(0);
    for (size_t i = 0; names != NULL && name(i) != NULL; i++) {
        PyObject *s = PyUnicode_FromString(name(i));
        if (s == NULL || PyList_Append(names, s) < 0)
            Py_CLEAR(names);
        Py_XDECREF(s);
    }
    PyObject *tuple = names ? PyList_AsTuple(names) : NULL;
    Py_XDECREF(names);
    int rc = tuple ? PyModule_AddObjectRef(m, attr, tuple) : -1;
    Py_XDECREF(tuple);
    return rc;
}

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&lt_PrefixIndexType) < 0 || PyType_Ready(&lt_PodTableType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "PrefixIndex", (PyObject *)&lt_PrefixIndexType) < 0 ||
        PyModule_AddObjectRef(m, "PodTable", (PyObject *)&lt_PodTableType) < 0 ||
        add_names(m, "SCORERS", scorer_name) < 0 ||
        add_names(m, "COLUMNS", column_name) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
