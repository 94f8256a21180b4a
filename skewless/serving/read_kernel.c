/* The uncached entity read of a feature view in C: the work of skewless/serving/compiled.py's generated `entity`
 * function up to its aggregations (splitting the entity hash, decoding the manifest, tile vectors and batch parts,
 * merging COUNT/SUM/MIN/MAX/LAST), for the entities it can prove equal; every other entity is passed, unchanged, to
 * the compiled Python function (which returns None or raises where the generic evaluation must decide).
 *
 * Why C: docs/serving.md, issue #20 rounds 4-5 (the compiled Python evaluation, ~7.5 us per entity of which ~4.3 us
 * JSON decoding, exceeded what the 2x-floor goal leaves after Redis's time).
 *
 * The plan's shape comes as a descriptor built once per read plan (ViewKernel), the read's context is bound once per
 * read (ViewKernel.bind -> BoundRead), and a BoundRead is called once per entity with the entity hash's HGETALL reply
 * (a flat list [field, value, ...] of bytes, or a dict of bytes). It returns `finish(run, cutoff, v0, s0, v1, s1,
 * ...)` (the compiled module's derived features and result tuples, shared with the Python path) or, when anything is
 * not what it can prove (a float, an escaped string, an integer outside int64, a field it does not expect, a
 * duplicate, a lost part, a value the Python code would return None for or raise on, ...), `fallback(reply)`.
 *
 * JSON: a strict subset of RFC 8259 that orjson reads to the same values: objects (no duplicate keys), arrays,
 * integers in int64 without leading zeros (and not "-0"), strings without escapes or control characters in valid
 * UTF-8, true/false/null, JSON whitespace. Anything else (floats included) -> fallback. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef __int128 i128;

enum { K_COUNT = 0, K_SUM = 1, K_MIN = 2, K_MAX = 3, K_LAST = 4 };
enum { J_NULL, J_FALSE, J_TRUE, J_INT, J_STR, J_ARR, J_OBJ };

#define MAX_NODES 1024   /* JSON nodes of one entity (a clean churn_model entity: < 300) */
#define MAX_PAIRS 256    /* fields of one entity hash */
#define MAX_DEPTH 16
#define MAX_GROUPS 8
#define MAX_AGGS 64
#define MAX_FIXED 32

typedef struct {
    int64_t i;        /* J_INT value */
    const char *s;    /* J_STR bytes */
    int32_t n;        /* J_STR length; J_ARR / J_OBJ children (an object's: keys and values alternating) */
    int32_t first;    /* first child */
    int32_t next;     /* next sibling */
    uint8_t type;
} JNode;

typedef struct {
    const char *p, *end;
    JNode *nodes;
    int used;
} JParser;

/* ---- JSON ------------------------------------------------------------------------------------------------------ */

