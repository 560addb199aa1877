/* The module `contracts._pagescan`: one pass over a vLLM /metrics page in C for
 * contracts/vllm.py's `parse_metrics`. Lines are found with memchr; a line is skipped after
 * one compare of its first bytes unless it starts like a sample name the parser reads
 * (`configure` hands over that table). The lines it reads are taken only in their plain form
 * (name{label="value",...} value, no escapes, no timestamp, no extra blanks); anything else
 * makes `scan` answer None and the Python parser reads the whole page, so both give exactly
 * the same PodMetrics. Optional: without it the Python parser reads every page. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_ENTRIES 128
#define MAX_NAME 96
#define MAX_SCALARS 32
#define MAX_HISTS 8
#define MAX_LABELS 64
#define MAX_NUMBER 64 /* longest value or `le` text taken; longer ones go to Python */

/* What a sample name means; `configure` gets the Python parser's number for each, in this
 * order. */
enum role { SCALAR, REASON, LORA, CACHE, BUCKET, SUM, COUNT, MARK_V1, MARK_LEGACY, N_ROLES };

struct entry {
    char name[MAX_NAME];
    Py_ssize_t len;
    enum role role;
    int slot;
};

static struct entry entries[MAX_ENTRIES];
static int n_entries = 0;
static Py_ssize_t prefix_len = 0; /* every name is at least this long */
static int n_scalars = 0, n_hists = 0;

#define MAX_BUCKETS 64 /* distinct bounds per histogram; more go to Python */

struct hist {
    double bounds[MAX_BUCKETS], counts[MAX_BUCKETS]; /* first-seen order, as a dict keeps */
    int n;
    double sum, count;
    int has_count, present;
};

struct label {
    const char *name, *value;
    Py_ssize_t name_len, value_len;
};

/* Result of reading one line: taken, skipped, or left to Python (the whole page then). */
enum outcome { TAKEN, SKIPPED, LEAVE, FAILED };

static const struct entry *lookup(const char *name, Py_ssize_t len) {
    for (int i = 0; i < n_entries; i++)
        if (entries[i].len == len && memcmp(entries[i].name, name, (size_t)len) == 0)
            return &entries[i];
    return NULL;
}

/* The distinct first `prefix_len` bytes of the names, in an open-addressed hash table:
 * most lines of a page are looked up once there and skipped. */
#define PREFIX_SLOTS 256 /* a power of two, above twice MAX_ENTRIES */
static const char *prefixes[PREFIX_SLOTS];

static unsigned prefix_hash(const char *s) {
    unsigned h = 2166136261u; /* FNV-1a */
    for (Py_ssize_t i = 0; i < prefix_len; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h & (PREFIX_SLOTS - 1);
}

/* 1 when the line's first `prefix_len` bytes are those of a name in the table. */
static int known_prefix(const char *line, Py_ssize_t len) {
    if (len < prefix_len)
        return 0;
    for (unsigned h = prefix_hash(line); prefixes[h] != NULL; h = (h + 1) & (PREFIX_SLOTS - 1))
        if (memcmp(prefixes[h], line, (size_t)prefix_len) == 0)
            return 1;
    return 0;
}

static void add_prefix(const char *name) {
    unsigned h = prefix_hash(name);
    for (; prefixes[h] != NULL; h = (h + 1) & (PREFIX_SLOTS - 1))
        if (memcmp(prefixes[h], name, (size_t)prefix_len) == 0)
            return;
    prefixes[h] = name;
}

/* Plain decimals ("12", "0.25", "-3.5") of at most 15 digits: 0 and *out set, else 1.
 * Digits and the power of ten are exact doubles, so one division rounds once, correctly,
 * to the same double Python's float() gives. */
static int decimal(const char *s, Py_ssize_t len, double *out) {
    static const double tens[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
                                  1e11, 1e12, 1e13, 1e14, 1e15};
    Py_ssize_t i = 0;
    int negative = 0, digits = 0, fraction = -1;
    long long mantissa = 0;
    if (s[0] == '-' || s[0] == '+') {
        negative = s[0] == '-';
        i = 1;
    }
    for (; i < len; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9') {
            if (++digits > 15)
                return 1;
            mantissa = mantissa * 10 + (c - '0');
            if (fraction >= 0)
                fraction++;
        } else if (c == '.' && fraction < 0) {
            fraction = 0;
        } else {
            return 1;
        }
    }
    if (digits == 0)
        return 1;
    double v = (double)mantissa;
    if (fraction > 0)
        v /= tens[fraction];
    *out = negative ? -v : v;
    return 0;
}

