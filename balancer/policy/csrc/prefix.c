/* PrefixIndex: which pods were recently sent which prompt-block hashes, with a per-pod LRU.
 * The native twin of balancer.policy.prefix.PrefixIndex (the reference): same entries, same
 * evictions, same match results. */
#include "native.h"

#include <limits.h>
#include <string.h>

/* Layout. A pod is interned to a small id (`ids`: address -> id, `pods[id]`). Each entry
 * (hash, pod) is a Node, linked into its pod's LRU list (oldest first). A hash table of
 * Slots, keyed by hash, holds each distinct hash with the (pod, node) pairs of its holders,
 * sorted by pod id: `match` intersects these sorted runs, `add` finds a pod's entry by
 * binary search. Nodes and pods are recycled through free lists. No Python code runs
 * while the structure is half-updated: iterating a `hashes` argument happens before, and
 * releasing it after; in between there are only dict operations on exact str keys and
 * allocations of ints (and of match's dict, made before its walk). */

#define NIL UINT32_MAX            /* "no node" / "no pod" */
#define MAX_IDS (UINT32_MAX - 1)  /* node and pod ids are uint32_t below NIL */
#define MIN_SLOTS 16              /* hash table size: a power of two, at least this */
#define DEFAULT_LRU 31250         /* balancer.policy.prefix.LRU_PER_POD */

typedef struct {
    uint32_t pod, node;
} Holder;

typedef struct {
    uint64_t hash;
    uint32_t pod;
    uint32_t prev, next; /* this pod's LRU neighbours, NIL at the ends; a free node's
                          * `next` links the free list */
} Node;

/* A distinct hash and its holders, sorted by pod id. n == 0 marks an empty slot. While
 * cap <= 1 the single holder is stored inline (most hashes have exactly one holder). */
typedef struct {
    uint64_t hash;
    uint32_t n, cap;
    union {
        Holder one;
        Holder *many;
    } h;
} Slot;

typedef struct {
    Py_ssize_t k; /* leading blocks held */
    uint32_t pod;
} Matched;

typedef struct {
    PyObject *address; /* strong ref, an exact str; NULL while the id is free */
    uint32_t oldest, newest, count;
    uint32_t next_free; /* free list of pod ids */
} Pod;

typedef struct {
    PyObject_HEAD
    PyObject *lru_obj; /* lru_per_pod as the caller set it (an int) */
    Py_ssize_t lru;    /* its value, clamped to PY_SSIZE_T_MAX */
    PyObject *ids;     /* dict: address -> pod id (int) */
    Pod *pods;
    uint32_t npods, podcap, free_pod; /* npods: ids ever handed out (high-water mark) */
    Node *nodes;
    uint32_t nnodes, nodecap, free_node;
    Slot *slots;
    size_t mask, used; /* table size - 1; distinct hashes (= non-empty slots) */
    int shift;         /* 64 - log2(table size) */
    uint64_t *hbuf;    /* scratch: the hashes argument, converted */
    size_t hcap;
    uint32_t *alive;   /* scratch: match's pods still holding every block so far */
    size_t acap;
    Matched *res;      /* scratch: match's result */
    size_t rcap;
} PrefixIndex;

/* ---- memory ------------------------------------------------------------------------- */

/* `buf`, an array of `*cap` items of `size` bytes, able to hold at least `need` items
 * (growing by half again): the array, perhaps moved, with *cap updated; or NULL with
 * MemoryError and `buf` untouched. `max` bounds the count (ids must stay below NIL). */
static void *grow(void *buf, size_t *cap, size_t need, size_t size, size_t max) {
    if (need <= *cap)
        return buf;
    if (need > max || need > PY_SSIZE_T_MAX / size)
        return PyErr_NoMemory();
    size_t n = *cap + *cap / 2; /* no overflow: *cap <= PY_SSIZE_T_MAX / size */
    if (n < need)
        n = need;
    if (n < 8)
        n = 8;
    if (n > max)
        n = max;
    if (n > PY_SSIZE_T_MAX / size)
        n = need;
    void *p = PyMem_Realloc(buf, n * size);
    if (p == NULL)
        return PyErr_NoMemory();
    *cap = n;
    return p;
}

