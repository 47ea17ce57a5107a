/* Optional accelerator for the log server's flush (ledger/merkle.py, ledger/log.py): the
 * same bytes as the pure-Python paths, without one interpreter call per SHA-256 or per
 * proof element. Built by setup.py when OpenSSL's headers are present; the Python paths
 * are used otherwise (tests/test_treehash.py checks that both agree).
 *
 *   extend(edge, size, leaves) -> levels
 *       CompactRange.extend: append leaf hashes to the right edge ``edge`` (a list,
 *       updated in place) of a tree of ``size`` leaves; ``levels[l]`` lists the new
 *       level-l stored hashes (RFC 6962 node hash SHA-256(0x01 || left || right)).
 *   range_proofs(size, first, levels, node) -> list of bytes
 *       log.prove_range_joined with the standard quoting: for each record
 *       first..size-1, its RFC 9162 inclusion proof in the tree of ``size`` as
 *       ``"b64","b64",...``; ``levels`` as returned by extend for the batch that
 *       starts at ``first``, ``node(level, n)`` for any other stored hash.
 *   replies(head, proofs, leaves, base, start, end) -> bytes
 *       the log server's JSON replies of records start..end-1 of a flush, joined by
 *       "," (ledger/sequencer.py builds the same bytes without it).
 *   bundle(entries) -> bytes
 *       a tlog-tiles entry bundle (ledger/tiles.py encode_bundle). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

#define HS 32
#define QUOTED 46 /* '"' + 44 base64 characters + '"' */

static void node_hash(const unsigned char *l, const unsigned char *r, unsigned char *out) {
    unsigned char buf[1 + 2 * HS];
    buf[0] = 1;
    memcpy(buf + 1, l, HS);
    memcpy(buf + 1 + HS, r, HS);
    SHA256(buf, sizeof buf, out);
}

static int as_hash(PyObject *o, const unsigned char **out) {
    if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) != HS) {
        PyErr_SetString(PyExc_ValueError, "a hash is 32 bytes");
        return -1;
    }
    *out = (const unsigned char *)PyBytes_AS_STRING(o);
    return 0;
}

static PyObject *extend(PyObject *self, PyObject *args) {
    PyObject *edge, *leaves_in;
    unsigned long long size;
    if (!PyArg_ParseTuple(args, "O!KO", &PyList_Type, &edge, &size, &leaves_in))
        return NULL;
    PyObject *leaves = PySequence_List(leaves_in);
    if (leaves == NULL)
        return NULL;
    Py_ssize_t depth = PyList_GET_SIZE(edge);
    if (depth > 64 || depth != (Py_ssize_t)__builtin_popcountll(size)) {
        Py_DECREF(leaves);
        PyErr_SetString(PyExc_ValueError, "edge does not match the size");
        return NULL;
    }
    unsigned char stack[65][HS];
    for (Py_ssize_t i = 0; i < depth; i++) {
        const unsigned char *h;
        if (as_hash(PyList_GET_ITEM(edge, i), &h) < 0) {
            Py_DECREF(leaves);
            return NULL;
        }
        memcpy(stack[i], h, HS);
    }
    PyObject *levels = PyList_New(1);
    if (levels == NULL) {
        Py_DECREF(leaves);
        return NULL;
    }
    PyList_SET_ITEM(levels, 0, leaves); /* steals: level 0 is the leaves */
    Py_ssize_t count = PyList_GET_SIZE(leaves);
    unsigned long long n = size;
    for (Py_ssize_t i = 0; i < count; i++) {
        const unsigned char *leaf;
        if (as_hash(PyList_GET_ITEM(leaves, i), &leaf) < 0)
            goto fail;
        if (n == UINT64_MAX) {
            PyErr_SetString(PyExc_OverflowError, "tree too large");
            goto fail;
        }
        unsigned char cur[HS];
        memcpy(cur, leaf, HS);
        Py_ssize_t level = 0;
        for (unsigned long long m = n; m & 1; m >>= 1) {
            node_hash(stack[--depth], cur, cur);
            level++;
            if (level == PyList_GET_SIZE(levels)) {
                PyObject *fresh = PyList_New(0);
                if (fresh == NULL || PyList_Append(levels, fresh) < 0) {
                    Py_XDECREF(fresh);
                    goto fail;
                }
                Py_DECREF(fresh);
            }
            PyObject *h = PyBytes_FromStringAndSize((const char *)cur, HS);
            if (h == NULL || PyList_Append(PyList_GET_ITEM(levels, level), h) < 0) {
                Py_XDECREF(h);
                goto fail;
            }
            Py_DECREF(h);
        }
        memcpy(stack[depth++], cur, HS);
        n++;
    }
    PyObject *new_edge = PyList_New(depth);
    if (new_edge == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < depth; i++) {
        PyObject *h = PyBytes_FromStringAndSize((const char *)stack[i], HS);
        if (h == NULL) {
            Py_DECREF(new_edge);
            goto fail;
        }
        PyList_SET_ITEM(new_edge, i, h);
    }
    int rc = PyList_SetSlice(edge, 0, PyList_GET_SIZE(edge), new_edge);
    Py_DECREF(new_edge);
    if (rc < 0)
        goto fail;
    return levels;
fail:
    Py_DECREF(levels);
    return NULL;
}