/* A number as Python's float() reads it, for plain text only ([0-9A-Za-z.+-], as
 * "1.5e-3", "+Inf", "NaN"): 0 and *out set, or 1 (leave it to Python). */
static int number(const char *s, Py_ssize_t len, double *out) {
    char buf[MAX_NUMBER];
    if (len < 1 || len >= MAX_NUMBER)
        return 1;
    for (Py_ssize_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '.' || c == '+' || c == '-'))
            return 1;
    }
    if (decimal(s, len, out) == 0)
        return 0;
    memcpy(buf, s, (size_t)len);
    buf[len] = '\0';
    char *end = NULL;
    double v = PyOS_string_to_double(buf, &end, NULL);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 1;
    }
    if (end != buf + len)
        return 1;
    *out = v;
    return 0;
}

static int is_name_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int is_name_char(char c) {
    return is_name_start(c) || (c >= '0' && c <= '9');
}

/* The labels of `s` (the text after "{") into `labels`; returns the count and sets *after
 * to the text after "}", or -1 when not plain (escapes, blanks, duplicates, malformed). */
static int read_labels(const char *s, const char *end, struct label *labels,
                       const char **after) {
    int n = 0;
    for (;;) {
        if (s < end && *s == '}') {
            *after = s + 1;
            return n;
        }
        if (n == MAX_LABELS || s >= end || !is_name_start(*s))
            return -1;
        const char *name = s;
        while (s < end && is_name_char(*s))
            s++;
        Py_ssize_t name_len = s - name;
        if (end - s < 2 || s[0] != '=' || s[1] != '"')
            return -1;
        s += 2;
        const char *value = s;
        while (s < end && *s != '"' && *s != '\\')
            s++;
        if (s >= end || *s != '"')
            return -1;
        for (int i = 0; i < n; i++)
            if (labels[i].name_len == name_len && memcmp(labels[i].name, name, name_len) == 0)
                return -1;
        labels[n].name = name;
        labels[n].name_len = name_len;
        labels[n].value = value;
        labels[n].value_len = s - value;
        n++;
        s++;
        if (s < end && *s == ',')
            s++;
        else if (s >= end || *s != '}')
            return -1;
    }
}

static const struct label *label(const struct label *labels, int n, const char *name) {
    Py_ssize_t len = (Py_ssize_t)strlen(name);
    for (int i = 0; i < n; i++)
        if (labels[i].name_len == len && memcmp(labels[i].name, name, (size_t)len) == 0)
            return &labels[i];
    return NULL;
}

/* A label value as str (strict UTF-8); NULL with no error set when it is not valid UTF-8. */
static PyObject *text(const struct label *l) {
    PyObject *s = PyUnicode_DecodeUTF8(l->value, l->value_len, NULL);
    if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        PyErr_Clear();
    return s;
}