/* ---- the hash table: hash -> holders -------------------------------------------------- */

static inline size_t home(const PrefixIndex *self, uint64_t h) {
    /* Fibonacci hashing: spreads small or patterned keys too (tests use 0, 1, 2, ...) */
    return (size_t)((h * 0x9E3779B97F4A7C15ULL) >> self->shift);
}

static inline Holder *holders(Slot *s) { return s->cap <= 1 ? &s->h.one : s->h.many; }

static Slot *find(const PrefixIndex *self, uint64_t h) {
    for (size_t i = home(self, h);; i = (i + 1) & self->mask) {
        Slot *s = &self->slots[i];
        if (s->n == 0)
            return NULL;
        if (s->hash == h)
            return s;
    }
}

/* The slot of `h`, or the empty slot where it would go. */
static Slot *find_or_empty(const PrefixIndex *self, uint64_t h) {
    for (size_t i = home(self, h);; i = (i + 1) & self->mask) {
        Slot *s = &self->slots[i];
        if (s->n == 0 || s->hash == h)
            return s;
    }
}

/* Rehash into a table of `size` slots (a power of two holding `used` at load <= 0.7). */
static int rehash(PrefixIndex *self, size_t size) {
    if (size > PY_SSIZE_T_MAX / sizeof(Slot)) {
        PyErr_NoMemory();
        return -1;
    }
    Slot *old = self->slots, *fresh = PyMem_Calloc(size, sizeof(Slot));
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t oldsize = self->mask + 1;
    int bits = 0;
    while (((size_t)1 << bits) < size)
        bits++;
    self->slots = fresh;
    self->mask = size - 1;
    self->shift = 64 - bits;
    for (size_t i = 0; i < oldsize; i++)
        if (old[i].n != 0)
            *find_or_empty(self, old[i].hash) = old[i];
    PyMem_Free(old);
    return 0;
}

/* Room for one more distinct hash at load <= 0.7. Slot pointers are invalid afterwards. */
static int room_for_one(PrefixIndex *self) {
    size_t size = self->mask + 1;
    if ((self->used + 1) * 10 <= size * 7)
        return 0;
    if (size > (size_t)PY_SSIZE_T_MAX / 2) {
        PyErr_NoMemory();
        return -1;
    }
    return rehash(self, size * 2);
}

/* After removals: once the table is at most 1/16 full, halve it until it is over 1/16 full
 * (so at most 1/8; it grows again only at 0.7). Best effort. */
static void maybe_shrink(PrefixIndex *self) {
    size_t size = self->mask + 1, to = size;
    while (to > MIN_SLOTS && self->used * 8 <= to / 2)
        to /= 2;
    if (to < size && rehash(self, to) < 0)
        PyErr_Clear(); /* a bigger table than needed is fine */
}

/* Empty slot `s` and shift later members of its probe run back so that every key stays
 * reachable from its home slot without tombstones. */
static void delete_slot(PrefixIndex *self, Slot *s) {
    size_t i = (size_t)(s - self->slots), j = i, mask = self->mask;
    for (;;) {
        j = (j + 1) & mask;
        Slot *t = &self->slots[j];
        if (t->n == 0)
            break;
        /* t may fill the hole at i if i lies between its home and j (cyclically) */
        size_t k = home(self, t->hash);
        if (((j - k) & mask) >= ((j - i) & mask)) {
            self->slots[i] = *t;
            i = j;
        }
    }
    memset(&self->slots[i], 0, sizeof(Slot));
    self->used--;
}