static inline void skip_ws(JParser *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int new_node(JParser *j, uint8_t type) {
    if (j->used >= MAX_NODES) return -1;
    JNode *n = &j->nodes[j->used];
    n->type = type; n->n = 0; n->first = -1; n->next = -1; n->i = 0; n->s = NULL;
    return j->used++;
}

/* Valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF) of [p, p + len). */
static int utf8_ok(const unsigned char *p, Py_ssize_t len) {
    const unsigned char *e = p + len;
    while (p < e) {
        unsigned char c = *p;
        if (c < 0x80) { p++; continue; }
        if (c >= 0xC2 && c <= 0xDF) {
            if (e - p < 2 || (p[1] & 0xC0) != 0x80) return 0;
            p += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (e - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && p[1] < 0xA0) return 0;   /* overlong */
            if (c == 0xED && p[1] >= 0xA0) return 0;  /* surrogate */
            p += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (e - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
            if (c == 0xF0 && p[1] < 0x90) return 0;   /* overlong */
            if (c == 0xF4 && p[1] >= 0x90) return 0;  /* > U+10FFFF */
            p += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* A canonical decimal int64: -?(0|[1-9][0-9]*), not "-0". Returns 1 and sets *out, else 0. */
static int parse_int(const char *p, const char *end, const char **stop, int64_t *out) {
    int neg = 0;
    if (p < end && *p == '-') { neg = 1; p++; }
    if (p >= end || *p < '0' || *p > '9') return 0;
    uint64_t v = 0;
    if (*p == '0') {
        p++;
        if (neg) return 0;
        if (p < end && *p >= '0' && *p <= '9') return 0;
    } else {
        uint64_t limit = neg ? (uint64_t)INT64_MAX + 1u : (uint64_t)INT64_MAX;
        while (p < end && *p >= '0' && *p <= '9') {
            uint64_t d = (uint64_t)(*p - '0');
            if (v > (limit - d) / 10) return 0;
            v = v * 10 + d;
            p++;
        }
    }
    *stop = p;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 1;
}

static int parse_value(JParser *j, int depth);

static int parse_string(JParser *j) {
    /* at the opening quote */
    const char *start = ++j->p;
    int ascii = 1;
    while (j->p < j->end) {
        unsigned char c = (unsigned char)*j->p;
        if (c == '"') break;
        if (c == '\\' || c < 0x20) return -1;
        if (c >= 0x80) ascii = 0;
        j->p++;
    }
    if (j->p >= j->end) return -1;
    Py_ssize_t len = j->p - start;
    if (!ascii && !utf8_ok((const unsigned char *)start, len)) return -1;
    j->p++;
    int k = new_node(j, J_STR);
    if (k < 0) return -1;
    j->nodes[k].s = start;
    j->nodes[k].n = (int32_t)len;
    return k;
}

static int same_str(const JNode *a, const JNode *b) {
    return a->n == b->n && memcmp(a->s, b->s, (size_t)a->n) == 0;
}

static int parse_value(JParser *j, int depth) {
    if (depth > MAX_DEPTH) return -1;
    skip_ws(j);
    if (j->p >= j->end) return -1;
    char c = *j->p;
    if (c == '[' || c == '{') {
        int obj = c == '{';
        int k = new_node(j, obj ? J_OBJ : J_ARR);
        if (k < 0) return -1;
        j->p++;
        skip_ws(j);
        if (j->p < j->end && *j->p == (obj ? '}' : ']')) { j->p++; return k; }
        int last = -1;
        for (;;) {
            int child;
            if (obj) {
                skip_ws(j);
                if (j->p >= j->end || *j->p != '"') return -1;
                int key = parse_string(j);
                if (key < 0) return -1;
                for (int o = j->nodes[k].first; o >= 0; o = j->nodes[j->nodes[o].next].next)
                    if (same_str(&j->nodes[o], &j->nodes[key])) return -1;  /* a duplicate key */
                skip_ws(j);
                if (j->p >= j->end || *j->p != ':') return -1;
                j->p++;
                child = parse_value(j, depth + 1);
                if (child < 0) return -1;
                if (last < 0) j->nodes[k].first = key; else j->nodes[last].next = key;
                j->nodes[key].next = child;
                last = child;
                j->nodes[k].n += 2;
            } else {
                child = parse_value(j, depth + 1);
                if (child < 0) return -1;
                if (last < 0) j->nodes[k].first = child; else j->nodes[last].next = child;
                last = child;
                j->nodes[k].n += 1;
            }
            skip_ws(j);
            if (j->p >= j->end) return -1;
            if (*j->p == ',') { j->p++; continue; }
            if (*j->p == (obj ? '}' : ']')) { j->p++; return k; }
            return -1;
        }
    }
    if (c == '"') return parse_string(j);
    if (c == '-' || (c >= '0' && c <= '9')) {
        int64_t v;
        const char *stop;
        if (!parse_int(j->p, j->end, &stop, &v)) return -1;
        if (stop < j->end && (*stop == '.' || *stop == 'e' || *stop == 'E')) return -1;  /* a float */
        j->p = stop;
        int k = new_node(j, J_INT);
        if (k < 0) return -1;
        j->nodes[k].i = v;
        return k;
    }
    if (j->end - j->p >= 4 && memcmp(j->p, "null", 4) == 0) { j->p += 4; return new_node(j, J_NULL); }
    if (j->end - j->p >= 4 && memcmp(j->p, "true", 4) == 0) { j->p += 4; return new_node(j, J_TRUE); }
    if (j->end - j->p >= 5 && memcmp(j->p, "false", 5) == 0) { j->p += 5; return new_node(j, J_FALSE); }
    return -1;
}

/* One whole JSON document [p, p + len) -> its root node, or -1. */
static int parse_doc(JParser *j, const char *p, Py_ssize_t len) {
    j->p = p;
    j->end = p + len;
    int k = parse_value(j, 0);
    if (k < 0) return -1;
    skip_ws(j);
    return j->p == j->end ? k : -1;
}

static int arr_get(const JNode *nodes, int arr, int64_t idx) {
    if (arr < 0 || nodes[arr].type != J_ARR || idx < 0 || idx >= nodes[arr].n) return -1;
    int c = nodes[arr].first;
    while (idx-- > 0) c = nodes[c].next;
    return c;
}

static int obj_get(const JNode *nodes, int obj, const char *key, Py_ssize_t len) {
    for (int o = nodes[obj].first; o >= 0; o = nodes[nodes[o].next].next)
        if (nodes[o].n == len && memcmp(nodes[o].s, key, (size_t)len) == 0) return nodes[o].next;
    return -2;  /* absent */
}

/* ---- accumulators ------------------------------------------------------------------------------------------------ */

typedef struct {
    i128 sum;         /* COUNT, SUM */
    int has;          /* MIN, MAX, LAST: a value merged */
    int64_t v;        /* MIN, MAX */
    int64_t key[3];   /* LAST: (ts, partition, offset) */
    int node;         /* LAST: the value's node */
} Acc;

/* Checks the decoded intermediate `x` (a node) as the compiled Python's _check does (stricter: anything else -> 0)
 * and gives it as an accumulator. */
static int take(const JNode *nodes, int kind, int x, Acc *out) {
    const JNode *n = &nodes[x];
    memset(out, 0, sizeof(*out));
    out->node = -1;
    switch (kind) {
    case K_COUNT:
        if (n->type != J_INT || n->i < 0) return 0;
        out->sum = n->i;
        return 1;
    case K_SUM:
        if (n->type != J_INT) return 0;
        out->sum = n->i;
        return 1;
    case K_MIN: case K_MAX:
        if (n->type == J_NULL) return 1;
        if (n->type != J_INT) return 0;
        out->has = 1;
        out->v = n->i;
        return 1;
    case K_LAST: {
        if (n->type == J_NULL) return 1;
        if (n->type != J_ARR || n->n != 4) return 0;
        int c = n->first;
        for (int i = 0; i < 3; i++) {
            if (nodes[c].type != J_INT) return 0;
            out->key[i] = nodes[c].i;
            c = nodes[c].next;
        }
        uint8_t t = nodes[c].type;
        if (t != J_NULL && t != J_INT && t != J_STR && t != J_TRUE && t != J_FALSE) return 0;
        out->has = 1;
        out->node = c;
        return 1;
    }
    }
    return 0;
}

static inline int key_less(const int64_t *a, const int64_t *b) {
    if (a[0] != b[0]) return a[0] < b[0];
    if (a[1] != b[1]) return a[1] < b[1];
    return a[2] < b[2];
}

/* acc = merge(acc, x), the law's merge on those forms (the compiled Python's _merge). */
static inline void merge(int kind, Acc *acc, const Acc *x) {
    switch (kind) {
    case K_COUNT: case K_SUM:
        acc->sum += x->sum;
        break;
    case K_MIN:
        if (x->has && (!acc->has || x->v < acc->v)) { acc->has = 1; acc->v = x->v; }
        break;
    case K_MAX:
        if (x->has && (!acc->has || x->v > acc->v)) { acc->has = 1; acc->v = x->v; }
        break;
    case K_LAST:
        if (x->has && (!acc->has || key_less(acc->key, x->key))) *acc = *x;
        break;
    }
}

/* ---- the plan's descriptor --------------------------------------------------------------------------------------- */

typedef struct {
    int kind, index, stream, lifetime, slot, batch_index;
} AggDesc;

typedef struct {
    PyObject *size;        /* bytes: the tile size as text */
    int64_t retention;
    int first_agg, n_aggs; /* into aggs */
    int any_stream, any_batch;
} GroupDesc;

typedef struct {
    PyObject_HEAD
    int n_fixed;
    PyObject *fixed[MAX_FIXED];  /* bytes: the fixed fields (b"m" first) */
    int parse[MAX_FIXED];        /* 1: its value is JSON the read decodes (the manifest, a used batch part) */
    int batch, cutoff_slot, epoch_slot, run_slot;
    int n_groups, n_aggs;
    GroupDesc groups[MAX_GROUPS];
    AggDesc aggs[MAX_AGGS];
    int64_t batch_day, tail_days;
    PyObject *inc, *present, *stale;
} ViewKernel;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    ViewKernel *kernel;
    PyObject *epoch;          /* bytes */
    PyObject *fallback, *finish;
    int64_t T, applied_from, run_cutoff;
    int has_run_cutoff;
    int64_t now_floor[MAX_GROUPS];
    int64_t st[MAX_AGGS];     /* stream-served aggregations' window starts */
    int64_t stream_lo[MAX_GROUPS];
    Py_ssize_t served, passed;
} BoundRead;

static PyTypeObject ViewKernelType;
static PyTypeObject BoundReadType;

static int as_i64(PyObject *o, int64_t *out) {
    if (!PyLong_CheckExact(o)) return 0;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) { PyErr_Clear(); return 0; }
    *out = v;
    return 1;
}

static void kernel_dealloc(ViewKernel *self) {
    for (int i = 0; i < self->n_fixed; i++) Py_XDECREF(self->fixed[i]);
    for (int g = 0; g < self->n_groups; g++) Py_XDECREF(self->groups[g].size);
    Py_XDECREF(self->inc); Py_XDECREF(self->present); Py_XDECREF(self->stale);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ViewKernel(fixed, parse, batch_slots, groups, batch_day, tail_days, statuses):
 *   fixed: tuple of bytes (b"m" first, then the batch record's fields); parse: tuple of bools per fixed field;
 *   batch_slots: None or (cutoff, epoch, run) positions in fixed;
 *   groups: tuple of (size bytes, retention ms, ((kind, index, stream_served, lifetime, batch slot, batch index), ...));
 *   statuses: (incomplete, present, stale). */
static PyObject *kernel_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *fixed, *parse, *slots, *groups, *statuses;
    long long batch_day, tail_days;
    if (!PyArg_ParseTuple(args, "O!O!OO!LLO!", &PyTuple_Type, &fixed, &PyTuple_Type, &parse, &slots, &PyTuple_Type,
                          &groups, &batch_day, &tail_days, &PyTuple_Type, &statuses))
        return NULL;
    ViewKernel *self = (ViewKernel *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->batch_day = batch_day;
    self->tail_days = tail_days;
    Py_ssize_t nf = PyTuple_GET_SIZE(fixed);
    if (nf < 1 || nf > MAX_FIXED || PyTuple_GET_SIZE(parse) != nf) goto bad;
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *f = PyTuple_GET_ITEM(fixed, i);
        if (!PyBytes_CheckExact(f) || (PyBytes_GET_SIZE(f) >= 2 && memcmp(PyBytes_AS_STRING(f), "t:", 2) == 0)) goto bad;
        Py_INCREF(f);
        self->fixed[i] = f;
        self->n_fixed = (int)i + 1;
        self->parse[i] = PyObject_IsTrue(PyTuple_GET_ITEM(parse, i));
    }
    if (slots == Py_None) {
        self->batch = 0;
    } else {
        if (!PyArg_ParseTuple(slots, "iii", &self->cutoff_slot, &self->epoch_slot, &self->run_slot)) goto fail;
        if (self->cutoff_slot < 1 || self->cutoff_slot >= nf || self->epoch_slot < 1 || self->epoch_slot >= nf ||
            self->run_slot < 1 || self->run_slot >= nf) goto bad;
        self->batch = 1;
    }
    Py_ssize_t ng = PyTuple_GET_SIZE(groups);
    if (ng > MAX_GROUPS) goto bad;
    int na = 0;
    for (Py_ssize_t g = 0; g < ng; g++) {
        PyObject *size, *aggs;
        long long retention;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(groups, g), "O!LO!", &PyBytes_Type, &size, &retention, &PyTuple_Type, &aggs))
            goto fail;
        GroupDesc *gd = &self->groups[g];
        Py_INCREF(size);
        gd->size = size;
        self->n_groups = (int)g + 1;
        gd->retention = retention;
        gd->first_agg = na;
        gd->n_aggs = (int)PyTuple_GET_SIZE(aggs);
        gd->any_stream = gd->any_batch = 0;
        for (Py_ssize_t a = 0; a < gd->n_aggs; a++) {
            if (na >= MAX_AGGS) goto bad;
            AggDesc *ad = &self->aggs[na++];
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(aggs, a), "iippii", &ad->kind, &ad->index, &ad->stream, &ad->lifetime,
                                  &ad->slot, &ad->batch_index))
                goto fail;
            if (ad->kind < K_COUNT || ad->kind > K_LAST || ad->index < 0) goto bad;
            if (ad->stream) gd->any_stream = 1;
            else {
                if (!self->batch || ad->slot < 1 || ad->slot >= nf || !self->parse[ad->slot] || ad->batch_index < 0) goto bad;
                gd->any_batch = 1;
            }
        }
    }
    self->n_aggs = na;
    if (!PyArg_ParseTuple(statuses, "OOO", &self->inc, &self->present, &self->stale)) goto fail;
    Py_INCREF(self->inc); Py_INCREF(self->present); Py_INCREF(self->stale);
    return (PyObject *)self;
bad:
    PyErr_SetString(PyExc_ValueError, "a read plan the kernel cannot describe");
fail:
    Py_DECREF(self);
    return NULL;
}