/* -- range_proofs ---------------------------------------------------------------------- */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void quote(const unsigned char *h, char *out) {
    int o = 0;
    out[o++] = '"';
    for (int i = 0; i < 30; i += 3) {
        unsigned v = (unsigned)h[i] << 16 | (unsigned)h[i + 1] << 8 | h[i + 2];
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = B64[v & 63];
    }
    unsigned v = (unsigned)h[30] << 16 | (unsigned)h[31] << 8;
    out[o++] = B64[v >> 18];
    out[o++] = B64[(v >> 12) & 63];
    out[o++] = B64[(v >> 6) & 63];
    out[o++] = '=';
    out[o++] = '"';
}

typedef struct {
    unsigned long long size, first;
    PyObject *levels, *node;
    int nmemo;
    unsigned long long memo_lo[130];
    unsigned char memo[130][HS];
} Ctx;

/* The stored hash of the complete subtree [lo, lo + 2**level). */
static int stored(Ctx *c, int level, unsigned long long lo, unsigned char *out) {
    unsigned long long idx = lo >> level, base = c->first >> level;
    if (idx >= base && level < PyList_GET_SIZE(c->levels)) {
        PyObject *lv = PyList_GET_ITEM(c->levels, level);
        if (!PyList_Check(lv)) {
            PyErr_SetString(PyExc_TypeError, "levels must be lists");
            return -1;
        }
        if (idx - base < (unsigned long long)PyList_GET_SIZE(lv)) {
            const unsigned char *h;
            if (as_hash(PyList_GET_ITEM(lv, (Py_ssize_t)(idx - base)), &h) < 0)
                return -1;
            memcpy(out, h, HS);
            return 0;
        }
    }
    PyObject *r = PyObject_CallFunction(c->node, "iK", level, idx);
    if (r == NULL)
        return -1;
    const unsigned char *h;
    int rc = as_hash(r, &h);
    if (rc == 0)
        memcpy(out, h, HS);
    Py_DECREF(r);
    return rc;
}

/* RFC 6962 MTH of leaves [lo, hi): stored if complete (splits keep subtrees aligned),
 * else hashed from its split (such ranges all end at the tree size: memoised by lo). */
static int mth(Ctx *c, unsigned long long lo, unsigned long long hi, unsigned char *out) {
    unsigned long long n = hi - lo;
    if ((n & (n - 1)) == 0)
        return stored(c, __builtin_ctzll(n), lo, out);
    for (int i = 0; i < c->nmemo; i++)
        if (c->memo_lo[i] == lo) {
            memcpy(out, c->memo[i], HS);
            return 0;
        }
    unsigned long long k = 1ULL << (63 - __builtin_clzll(n - 1));
    unsigned char l[HS], r[HS];
    if (mth(c, lo, lo + k, l) < 0 || mth(c, lo + k, hi, r) < 0)
        return -1;
    node_hash(l, r, out);
    if (c->nmemo < 130) {
        c->memo_lo[c->nmemo] = lo;
        memcpy(c->memo[c->nmemo++], out, HS);
    }
    return 0;
}

typedef struct {
    unsigned long long lo, hi;
    PyObject *tail; /* bytes, owned */
} Item;

/* quote(h) + ("," + tail if tail else "") as new bytes */
static PyObject *prepend(const unsigned char *h, PyObject *tail) {
    Py_ssize_t tl = PyBytes_GET_SIZE(tail);
    PyObject *o = PyBytes_FromStringAndSize(NULL, QUOTED + (tl ? tl + 1 : 0));
    if (o == NULL)
        return NULL;
    char *p = PyBytes_AS_STRING(o);
    quote(h, p);
    if (tl) {
        p[QUOTED] = ',';
        memcpy(p + QUOTED + 1, PyBytes_AS_STRING(tail), (size_t)tl);
    }
    return o;
}

static PyObject *range_proofs(PyObject *self, PyObject *args) {
    Ctx c;
    if (!PyArg_ParseTuple(args, "KKO!O", &c.size, &c.first, &PyList_Type, &c.levels, &c.node))
        return NULL;
    if (c.first >= c.size || c.size - c.first > (unsigned long long)PY_SSIZE_T_MAX) {
        PyErr_SetString(PyExc_ValueError, "need first < size");
        return NULL;
    }
    c.nmemo = 0;
    Py_ssize_t count = (Py_ssize_t)(c.size - c.first);
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    Item todo[140];
    int top = 0;
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    if (empty == NULL)
        goto fail;
    todo[top++] = (Item){0, c.size, empty};
    while (top) {
        Item it = todo[--top];
        if (it.hi - it.lo == 1) {
            PyList_SET_ITEM(out, (Py_ssize_t)(it.lo - c.first), it.tail); /* steals */
            continue;
        }
        unsigned long long n = it.hi - it.lo;
        unsigned long long mid = it.lo + (1ULL << (63 - __builtin_clzll(n - 1)));
        unsigned char h[HS];
        if (c.first < mid) { /* records on the left: the right half is their sibling */
            if (mth(&c, mid, it.hi, h) < 0)
                goto fail_item;
            PyObject *t = prepend(h, it.tail);
            if (t == NULL)
                goto fail_item;
            todo[top++] = (Item){it.lo, mid, t};
        }
        if (mth(&c, it.lo, mid, h) < 0)
            goto fail_item;
        PyObject *t = prepend(h, it.tail);
        if (t == NULL)
            goto fail_item;
        todo[top++] = (Item){mid, it.hi, t};
        Py_DECREF(it.tail);
        continue;
    fail_item:
        Py_DECREF(it.tail);
        goto fail;
    }
    return out;
fail:
    while (top)
        Py_DECREF(todo[--top].tail);
    Py_DECREF(out); /* unset items are NULL: list dealloc skips them */
    return NULL;
}