/* First position in a[0..n) whose pod is >= pod. */
static inline uint32_t lower_bound(const Holder *a, uint32_t n, uint32_t pod) {
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (a[mid].pod < pod)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Insert holder (pod, node) at position `at` of a non-empty slot. MemoryError: unchanged. */
static int holder_insert(Slot *s, uint32_t at, uint32_t pod, uint32_t node) {
    if (s->n == s->cap) {
        if (s->cap == 1) {
            Holder *a = PyMem_Malloc(4 * sizeof(Holder));
            if (a == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            a[0] = s->h.one;
            s->h.many = a;
            s->cap = 4;
        } else {
            size_t cap = s->cap;
            Holder *a = grow(s->h.many, &cap, (size_t)s->n + 1, sizeof(Holder), MAX_IDS);
            if (a == NULL)
                return -1;
            s->h.many = a;
            s->cap = (uint32_t)cap;
        }
    }
    Holder *a = holders(s);
    memmove(a + at + 1, a + at, (size_t)(s->n - at) * sizeof(Holder));
    a[at].pod = pod;
    a[at].node = node;
    s->n++;
    return 0;
}

/* Remove the holder at position `at`; back to inline storage at one holder. The caller
 * deletes the slot when none is left. */
static void holder_remove(Slot *s, uint32_t at) {
    Holder *a = holders(s);
    memmove(a + at, a + at + 1, (size_t)(s->n - at - 1) * sizeof(Holder));
    s->n--;
    if (s->n == 1 && s->cap > 1) {
        Holder last = a[0];
        PyMem_Free(a);
        s->h.one = last;
        s->cap = 1;
    }
}

/* ---- nodes and pods ----------------------------------------------------------------- */

static uint32_t node_alloc(PrefixIndex *self) {
    uint32_t id = self->free_node;
    if (id != NIL) {
        self->free_node = self->nodes[id].next;
        return id;
    }
    size_t cap = self->nodecap;
    Node *a = grow(self->nodes, &cap, (size_t)self->nnodes + 1, sizeof(Node), MAX_IDS);
    if (a == NULL)
        return NIL;
    self->nodes = a;
    self->nodecap = (uint32_t)cap;
    return self->nnodes++;
}

static void node_free(PrefixIndex *self, uint32_t id) {
    self->nodes[id].next = self->free_node;
    self->free_node = id;
}

static void lru_append(PrefixIndex *self, Pod *p, uint32_t id) {
    Node *n = &self->nodes[id];
    n->prev = p->newest;
    n->next = NIL;
    if (p->newest != NIL)
        self->nodes[p->newest].next = id;
    else
        p->oldest = id;
    p->newest = id;
}

static void lru_unlink(PrefixIndex *self, Pod *p, uint32_t id) {
    Node *n = &self->nodes[id];
    if (n->prev != NIL)
        self->nodes[n->prev].next = n->next;
    else
        p->oldest = n->next;
    if (n->next != NIL)
        self->nodes[n->next].prev = n->prev;
    else
        p->newest = n->prev;
}

/* Drop node `id` from its hash's holders (and the hash from the table when it was the last
 * holder). The caller unlinks it from the LRU list and frees it. */
static void unhold(PrefixIndex *self, uint32_t id) {
    Node *n = &self->nodes[id];
    Slot *s = find(self, n->hash);
    uint32_t at = lower_bound(holders(s), s->n, n->pod); /* present: every node is held */
    holder_remove(s, at);
    if (s->n == 0)
        delete_slot(self, s);
}

/* The exact str an address argument stands for (a new reference), or NULL: TypeError.
 * A str subclass is copied to an exact str so that dict lookups run no Python code. */
static PyObject *address_arg(PyObject *o, const char *fname) {
    if (PyUnicode_CheckExact(o))
        return Py_NewRef(o);
    if (PyUnicode_Check(o))
        return PyUnicode_FromObject(o);
    PyErr_Format(PyExc_TypeError, "PrefixIndex.%s: address must be str, not %.100s", fname,
                 Py_TYPE(o)->tp_name);
    return NULL;
}

/* Pod id of `address` (an exact str): NIL when unknown, or on error with an exception. */
static uint32_t pod_lookup(PrefixIndex *self, PyObject *address) {
    PyObject *v = PyDict_GetItemWithError(self->ids, address); /* borrowed */
    if (v == NULL)
        return NIL;
    return (uint32_t)PyLong_AsUnsignedLong(v); /* ids are ours: always in range */
}

/* Pod id of `address`, interning it when new. NIL: MemoryError, nothing changed. */
static uint32_t pod_intern(PrefixIndex *self, PyObject *address) {
    uint32_t id = pod_lookup(self, address);
    if (id != NIL || PyErr_Occurred())
        return id;
    id = self->free_pod;
    if (id == NIL) {
        size_t cap = self->podcap;
        Pod *a = grow(self->pods, &cap, (size_t)self->npods + 1, sizeof(Pod), MAX_IDS);
        if (a == NULL)
            return NIL;
        self->pods = a;
        self->podcap = (uint32_t)cap;
        id = self->npods;
    }
    PyObject *v = PyLong_FromUnsignedLong(id);
    if (v == NULL)
        return NIL;
    int rc = PyDict_SetItem(self->ids, address, v);
    Py_DECREF(v);
    if (rc < 0)
        return NIL;
    if (id == self->npods)
        self->npods++;
    else
        self->free_pod = self->pods[id].next_free;
    Pod *p = &self->pods[id];
    p->address = Py_NewRef(address);
    p->oldest = p->newest = NIL;
    p->count = 0;
    p->next_free = NIL;
    return id;
}

/* ---- arguments ---------------------------------------------------------------------- */

/* Vectorcall arguments into out[0..nnames): positional first, then keywords by name; NULL
 * for one not given. The first `required` are mandatory. */
static int parse_args(const char *fname, const char *const *names, Py_ssize_t nnames,
                      Py_ssize_t required, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames, PyObject **out) {
    if (nargs > nnames) {
        PyErr_Format(PyExc_TypeError,
                     "PrefixIndex.%s() takes at most %zd arguments (%zd given)", fname, nnames,
                     nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nnames; i++)
        out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t i = 0;
        while (i < nnames && PyUnicode_CompareWithASCIIString(key, names[i]) != 0)
            i++;
        if (i == nnames) {
            PyErr_Format(PyExc_TypeError,
                         "PrefixIndex.%s() got an unexpected keyword argument '%U'", fname,
                         key);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "PrefixIndex.%s() got multiple values for argument '%s'", fname,
                         names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (Py_ssize_t i = 0; i < required; i++)
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError,
                         "PrefixIndex.%s() missing required argument '%s'", fname, names[i]);
            return -1;
        }
    return 0;
}

/* A bound on a pod's entries (lru_per_pod, limit): an int >= 0; beyond PY_SSIZE_T_MAX
 * it bounds nothing, so it is clamped there. */
static int bound_arg(PyObject *o, const char *what, Py_ssize_t *out) {
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "PrefixIndex: %s must be an int, not %.100s", what,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0 || v > PY_SSIZE_T_MAX) {
        *out = PY_SSIZE_T_MAX;
        return 0;
    }
    if (overflow < 0 || v < 0) {
        PyErr_Format(PyExc_ValueError, "PrefixIndex: %s must be >= 0", what);
        return -1;
    }
    *out = (Py_ssize_t)v;
    return 0;
}

#if ULONG_MAX >= UINT64_MAX
#define AS_U64 PyLong_AsUnsignedLong /* faster than the long long variant */
#else
#define AS_U64 PyLong_AsUnsignedLongLong
#endif

/* One hash: an int in [0, 2**64). */
static int hash_arg(PyObject *o, const char *fname, Py_ssize_t i, uint64_t *out) {
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "PrefixIndex.%s: hashes[%zd] must be an int, not %.100s",
                     fname, i, Py_TYPE(o)->tp_name);
        return -1;
    }
    uint64_t v = AS_U64(o);
    if (v == UINT64_MAX && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        int overflow;
        long long s = PyLong_AsLongLongAndOverflow(o, &overflow);
        PyErr_Format(PyExc_OverflowError,
                     "PrefixIndex.%s: hashes[%zd] is %s; hashes are in [0, 2**64)", fname, i,
                     overflow < 0 || (overflow == 0 && s < 0) ? "negative" : ">= 2**64");
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

/* The hashes argument as a list or tuple (a new reference). Iterating anything else may run
 * Python code, so callers do this first, before they touch the index. */
static PyObject *hashes_seq(PyObject *arg) {
    return PySequence_Fast(arg, "PrefixIndex: hashes must be a sequence of ints");
}

/* hashes_seq's items converted into self->hbuf; their count, or -1 on error. */
static Py_ssize_t load_hashes(PrefixIndex *self, PyObject *seq, const char *fname) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    if (self->hcap > 4096 && n <= 256) { /* give back what one huge call took */
        PyMem_Free(self->hbuf);
        self->hbuf = NULL;
        self->hcap = 0;
    }
    uint64_t *buf = grow(self->hbuf, &self->hcap, (size_t)n, sizeof(uint64_t), PY_SSIZE_T_MAX);
    if (buf == NULL)
        return -1;
    self->hbuf = buf;
    for (Py_ssize_t i = 0; i < n; i++)
        if (hash_arg(items[i], fname, i, &self->hbuf[i]) < 0)
            return -1;
    return n;
}