static PyObject *bound_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames);

/* bind(T, now_floors, epoch, applied_from, run_cutoff, starts, fallback, finish) -> BoundRead, or None when the read's
 * context is not one it represents (the caller then uses `fallback` alone). */
static PyObject *kernel_bind(ViewKernel *self, PyObject *args) {
    PyObject *T, *now_floors, *epoch, *applied_from, *run_cutoff, *starts, *fallback, *finish;
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &T, &now_floors, &epoch, &applied_from, &run_cutoff, &starts, &fallback, &finish))
        return NULL;
    BoundRead *b = PyObject_New(BoundRead, &BoundReadType);
    if (!b) return NULL;
    b->vectorcall = bound_vectorcall;
    b->served = b->passed = 0;
    Py_INCREF(self); b->kernel = self;
    Py_INCREF(epoch); b->epoch = epoch;
    Py_INCREF(fallback); b->fallback = fallback;
    Py_INCREF(finish); b->finish = finish;
    if (!PyBytes_CheckExact(epoch) || !as_i64(T, &b->T) || !as_i64(applied_from, &b->applied_from)) goto none;
    b->has_run_cutoff = run_cutoff != Py_None;
    if (b->has_run_cutoff && !as_i64(run_cutoff, &b->run_cutoff)) goto none;
    if (!PyList_CheckExact(now_floors) && !PyTuple_Check(now_floors)) goto none;
    if (!PySequence_Check(starts) || PySequence_Size(starts) != self->n_groups ||
        PySequence_Size(now_floors) != self->n_groups) { PyErr_Clear(); goto none; }
    for (int g = 0; g < self->n_groups; g++) {
        GroupDesc *gd = &self->groups[g];
        PyObject *nf = PySequence_GetItem(now_floors, g);
        if (!nf) { PyErr_Clear(); goto none; }
        int ok = as_i64(nf, &b->now_floor[g]);
        Py_DECREF(nf);
        if (!ok) goto none;
        PyObject *gs = PySequence_GetItem(starts, g);
        if (!gs) { PyErr_Clear(); goto none; }
        int first = 1;
        for (int a = 0; a < gd->n_aggs; a++) {
            if (!self->aggs[gd->first_agg + a].stream) continue;
            PyObject *s = PySequence_GetItem(gs, a);
            if (!s) { PyErr_Clear(); Py_DECREF(gs); goto none; }
            ok = as_i64(s, &b->st[gd->first_agg + a]);
            Py_DECREF(s);
            if (!ok) { Py_DECREF(gs); goto none; }
            int64_t v = b->st[gd->first_agg + a];
            if (first || v < b->stream_lo[g]) b->stream_lo[g] = v;
            first = 0;
        }
        Py_DECREF(gs);
    }
    return (PyObject *)b;