/* replies(head, proofs, leaves, base, start, end) -> bytes: the log server's replies of
 * records start..end-1 of a flush, joined by ",": each
 * head + proofs[k] + '],"index":<base+k>,"leaf_hash":"<base64 leaves[k]>"}'. */
static PyObject *replies(PyObject *self, PyObject *args) {
    PyObject *head, *proofs, *leaves;
    unsigned long long base;
    Py_ssize_t start, end;
    if (!PyArg_ParseTuple(args, "SO!OKnn", &head, &PyList_Type, &proofs, &leaves, &base,
                          &start, &end))
        return NULL;
    if (!PyTuple_Check(leaves) && !PyList_Check(leaves)) {
        PyErr_SetString(PyExc_TypeError, "leaves must be a tuple or list");
        return NULL;
    }
    Py_ssize_t nl = PySequence_Fast_GET_SIZE(leaves);
    if (start < 0 || end < start || end > PyList_GET_SIZE(proofs) || end > nl) {
        PyErr_SetString(PyExc_ValueError, "records outside the flush");
        return NULL;
    }
    static const char mid[] = "],\"index\":";
    static const char lh[] = ",\"leaf_hash\":";
    Py_ssize_t hl = PyBytes_GET_SIZE(head), total = 0;
    for (Py_ssize_t k = start; k < end; k++) {
        PyObject *p = PyList_GET_ITEM(proofs, k);
        if (!PyBytes_Check(p)) {
            PyErr_SetString(PyExc_TypeError, "proofs must be bytes");
            return NULL;
        }
        const unsigned char *h;
        if (as_hash(PySequence_Fast_GET_ITEM(leaves, k), &h) < 0)
            return NULL;
        total += hl + PyBytes_GET_SIZE(p) + (Py_ssize_t)(sizeof mid - 1 + 20 + sizeof lh - 1)
                 + QUOTED + 2;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(out), *w = o;
    for (Py_ssize_t k = start; k < end; k++) {
        PyObject *p = PyList_GET_ITEM(proofs, k);
        if (k > start)
            *w++ = ',';
        memcpy(w, PyBytes_AS_STRING(head), (size_t)hl);
        w += hl;
        memcpy(w, PyBytes_AS_STRING(p), (size_t)PyBytes_GET_SIZE(p));
        w += PyBytes_GET_SIZE(p);
        memcpy(w, mid, sizeof mid - 1);
        w += sizeof mid - 1;
        w += sprintf(w, "%llu", base + (unsigned long long)k);
        memcpy(w, lh, sizeof lh - 1);
        w += sizeof lh - 1;
        quote((const unsigned char *)PyBytes_AS_STRING(PySequence_Fast_GET_ITEM(leaves, k)), w);
        w += QUOTED;
        *w++ = '}';
    }
    if (_PyBytes_Resize(&out, w - o) < 0)
        return NULL;
    return out;
}

/* bundle(entries) -> bytes: a tlog-tiles entry bundle, each entry as uint16 BE length
 * || bytes (tiles.encode_bundle). */
static PyObject *bundle(PyObject *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "entries must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(e) || PyBytes_GET_SIZE(e) > 0xFFFF) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "entries are bytes of at most 65535");
            return NULL;
        }
        total += 2 + PyBytes_GET_SIZE(e);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out != NULL) {
        unsigned char *w = (unsigned char *)PyBytes_AS_STRING(out);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *e = PySequence_Fast_GET_ITEM(seq, i);
            Py_ssize_t len = PyBytes_GET_SIZE(e);
            *w++ = (unsigned char)(len >> 8);
            *w++ = (unsigned char)len;
            memcpy(w, PyBytes_AS_STRING(e), (size_t)len);
            w += len;
        }
    }
    Py_DECREF(seq);
    return out;
}

static PyMethodDef methods[] = {
    {"bundle", bundle, METH_O, "A tlog-tiles entry bundle."},
    {"replies", replies, METH_VARARGS, "The joined replies of a run of a flush's records."},
    {"extend", extend, METH_VARARGS, "Append leaf hashes to a compact range's edge."},
    {"range_proofs", range_proofs, METH_VARARGS,
     "Joined, quoted inclusion proofs of records first..size-1."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_treehash", NULL, -1, methods};

PyMODINIT_FUNC PyInit__treehash(void) { return PyModule_Create(&module); }