/* ---- methods ------------------------------------------------------------------------ */

#if defined(__GNUC__)
#define NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define NOINLINE __declspec(noinline)
#else
#define NOINLINE
#endif

/* Intersect the sorted alive[0..na) with a block's holders a[0..n) (sorted too): the pods
 * that hold it stay in `alive` (their count is returned), the others go to `res` with k
 * blocks matched. match's inner loop: kept out of line and free of calls so that its
 * counters stay in registers. */
static NOINLINE uint32_t narrow(uint32_t *alive, uint32_t na, const Holder *a, uint32_t n,
                                Matched *res, uint32_t *nres, Py_ssize_t k) {
    uint32_t i = 0, j, w, d = *nres;
    /* most often the same pods hold the next block too: skip the common run */
    while (i < na && i < n && alive[i] == a[i].pod)
        i++;
    if (i == na)
        return na;
    int sparse = (uint64_t)(na - i) * 8 < n - i; /* few pods among many holders: leap */
    for (j = w = i; i < na; i++) {
        uint32_t p = alive[i];
        if (sparse)
            j += lower_bound(a + j, n - j, p);
        else
            while (j < n && a[j].pod < p)
                j++;
        if (j < n && a[j].pod == p) {
            alive[w++] = p;
            j++;
        } else {
            res[d].pod = p;
            res[d++].k = k;
        }
    }
    *nres = d;
    return w;
}

