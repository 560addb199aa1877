/* The module `balancer.policy._native`: registers the types and functions of the llm
 * policy's native core (see native.h). */
#include "native.h"

static PyMethodDef module_methods[] = {
    {"block_hashes", (PyCFunction)(void (*)(void))lt_block_hashes, METH_FASTCALL,
     "block_hashes(model, prompt, block_chars=128, max_blocks=256) -> list[int]\n"
     "Chained XXH64 of the prompt's full UTF-8 blocks; the model's hash seeds block 0."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_native",
    "Native core of the llm policy: block hashes, prefix index, pod table.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&lt_PrefixIndexType) < 0 || PyType_Ready(&lt_PodTableType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "PrefixIndex", (PyObject *)&lt_PrefixIndexType) < 0 ||
        PyModule_AddObjectRef(m, "PodTable", (PyObject *)&lt_PodTableType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