none:
    Py_DECREF(b);
    Py_RETURN_NONE;
}

static PyMethodDef kernel_methods[] = {
    {"bind", (PyCFunction)kernel_bind, METH_VARARGS, "bind(T, now_floors, epoch, applied_from, run_cutoff, starts, "
     "fallback, finish) -> a per-entity callable for this read, or None"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ViewKernelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "skewless.serving.read_kernel.ViewKernel",
    .tp_basicsize = sizeof(ViewKernel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A feature view read plan's shape for the C entity read.",
    .tp_new = kernel_new,
    .tp_dealloc = (destructor)kernel_dealloc,
    .tp_methods = kernel_methods,
};

/* ---- the entity read ----------------------------------------------------------------------------------------------- */

typedef struct {
    const char *k, *v;
    Py_ssize_t kl, vl;
} Pair;

static inline int bytes_eq(const char *p, Py_ssize_t len, PyObject *b) {
    return PyBytes_GET_SIZE(b) == len && memcmp(PyBytes_AS_STRING(b), p, (size_t)len) == 0;
}

/* The per-aggregation result: a value (as C data, turned into an object at the end) and a status. */
typedef struct {
    int kind;         /* 0: None; 1: int (iv); 2: LAST value node */
    int64_t iv;
    int node;
    int status;       /* 0 incomplete, 1 present, 2 stale */
} Out;

static inline void out_final(Out *o, int kind, const Acc *a, int status) {
    o->status = status;
    o->node = -1;
    if (kind == K_COUNT || kind == K_SUM) { o->kind = 1; o->iv = (int64_t)a->sum; }
    else if (!a->has) o->kind = 0;
    else if (kind == K_LAST) { o->kind = 2; o->node = a->node; }
    else { o->kind = 1; o->iv = a->v; }
}

static inline void out_inc(Out *o) { o->kind = 0; o->status = 0; o->node = -1; }

static inline int in_i64(i128 v) { return v >= (i128)INT64_MIN && v <= (i128)INT64_MAX; }

/* 1: `outs`, `cutoff`, `run` filled (the entity is served); 0: pass it to the fallback. */
static int read_entity(BoundRead *b, PyObject *r, JNode *nodes, Out *outs, int64_t *cutoff_out, const char **run,
                       Py_ssize_t *run_len) {
    ViewKernel *kp = b->kernel;
    Pair pairs[MAX_PAIRS];
    Py_ssize_t np = 0;
    if (PyList_CheckExact(r)) {
        Py_ssize_t n = PyList_GET_SIZE(r);
        if ((n & 1) || n / 2 > MAX_PAIRS) return 0;
        for (Py_ssize_t i = 0; i < n; i += 2) {
            PyObject *k = PyList_GET_ITEM(r, i), *v = PyList_GET_ITEM(r, i + 1);
            if (!PyBytes_CheckExact(k) || !PyBytes_CheckExact(v)) return 0;
            pairs[np].k = PyBytes_AS_STRING(k); pairs[np].kl = PyBytes_GET_SIZE(k);
            pairs[np].v = PyBytes_AS_STRING(v); pairs[np].vl = PyBytes_GET_SIZE(v);
            np++;
        }
    } else if (PyDict_CheckExact(r)) {
        if (PyDict_GET_SIZE(r) > MAX_PAIRS) return 0;
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(r, &pos, &k, &v)) {
            if (!PyBytes_CheckExact(k) || !PyBytes_CheckExact(v)) return 0;
            pairs[np].k = PyBytes_AS_STRING(k); pairs[np].kl = PyBytes_GET_SIZE(k);
            pairs[np].v = PyBytes_AS_STRING(v); pairs[np].vl = PyBytes_GET_SIZE(v);
            np++;
        }
    } else {
        return 0;
    }
    /* the fixed fields; every other field a tile of a known size: its group and start */
    int fixed_at[MAX_FIXED];
    for (int f = 0; f < kp->n_fixed; f++) fixed_at[f] = -1;
    int8_t tile_group[MAX_PAIRS];
    int64_t tile_start[MAX_PAIRS];
    const char *tile_body[MAX_PAIRS];
    Py_ssize_t tile_body_len[MAX_PAIRS];
    const char *ep = PyBytes_AS_STRING(b->epoch);
    Py_ssize_t epl = PyBytes_GET_SIZE(b->epoch);
    for (Py_ssize_t i = 0; i < np; i++) {
        const Pair *p = &pairs[i];
        tile_group[i] = -1;
        if (p->kl < 2 || p->k[0] != 't' || p->k[1] != ':') {  /* not a tile: a fixed field (none starts with "t:") */
            int f;
            for (f = 0; f < kp->n_fixed; f++) {
                if (bytes_eq(p->k, p->kl, kp->fixed[f])) break;
            }
            if (f == kp->n_fixed || fixed_at[f] >= 0) return 0;  /* a field it does not expect, or one twice */
            fixed_at[f] = (int)i;
            continue;
        }
        const char *size = p->k + 2, *kend = p->k + p->kl;
        const char *colon = memchr(size, ':', (size_t)(kend - size));
        if (!colon) return 0;
        int g;
        for (g = 0; g < kp->n_groups; g++)
            if (bytes_eq(size, colon - size, kp->groups[g].size)) break;
        if (g == kp->n_groups) return 0;
        const char *stop;
        if (!parse_int(colon + 1, kend, &stop, &tile_start[i]) || stop != kend) return 0;
        const char *bar1 = memchr(p->v, '|', (size_t)p->vl);
        if (!bar1) return 0;
        const char *vend = p->v + p->vl;
        const char *bar2 = memchr(bar1 + 1, '|', (size_t)(vend - bar1 - 1));
        if (!bar2) return 0;
        if (bar2 - bar1 - 1 != epl || memcmp(bar1 + 1, ep, (size_t)epl) != 0) return 0;
        tile_group[i] = (int8_t)g;
        tile_body[i] = bar2 + 1;
        tile_body_len[i] = vend - bar2 - 1;
    }
    for (int f = 0; f < kp->n_fixed; f++)
        if (fixed_at[f] < 0) return 0;
    JParser jp = {NULL, NULL, nodes, 0};
    int parsed[MAX_FIXED];
    for (int f = 0; f < kp->n_fixed; f++) {
        parsed[f] = -1;
        if (f == 0 || kp->parse[f]) {
            const Pair *p = &pairs[fixed_at[f]];
            parsed[f] = parse_doc(&jp, p->v, p->vl);
            if (parsed[f] < 0) return 0;
        }
    }
    int manifest = parsed[0];
    if (nodes[manifest].type != J_OBJ) return 0;
    int counts = obj_get(nodes, manifest, "t", 1);
    if (counts >= 0 && nodes[counts].type == J_NULL) counts = -2;
    if (counts >= 0 && nodes[counts].type != J_OBJ) return 0;
    int64_t cutoff = 0, days_late = 0;
    if (kp->batch) {
        const Pair *pe = &pairs[fixed_at[kp->epoch_slot]];
        if (pe->vl != epl || memcmp(pe->v, ep, (size_t)epl) != 0) return 0;
        const Pair *pc = &pairs[fixed_at[kp->cutoff_slot]];
        const char *stop;
        if (!parse_int(pc->v, pc->v + pc->vl, &stop, &cutoff) || stop != pc->v + pc->vl) return 0;
        int listed = obj_get(nodes, manifest, "b", 1);
        if (listed < 0) return 0;
        int l0 = arr_get(nodes, listed, 0);  /* the listed cut-off: an int or its canonical text (as writes.py puts it) */
        if (l0 < 0) return 0;
        int64_t listed_cutoff;
        if (nodes[l0].type == J_INT) listed_cutoff = nodes[l0].i;
        else if (nodes[l0].type != J_STR || !parse_int(nodes[l0].s, nodes[l0].s + nodes[l0].n, &stop, &listed_cutoff) ||
                 stop != nodes[l0].s + nodes[l0].n) return 0;
        if (listed_cutoff != cutoff) return 0;
        if (cutoff > b->T || (b->has_run_cutoff && cutoff < b->run_cutoff)) return 0;
        const Pair *pr = &pairs[fixed_at[kp->run_slot]];
        if (!utf8_ok((const unsigned char *)pr->v, pr->vl)) return 0;
        *run = pr->v;
        *run_len = pr->vl;
        i128 late = ((i128)b->T - cutoff) / kp->batch_day;
        if (late > INT64_MAX) return 0;
        days_late = (int64_t)late;
    }
    *cutoff_out = cutoff;
    /* the tiles, merged in the hash's order */
    Acc acc[MAX_AGGS];
    int64_t st[MAX_AGGS];
    int64_t lo[MAX_GROUPS];
    for (int g = 0; g < kp->n_groups; g++) {
        const GroupDesc *gd = &kp->groups[g];
        for (int a = gd->first_agg; a < gd->first_agg + gd->n_aggs; a++) {
            memset(&acc[a], 0, sizeof(Acc));
            acc[a].node = -1;
            st[a] = kp->aggs[a].stream ? b->st[a] : cutoff;
        }
        if (gd->any_stream && gd->any_batch) lo[g] = b->stream_lo[g] < cutoff ? b->stream_lo[g] : cutoff;
        else lo[g] = gd->any_stream ? b->stream_lo[g] : cutoff;
    }
    int n_tiles[MAX_GROUPS] = {0};
    int64_t newest[MAX_GROUPS];
    for (Py_ssize_t i = 0; i < np; i++) {
        int g = tile_group[i];
        if (g < 0) continue;
        const GroupDesc *gd = &kp->groups[g];
        int64_t s = tile_start[i];
        if (n_tiles[g] == 0 || s > newest[g]) newest[g] = s;
        n_tiles[g]++;
        for (Py_ssize_t o = 0; o < i; o++)  /* a start twice */
            if (tile_group[o] == g && tile_start[o] == s) return 0;
        if (!gd->n_aggs || s < lo[g]) continue;
        int vec = parse_doc(&jp, tile_body[i], tile_body_len[i]);
        if (vec < 0) return 0;
        for (int a = gd->first_agg; a < gd->first_agg + gd->n_aggs; a++) {
            if (s < st[a]) continue;
            int x = arr_get(nodes, vec, kp->aggs[a].index);
            if (x < 0) return 0;
            Acc xa;
            if (!take(nodes, kp->aggs[a].kind, x, &xa)) return 0;
            merge(kp->aggs[a].kind, &acc[a], &xa);
        }
    }
    for (int a = 0; a < kp->n_aggs; a++)  /* a count's tiles beyond int64: the generic evaluation's merge raises */
        if (kp->aggs[a].kind == K_COUNT && acc[a].sum > INT64_MAX) return 0;
    /* per group: the manifest's count and loss mark, then each output */
    for (int g = 0; g < kp->n_groups; g++) {
        const GroupDesc *gd = &kp->groups[g];
        int n = n_tiles[g];
        int64_t lost_upto = -1;
        int entry = counts >= 0 ? obj_get(nodes, counts, PyBytes_AS_STRING(gd->size), PyBytes_GET_SIZE(gd->size)) : -2;
        if (entry >= 0 && nodes[entry].type == J_NULL) entry = -2;
        if (entry < 0) {
            if (n) return 0;
        } else {
            int e0 = arr_get(nodes, entry, 0), e2 = arr_get(nodes, entry, 2);
            if (e0 < 0 || e2 < 0 || nodes[e0].type != J_INT || nodes[e2].type != J_INT || nodes[e0].i != n) return 0;
            lost_upto = nodes[e2].i;
        }
        if (!gd->n_aggs) continue;
        i128 oldest_kept = (i128)(n ? newest[g] : b->now_floor[g]) - gd->retention;
        for (int a = gd->first_agg; a < gd->first_agg + gd->n_aggs; a++) {
            const AggDesc *ad = &kp->aggs[a];
            if (!ad->stream) continue;
            if (ad->kind == K_COUNT && acc[a].sum > INT64_MAX) return 0;
            int ok = st[a] > lost_upto && b->applied_from <= st[a] && (i128)st[a] >= oldest_kept;
            if (ad->kind == K_SUM && !in_i64(acc[a].sum)) ok = 0;
            if (ok) out_final(&outs[a], ad->kind, &acc[a], 1); else out_inc(&outs[a]);
        }
        if (!gd->any_batch) continue;
        if (cutoff <= lost_upto) {
            for (int a = gd->first_agg; a < gd->first_agg + gd->n_aggs; a++)
                if (!kp->aggs[a].stream) out_inc(&outs[a]);
            continue;
        }
        int batch_ok = b->applied_from <= cutoff && (i128)cutoff >= oldest_kept;
        int window_ok = batch_ok && days_late <= kp->tail_days;
        for (int a = gd->first_agg; a < gd->first_agg + gd->n_aggs; a++) {
            const AggDesc *ad = &kp->aggs[a];
            if (ad->stream) continue;
            int parts = parsed[ad->slot];
            int x = arr_get(nodes, arr_get(nodes, parts, 0), ad->batch_index);
            if (x < 0) return 0;
            Acc bacc;
            if (!take(nodes, ad->kind, x, &bacc)) return 0;
            int ok;
            if (ad->lifetime) {
                if (!batch_ok) { out_inc(&outs[a]); continue; }
            } else {
                if (!window_ok) { out_inc(&outs[a]); continue; }
                for (int64_t t = 1 + days_late; t <= kp->tail_days; t++) {
                    int y = arr_get(nodes, arr_get(nodes, parts, t), ad->batch_index);
                    if (y < 0) return 0;
                    Acc ya;
                    if (!take(nodes, ad->kind, y, &ya)) return 0;
                    merge(ad->kind, &bacc, &ya);
                }
            }
            merge(ad->kind, &bacc, &acc[a]);
            if (ad->kind == K_COUNT && bacc.sum > INT64_MAX) return 0;
            ok = !(ad->kind == K_SUM && !in_i64(bacc.sum));
            if (ok) out_final(&outs[a], ad->kind, &bacc, ad->lifetime && days_late > kp->tail_days ? 2 : 1);
            else out_inc(&outs[a]);
        }
    }
    return 1;
}

static PyObject *node_value(const JNode *n) {
    switch (n->type) {
    case J_NULL: Py_RETURN_NONE;
    case J_TRUE: Py_RETURN_TRUE;
    case J_FALSE: Py_RETURN_FALSE;
    case J_INT: return PyLong_FromLongLong(n->i);
    case J_STR: return PyUnicode_DecodeUTF8(n->s, n->n, "strict");
    }
    PyErr_SetString(PyExc_ValueError, "not a plain value");
    return NULL;
}

static PyObject *pass_on(BoundRead *b, PyObject *r) {
    b->passed++;
    return PyObject_CallOneArg(b->fallback, r);
}

static PyObject *bound_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    BoundRead *b = (BoundRead *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "a bound read takes one entity reply");
        return NULL;
    }
    PyObject *r = args[0];
    ViewKernel *kp = b->kernel;
    JNode nodes[MAX_NODES];
    Out outs[MAX_AGGS];
    int64_t cutoff = 0;
    const char *run = NULL;
    Py_ssize_t run_len = 0;
    if (!read_entity(b, r, nodes, outs, &cutoff, &run, &run_len)) return pass_on(b, r);
    /* finish(run, cutoff, v0, s0, v1, s1, ...) */
    PyObject *call[2 + 2 * MAX_AGGS];
    int n = 0;
    PyObject *status[3] = {kp->inc, kp->present, kp->stale};
    if (kp->batch) {
        PyObject *run_s = PyUnicode_DecodeUTF8(run, run_len, "strict");
        PyObject *c = PyLong_FromLongLong(cutoff);
        PyObject *c2 = PyLong_FromLongLong(cutoff);
        PyObject *t = (run_s && c && c2) ? PyTuple_Pack(2, run_s, c) : NULL;
        Py_XDECREF(run_s);
        Py_XDECREF(c);
        if (!t) { Py_XDECREF(c2); PyErr_Clear(); return pass_on(b, r); }
        call[n++] = t;
        call[n++] = c2;
    } else {
        Py_INCREF(Py_None); call[n++] = Py_None;
        Py_INCREF(Py_None); call[n++] = Py_None;
    }
    for (int a = 0; a < kp->n_aggs; a++) {
        PyObject *v;
        if (outs[a].kind == 0) { v = Py_None; Py_INCREF(v); }
        else if (outs[a].kind == 1) v = PyLong_FromLongLong(outs[a].iv);
        else v = node_value(&nodes[outs[a].node]);
        if (!v) {
            for (int i = 0; i < n; i++) Py_DECREF(call[i]);
            PyErr_Clear();
            return pass_on(b, r);
        }
        call[n++] = v;
        PyObject *s = status[outs[a].status];
        Py_INCREF(s);
        call[n++] = s;
    }
    b->served++;
    PyObject *res = PyObject_Vectorcall(b->finish, call, (size_t)n, NULL);
    for (int i = 0; i < n; i++) Py_DECREF(call[i]);
    return res;
}