/* match's walk, from the holders of hashes[0] (s) on: res[0..return) gets every one of
 * them, with the leading blocks it holds, in nondecreasing k. */
static Py_ssize_t walk(PrefixIndex *self, Slot *s, Py_ssize_t n) {
    uint32_t na = s->n, nres = 0;
    uint32_t *alive = grow(self->alive, &self->acap, na, sizeof(uint32_t), MAX_IDS);
    if (alive == NULL)
        return -1;
    self->alive = alive;
    Matched *res = grow(self->res, &self->rcap, na, sizeof(Matched), MAX_IDS);
    if (res == NULL)
        return -1;
    self->res = res;
    const Holder *a = holders(s);
    for (uint32_t i = 0; i < na; i++)
        alive[i] = a[i].pod;
    Py_ssize_t k = 1;
    for (; k < n && na > 0; k++) {
        s = find(self, self->hbuf[k]);
        if (s == NULL)
            break;
        na = narrow(alive, na, holders(s), s->n, res, &nres, k);
    }
    for (uint32_t i = 0; i < na; i++) { /* they hold blocks 0..k-1 */
        res[nres].pod = alive[i];
        res[nres++].k = k;
    }
    return nres;
}

/* out[address] = k for each of res[0..count) */
static int fill(PrefixIndex *self, PyObject *out, Py_ssize_t count) {
    PyObject *v = NULL;
    Py_ssize_t vk = -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        Matched *m = &self->res[i];
        if (m->k != vk) {
            Py_XDECREF(v);
            v = PyLong_FromSsize_t(vk = m->k);
            if (v == NULL)
                return -1;
        }
        if (PyDict_SetItem(out, self->pods[m->pod].address, v) < 0) {
            Py_DECREF(v);
            return -1;
        }
    }
    Py_XDECREF(v);
    return 0;
}