/* Every label of an info line as a dict (LEAVE when a value is not UTF-8). */
static enum outcome info(PyObject *infos, int is_lora, double value,
                         const struct label *labels, int n) {
    PyObject *d = PyDict_New();
    if (d == NULL)
        return FAILED;
    for (int i = 0; i < n; i++) {
        PyObject *k = PyUnicode_DecodeASCII(labels[i].name, labels[i].name_len, NULL);
        PyObject *v = k ? text(&labels[i]) : NULL;
        int rc = v ? PyDict_SetItem(d, k, v) : -1;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (rc < 0) {
            Py_DECREF(d);
            return PyErr_Occurred() ? FAILED : LEAVE;
        }
    }
    PyObject *item = Py_BuildValue("(OdN)", is_lora ? Py_True : Py_False, value, d);
    if (item == NULL)
        return FAILED;
    int rc = PyList_Append(infos, item);
    Py_DECREF(item);
    return rc < 0 ? FAILED : TAKEN;
}

struct state {
    double sums[MAX_SCALARS];
    long seen[MAX_SCALARS];
    struct hist hists[MAX_HISTS];
    PyObject *infos, *models;
    int marks_v1, marks_legacy;
    long usable;
    const char *model;
    Py_ssize_t model_len; /* -1 before the first */
};

static enum outcome bucket(struct hist *h, const struct label *labels, int n, double value) {
    const struct label *le = label(labels, n, "le");
    double bound;
    if (le == NULL || number(le->value, le->value_len, &bound) || bound != bound)
        return LEAVE;
    int i = 0;
    while (i < h->n && h->bounds[i] != bound)
        i++;
    if (i == h->n) {
        if (h->n == MAX_BUCKETS)
            return LEAVE;
        h->bounds[i] = bound;
        h->counts[i] = 0.0;
        h->n++;
    }
    h->counts[i] += value;
    return TAKEN;
}

static enum outcome read_line(struct state *st, const char *line, const char *end) {
    Py_ssize_t len = end - line;
    if (len == 0)
        return SKIPPED;
    unsigned char first = (unsigned char)line[0];
    if (first >= 0x80 || first == ' ' || (first >= '\t' && first <= '\r') ||
        (first >= 0x1c && first <= 0x1f))
        return LEAVE; /* an indented line (or one starting with a non-ASCII character) */
    if (!known_prefix(line, len))
        return SKIPPED;
    const char *s = line;
    while (s < end && *s != '{' && *s != ' ' && *s != '\t')
        s++;
    const struct entry *e = lookup(line, s - line);
    if (e == NULL)
        return SKIPPED;
    if (s == end) /* a bare name: a bad line of a family we read */
        return (e->role == MARK_V1 || e->role == MARK_LEGACY) ? SKIPPED : LEAVE;
    if (e->role == MARK_V1 || e->role == MARK_LEGACY) {
        if (e->role == MARK_V1)
            st->marks_v1 = 1;
        else
            st->marks_legacy = 1;
        return SKIPPED;
    }
    struct label labels[MAX_LABELS];
    int n = 0;
    if (*s == '{') {
        if (memchr(s, '\\', (size_t)(end - s)) != NULL)
            return LEAVE;
        if ((n = read_labels(s + 1, end, labels, &s)) < 0)
            return LEAVE;
    }
    double value;
    if (s >= end || *s != ' ' || number(s + 1, end - s - 1, &value))
        return LEAVE;

    switch (e->role) {
    case SCALAR:
        st->sums[e->slot] += value;
        st->seen[e->slot]++;
        break;
    case REASON: {
        const struct label *r = label(labels, n, "reason");
        if (r != NULL && r->value_len == 8 && memcmp(r->value, "deferred", 8) == 0) {
            st->sums[e->slot] += value;
            st->seen[e->slot]++;
        }
        break;
    }
    case BUCKET: {
        enum outcome o = bucket(&st->hists[e->slot], labels, n, value);
        if (o != TAKEN)
            return o;
        st->hists[e->slot].present = 1;
        break;
    }
    case SUM:
    case COUNT: {
        struct hist *h = &st->hists[e->slot];
        if (e->role == SUM)
            h->sum += value;
        else {
            h->count += value;
            h->has_count = 1;
        }
        h->present = 1;
        break;
    }
    case LORA:
    case CACHE: {
        enum outcome o = info(st->infos, e->role == LORA, value, labels, n);
        if (o != TAKEN)
            return o;
        break;
    }
    default:
        return LEAVE;
    }
    st->usable++;
    const struct label *model = label(labels, n, "model_name");
    if (model != NULL && !(model->value_len == st->model_len &&
                           memcmp(model->value, st->model, (size_t)st->model_len) == 0)) {
        st->model = model->value; /* the last one added: most lines repeat it */
        st->model_len = model->value_len;
        PyObject *m = text(model);
        if (m == NULL)
            return PyErr_Occurred() ? FAILED : LEAVE;
        int rc = PySet_Add(st->models, m);
        Py_DECREF(m);
        if (rc < 0)
            return FAILED;
    }
    return TAKEN;
}