static void bound_dealloc(BoundRead *self) {
    Py_XDECREF(self->kernel);
    Py_XDECREF(self->epoch);
    Py_XDECREF(self->fallback);
    Py_XDECREF(self->finish);
    PyObject_Free(self);
}

static PyObject *bound_served(BoundRead *self, void *closure) { return PyLong_FromSsize_t(self->served); }
static PyObject *bound_passed(BoundRead *self, void *closure) { return PyLong_FromSsize_t(self->passed); }

static PyGetSetDef bound_getset[] = {
    {"served", (getter)bound_served, NULL, "entities this read served in C", NULL},
    {"passed", (getter)bound_passed, NULL, "entities this read passed to the fallback", NULL},
    {NULL},
};

static PyTypeObject BoundReadType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "skewless.serving.read_kernel.BoundRead",
    .tp_basicsize = sizeof(BoundRead),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A view kernel bound to one read's context: call it with one entity hash reply.",
    .tp_dealloc = (destructor)bound_dealloc,
    .tp_vectorcall_offset = offsetof(BoundRead, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_getset = bound_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "read_kernel",
    "The uncached entity read of a feature view in C (see skewless/serving/compiled.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit_read_kernel(void) {
    if (PyType_Ready(&ViewKernelType) < 0 || PyType_Ready(&BoundReadType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&ViewKernelType);
    if (PyModule_AddObject(m, "ViewKernel", (PyObject *)&ViewKernelType) < 0) {
        Py_DECREF(&ViewKernelType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "COUNT", K_COUNT) < 0 || PyModule_AddIntConstant(m, "SUM", K_SUM) < 0 ||
        PyModule_AddIntConstant(m, "MIN", K_MIN) < 0 || PyModule_AddIntConstant(m, "MAX", K_MAX) < 0 ||
        PyModule_AddIntConstant(m, "LAST", K_LAST) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