/* match(hashes) -> {address: leading blocks held}: every pod holding hashes[0], with the
 * length of the leading run of `hashes` it holds (the reference's loop, early breaks and
 * all: it stops at a block no pod holds or once no pod is left). */
static PyObject *PrefixIndex_match(PrefixIndex *self, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames) {
    static const char *const names[] = {"hashes"};
    PyObject *arg[1];
    if (parse_args("match", names, 1, 1, args, nargs, kwnames, arg) < 0)
        return NULL;
    PyObject *seq = hashes_seq(arg[0]);
    if (seq == NULL)
        return NULL;
    /* The dict before the walk: allocating it may run the GC, and so finalizers that may
     * use this very index (and its scratch arrays). `seq` goes last for the same reason
     * (freeing a list made from an iterator frees its items). */
    PyObject *out = PyDict_New();
    Py_ssize_t n = out == NULL ? -1 : load_hashes(self, seq, "match"), count;
    Slot *s = n > 0 ? find(self, self->hbuf[0]) : NULL;
    if (n < 0 ||
        (s != NULL && ((count = walk(self, s, n)) < 0 || fill(self, out, count) < 0)))
        Py_CLEAR(out);
    Py_DECREF(seq);
    return out;
}

/* Record that pod `id` holds hash `h`, as its most recent entry. */
static int touch(PrefixIndex *self, Pod *p, uint32_t id, uint64_t h) {
    if (room_for_one(self) < 0)
        return -1;
    Slot *s = find_or_empty(self, h);
    uint32_t at = 0;
    if (s->n != 0) {
        at = lower_bound(holders(s), s->n, id);
        if (at < s->n && holders(s)[at].pod == id) { /* held already: now the newest */
            uint32_t node = holders(s)[at].node;
            if (p->newest != node) {
                lru_unlink(self, p, node);
                lru_append(self, p, node);
            }
            return 0;
        }
    }
    uint32_t node = node_alloc(self);
    if (node == NIL)
        return -1;
    if (s->n == 0) {
        s->hash = h;
        s->n = s->cap = 1;
        s->h.one.pod = id;
        s->h.one.node = node;
        self->used++;
    } else if (holder_insert(s, at, id, node) < 0) {
        node_free(self, node);
        return -1;
    }
    self->nodes[node].hash = h;
    self->nodes[node].pod = id;
    lru_append(self, p, node);
    p->count++;
    return 0;
}

/* Evict pod `id`'s oldest entries until it holds at most `limit`. */
static void evict(PrefixIndex *self, uint32_t id, Py_ssize_t limit) {
    Pod *p = &self->pods[id];
    while ((Py_ssize_t)p->count > limit) {
        uint32_t node = p->oldest;
        unhold(self, node);
        lru_unlink(self, p, node);
        node_free(self, node);
        p->count--;
    }
}