/* The histogram's buckets as the dict bound -> count the Python parser builds. */
static PyObject *buckets(const struct hist *h) {
    PyObject *d = PyDict_New();
    for (int i = 0; d != NULL && i < h->n; i++) {
        PyObject *k = PyFloat_FromDouble(h->bounds[i]), *v = PyFloat_FromDouble(h->counts[i]);
        if (k == NULL || v == NULL || PyDict_SetItem(d, k, v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(k);
        Py_XDECREF(v);
    }
    return d;
}

static PyObject *result(struct state *st) {
    PyObject *sums = PyList_New(n_scalars), *seen = PyList_New(n_scalars);
    PyObject *hists = PyList_New(n_hists);
    if (sums == NULL || seen == NULL || hists == NULL)
        goto fail;
    for (int i = 0; i < n_scalars; i++) {
        PyObject *a = PyFloat_FromDouble(st->sums[i]), *b = PyLong_FromLong(st->seen[i]);
        if (a == NULL || b == NULL) {
            Py_XDECREF(a);
            Py_XDECREF(b);
            goto fail;
        }
        PyList_SET_ITEM(sums, i, a);
        PyList_SET_ITEM(seen, i, b);
    }
    for (int i = 0; i < n_hists; i++) {
        struct hist *h = &st->hists[i];
        PyObject *item = h->present ? buckets(h) : Py_NewRef(Py_None);
        if (item != NULL && h->present)
            item = Py_BuildValue("(NddO)", item, h->sum, h->count,
                                 h->has_count ? Py_True : Py_False);
        if (item == NULL)
            goto fail;
        PyList_SET_ITEM(hists, i, item);
    }
    return Py_BuildValue("(NNNOOOO)", sums, seen, hists, st->infos, st->models,
                         st->marks_v1 ? Py_True : Py_False,
                         st->marks_legacy ? Py_True : Py_False);
fail:
    Py_XDECREF(sums);
    Py_XDECREF(seen);
    Py_XDECREF(hists);
    return NULL;
}

static PyObject *scan(PyObject *Py_UNUSED(self), PyObject *page) {
    if (!PyBytes_Check(page)) {
        PyErr_Format(PyExc_TypeError, "scan() takes the bytes of a page, not %s",
                     Py_TYPE(page)->tp_name);
        return NULL;
    }
    if (n_entries == 0) {
        PyErr_SetString(PyExc_RuntimeError, "scan() before configure()");
        return NULL;
    }
    struct state st; /* ~9 KB of stack, for the buckets */
    memset(&st, 0, sizeof st);
    st.model_len = -1;
    st.infos = PyList_New(0);
    st.models = PySet_New(NULL);
    PyObject *out = NULL;
    enum outcome o = TAKEN;
    if (st.infos == NULL || st.models == NULL)
        goto done;
    const char *p = PyBytes_AS_STRING(page), *stop = p + PyBytes_GET_SIZE(page);
    for (;;) {
        const char *nl = memchr(p, '\n', (size_t)(stop - p));
        const char *end = nl ? nl : stop;
        o = read_line(&st, p, end);
        if (o == LEAVE || o == FAILED || nl == NULL)
            break;
        p = nl + 1;
    }
    if (o == FAILED)
        goto done;
    if (o == LEAVE || st.usable == 0)
        out = Py_NewRef(Py_None);
    else
        out = result(&st);
done:
    Py_XDECREF(st.infos);
    Py_XDECREF(st.models);
    return out;
}

static PyObject *configure(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *table, *roles;
    int scalars, hists;
    if (!PyArg_ParseTuple(args, "O!O!ii", &PyDict_Type, &table, &PyTuple_Type, &roles,
                          &scalars, &hists))
        return NULL;
    if (PyTuple_GET_SIZE(roles) != N_ROLES || scalars < 1 || scalars > MAX_SCALARS ||
        hists < 1 || hists > MAX_HISTS || PyDict_GET_SIZE(table) > MAX_ENTRIES ||
        PyDict_GET_SIZE(table) == 0) {
        PyErr_Format(PyExc_ValueError, "configure(): %d roles, 1..%d scalar slots, 1..%d "
                     "histogram slots and 1..%d names expected", N_ROLES, MAX_SCALARS,
                     MAX_HISTS, MAX_ENTRIES);
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    int n = 0;
    Py_ssize_t shortest = MAX_NAME;
    while (PyDict_Next(table, &pos, &key, &value)) {
        Py_ssize_t len;
        const char *name = PyUnicode_Check(key) ? PyUnicode_AsUTF8AndSize(key, &len) : NULL;
        long kind, slot;
        if (name == NULL || len < 1 || len >= MAX_NAME || !PyTuple_Check(value) ||
            PyTuple_GET_SIZE(value) != 2) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "configure(): the table maps names (str, "
                            "< 96 bytes) to (kind, slot)");
            return NULL;
        }
        kind = PyLong_AsLong(PyTuple_GET_ITEM(value, 0));
        slot = PyLong_AsLong(PyTuple_GET_ITEM(value, 1));
        if (PyErr_Occurred())
            return NULL;
        int role = -1;
        for (int r = 0; r < N_ROLES; r++) {
            long k = PyLong_AsLong(PyTuple_GET_ITEM(roles, r));
            if (k == -1 && PyErr_Occurred())
                return NULL;
            if (k == kind)
                role = r;
        }
        int limit = (role == BUCKET || role == SUM || role == COUNT) ? hists : scalars;
        if (role < 0 || slot < 0 || slot >= limit) {
            PyErr_Format(PyExc_ValueError, "configure(): %U has kind %ld slot %ld, outside "
                         "the roles and slots given", key, kind, slot);
            return NULL;
        }
        memcpy(entries[n].name, name, (size_t)len);
        entries[n].len = len;
        entries[n].role = (enum role)role;
        entries[n].slot = (int)slot;
        shortest = len < shortest ? len : shortest;
        n++;
    }
    n_entries = n;
    prefix_len = shortest;
    memset(prefixes, 0, sizeof prefixes);
    for (int i = 0; i < n; i++)
        add_prefix(entries[i].name);
    n_scalars = scalars;
    n_hists = hists;
    return PyLong_FromSsize_t(prefix_len);
}

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(table, roles, scalars, hists) -> int\n"
     "The sample names read: `table` maps each to (kind, slot); `roles` gives the kind numbers\n"
     "of scalar, reason, lora, cache, bucket, sum, count, mark_v1, mark_legacy. Returns the\n"
     "prefix length compared on every line (the shortest name)."},
    {"scan", scan, METH_O,
     "scan(page: bytes) -> tuple | None\n"
     "(sums, seen, hists, infos, models, marks_v1, marks_legacy) of the page: hists[slot] is\n"
     "None or (buckets dict, sum, count, has_count); infos lists (is_lora, value, labels) of\n"
     "the lora / cache-config lines in page order. None when a line it would read is not in\n"
     "the plain form, or nothing was read: the Python parser decides that page."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_pagescan",
    "A vLLM /metrics page read in C, plain lines only (contracts/vllm.py decides the rest).",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pagescan(void) {
    return PyModule_Create(&module_def);
}
