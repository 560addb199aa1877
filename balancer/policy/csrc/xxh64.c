/* XXH64 (the xxHash specification, written from it) and `block_hashes`, the chained
 * hashes of a prompt's blocks that key the prefix index. Same values as the `xxhash`
 * package and balancer.policy.prefix.block_hashes. */
#include "native.h"

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t read64(const uint8_t *p) {  /* little-endian, any alignment */
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static inline uint32_t read32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline uint64_t round64(uint64_t acc, uint64_t input) {
    acc += input * P2;
    acc = rotl(acc, 31);
    return acc * P1;
}

static inline uint64_t merge64(uint64_t acc, uint64_t val) {
    acc ^= round64(0, val);
    return acc * P1 + P4;
}

uint64_t lt_xxh64(const void *data, size_t len, uint64_t seed) {
    const uint8_t *p = (const uint8_t *)data, *end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        const uint8_t *limit = end - 32;
        do {
            v1 = round64(v1, read64(p));
            v2 = round64(v2, read64(p + 8));
            v3 = round64(v3, read64(p + 16));
            v4 = round64(v4, read64(p + 24));
            p += 32;
        } while (p <= limit);
        h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
        h = merge64(h, v1);
        h = merge64(h, v2);
        h = merge64(h, v3);
        h = merge64(h, v4);
    } else {
        h = seed + P5;
    }
    h += (uint64_t)len;
    while (p + 8 <= end) {
        h ^= round64(0, read64(p));
        h = rotl(h, 27) * P1 + P4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)read32(p) * P1;
        h = rotl(h, 23) * P2 + P3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)(*p) * P5;
        h = rotl(h, 11) * P1;
        p++;
    }
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

/* UTF-8 of `s` as the Python reference encodes it (the model strictly, the prompt with
 * "surrogatepass"): a new bytes object. */
static PyObject *utf8_bytes(PyObject *s, const char *what, const char *errors) {
    if (!PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "block_hashes: %s must be str, not %.100s", what,
                     Py_TYPE(s)->tp_name);
        return NULL;
    }
    return PyUnicode_AsEncodedString(s, "utf-8", errors);
}

/* A size argument; below `least` it is a ValueError naming `what`. */
static int size_arg(PyObject *o, const char *what, Py_ssize_t least, Py_ssize_t *out) {
    Py_ssize_t v = PyLong_AsSsize_t(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < least) {
        PyErr_Format(PyExc_ValueError, "block_hashes: %s must be at least %zd, not %zd",
                     what, least, v);
        return -1;
    }
    *out = v;
    return 0;
}

PyObject *lt_block_hashes(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    Py_ssize_t block = 128, max_blocks = 256;
    if (nargs < 2 || nargs > 4) {
        PyErr_Format(PyExc_TypeError,
                     "block_hashes(model, prompt, block_bytes=128, max_blocks=256) takes "
                     "2 to 4 positional arguments (%zd given)", nargs);
        return NULL;
    }
    if ((nargs > 2 && size_arg(args[2], "block_bytes", 1, &block) < 0) ||
        (nargs > 3 && size_arg(args[3], "max_blocks", PY_SSIZE_T_MIN, &max_blocks) < 0))
        return NULL;
    if (max_blocks < 0)  /* as the reference: no blocks */
        max_blocks = 0;
    PyObject *model = utf8_bytes(args[0], "model", "strict");
    if (model == NULL)
        return NULL;
    uint64_t h = lt_xxh64(PyBytes_AS_STRING(model), (size_t)PyBytes_GET_SIZE(model), 0);
    Py_DECREF(model);
    PyObject *prompt;
    const char *data;
    Py_ssize_t size;
    if (PyUnicode_Check(args[1]) && PyUnicode_IS_ASCII(args[1])) {  /* no copy needed */
        prompt = Py_NewRef(args[1]);
        data = (const char *)PyUnicode_DATA(args[1]);
        size = PyUnicode_GET_LENGTH(args[1]);
    } else {
        prompt = utf8_bytes(args[1], "prompt", "surrogatepass");
        if (prompt == NULL)
            return NULL;
        data = PyBytes_AS_STRING(prompt);
        size = PyBytes_GET_SIZE(prompt);
    }
    Py_ssize_t n = size / block;
    if (n > max_blocks)
        n = max_blocks;
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        Py_DECREF(prompt);
        return NULL;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        h = lt_xxh64(data + k * block, (size_t)block, h);
        PyObject *v = PyLong_FromUnsignedLongLong(h);
        if (v == NULL) {
            Py_DECREF(out);
            Py_DECREF(prompt);
            return NULL;
        }
        PyList_SET_ITEM(out, k, v);
    }
    Py_DECREF(prompt);
    return out;
}