/* add(address, hashes, limit=None): the pod was sent these blocks (see the reference). */
static PyObject *PrefixIndex_add(PrefixIndex *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames) {
    static const char *const names[] = {"address", "hashes", "limit"};
    PyObject *arg[3];
    if (parse_args("add", names, 3, 2, args, nargs, kwnames, arg) < 0)
        return NULL;
    Py_ssize_t limit = self->lru;
    if (arg[2] != NULL && arg[2] != Py_None) {
        Py_ssize_t l;
        if (bound_arg(arg[2], "limit", &l) < 0)
            return NULL;
        if (l < limit)
            limit = l;
    }
    PyObject *seq = hashes_seq(arg[1]);
    if (seq == NULL)
        return NULL;
    PyObject *address = address_arg(arg[0], "add");
    Py_ssize_t n = address == NULL ? -1 : load_hashes(self, seq, "add");
    uint32_t id = n < 0 ? NIL : pod_intern(self, address);
    Py_XDECREF(address); /* an exact str: freeing it runs no Python code */
    int ok = id != NIL;
    /* No Python code runs from here on. A MemoryError part way leaves a consistent index
     * that has recorded the first blocks (and evicts nothing). */
    for (Py_ssize_t i = 0; ok && i < n; i++)
        ok = touch(self, &self->pods[id], id, self->hbuf[i]) == 0;
    if (ok) {
        evict(self, id, limit);
        maybe_shrink(self);
    }
    Py_DECREF(seq); /* last: freeing a list made from an iterator frees its items */
    return ok ? Py_NewRef(Py_None) : NULL;
}

/* forget(address): drop a pod and all its entries; its id is reused later. */
static PyObject *PrefixIndex_forget(PrefixIndex *self, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames) {
    static const char *const names[] = {"address"};
    PyObject *arg[1];
    if (parse_args("forget", names, 1, 1, args, nargs, kwnames, arg) < 0)
        return NULL;
    PyObject *address = address_arg(arg[0], "forget");
    if (address == NULL)
        return NULL;
    uint32_t id = pod_lookup(self, address);
    if (id == NIL) {
        Py_DECREF(address);
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    int rc = PyDict_DelItem(self->ids, address);
    Py_DECREF(address);
    if (rc < 0)
        return NULL;
    Pod *p = &self->pods[id];
    for (uint32_t node = p->oldest; node != NIL;) {
        uint32_t next = self->nodes[node].next;
        unhold(self, node);
        node_free(self, node);
        node = next;
    }
    Py_CLEAR(p->address);
    p->oldest = p->newest = NIL;
    p->count = 0;
    p->next_free = self->free_pod;
    self->free_pod = id;
    maybe_shrink(self);
    Py_RETURN_NONE;
}

/* entries(address) -> int: how many blocks the index holds for one pod. */
static PyObject *PrefixIndex_entries(PrefixIndex *self, PyObject *const *args,
                                     Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"address"};
    PyObject *arg[1];
    if (parse_args("entries", names, 1, 1, args, nargs, kwnames, arg) < 0)
        return NULL;
    PyObject *address = address_arg(arg[0], "entries");
    if (address == NULL)
        return NULL;
    uint32_t id = pod_lookup(self, address);
    Py_DECREF(address);
    if (id == NIL && PyErr_Occurred())
        return NULL;
    return PyLong_FromUnsignedLong(id == NIL ? 0 : self->pods[id].count);
}

static Py_ssize_t PrefixIndex_len(PrefixIndex *self) { return (Py_ssize_t)self->used; }

/* ---- the type ----------------------------------------------------------------------- */

static PyObject *PrefixIndex_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"lru_per_pod", NULL};
    PyObject *lru = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:PrefixIndex", kwlist, &lru))
        return NULL;
    Py_ssize_t bound = DEFAULT_LRU;
    if (lru != NULL && bound_arg(lru, "lru_per_pod", &bound) < 0)
        return NULL;
    PrefixIndex *self = (PrefixIndex *)type->tp_alloc(type, 0); /* zero-filled */
    if (self == NULL)
        return NULL;
    self->lru_obj = lru != NULL ? Py_NewRef(lru) : PyLong_FromLong(DEFAULT_LRU);
    self->lru = bound;
    self->ids = PyDict_New();
    self->free_pod = self->free_node = NIL;
    self->slots = PyMem_Calloc(MIN_SLOTS, sizeof(Slot));
    self->mask = MIN_SLOTS - 1;
    self->shift = 64 - 4; /* log2(MIN_SLOTS) */
    if (self->lru_obj == NULL || self->ids == NULL || self->slots == NULL) {
        Py_DECREF(self);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void PrefixIndex_dealloc(PrefixIndex *self) {
    if (self->slots != NULL)
        for (size_t i = 0; i <= self->mask; i++)
            if (self->slots[i].cap > 1)
                PyMem_Free(self->slots[i].h.many);
    PyMem_Free(self->slots);
    for (uint32_t i = 0; i < self->npods; i++)
        Py_XDECREF(self->pods[i].address);
    PyMem_Free(self->pods);
    PyMem_Free(self->nodes);
    PyMem_Free(self->hbuf);
    PyMem_Free(self->alive);
    PyMem_Free(self->res);
    Py_XDECREF(self->ids);
    Py_XDECREF(self->lru_obj);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *get_lru(PrefixIndex *self, void *closure) {
    (void)closure;
    return Py_NewRef(self->lru_obj);
}

static int set_lru(PrefixIndex *self, PyObject *value, void *closure) {
    (void)closure;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "PrefixIndex: cannot delete lru_per_pod");
        return -1;
    }
    Py_ssize_t bound;
    if (bound_arg(value, "lru_per_pod", &bound) < 0)
        return -1;
    self->lru = bound;
    Py_SETREF(self->lru_obj, Py_NewRef(value)); /* last: releasing the old one may run code */
    return 0;
}

#define FASTCALL_KW(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL | METH_KEYWORDS

static PyMethodDef PrefixIndex_methods[] = {
    {"match", FASTCALL_KW(PrefixIndex_match),
     "match(hashes) -> dict[str, int]\n"
     "Pod address -> number of leading blocks of `hashes` it holds (absent = 0)."},
    {"add", FASTCALL_KW(PrefixIndex_add),
     "add(address, hashes, limit=None)\n"
     "Record that `address` was sent these blocks; then it keeps at most\n"
     "min(limit, lru_per_pod) entries, the least recently sent going first."},
    {"forget", FASTCALL_KW(PrefixIndex_forget),
     "forget(address)\nDrop a pod (it left the pool or restarted with an empty cache)."},
    {"entries", FASTCALL_KW(PrefixIndex_entries),
     "entries(address) -> int\nHow many blocks the index holds for one pod."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef PrefixIndex_getset[] = {
    {"lru_per_pod", (getter)get_lru, (setter)set_lru,
     "Most entries kept per pod (add's `limit` may lower it).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods PrefixIndex_as_sequence = {
    .sq_length = (lenfunc)PrefixIndex_len,
};

PyTypeObject lt_PrefixIndexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "balancer.policy._native.PrefixIndex",
    .tp_basicsize = sizeof(PrefixIndex),
    .tp_dealloc = (destructor)PrefixIndex_dealloc,
    .tp_as_sequence = &PrefixIndex_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PrefixIndex(lru_per_pod=31250)\n"
              "Which pods were recently sent which prompt blocks (hash -> pods, with a\n"
              "per-pod LRU); the native twin of balancer.policy.prefix.PrefixIndex.",
    .tp_methods = PrefixIndex_methods,
    .tp_getset = PrefixIndex_getset,
    .tp_new = PrefixIndex_new,
};
