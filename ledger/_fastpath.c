/* Optional native fast path for statements (docs/protocol.md §3): parsing the exact
 * canonical form of a statement, or of a batch of them, into Statement objects, and
 * verifying their Ed25519 signatures with the GIL released.
 *
 * The parser (its JSON part in ledger/_fastpath_json.c) knows one grammar only: the
 * bytes Python's json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
 * writes, encoded as UTF-8 - no whitespace, object keys strictly increasing by code
 * point (so no duplicates), strings in strict UTF-8 (no surrogates, no overlong forms)
 * with exactly Python's escapes (\" \\ \b \f \n \r \t, other controls as \u00xx in
 * lowercase hex), integers of at most 18 digits without leading zeros or "-0", no
 * floats, nesting at most MAX_DEPTH. On top it checks everything ledger/statement.py's
 * _from_json and Statement.__post_init__ check (the signer key through the Python
 * resolver given to configure(), cached). It never makes an error message: whatever it
 * does not accept - hostile input or merely an unusual spelling the strict parser may
 * still take - is "not fast" (None), and the caller runs the Python parser, which
 * accepts it or names the fault (tests/test_statement_native.py).
 *
 * Built by setup.py when OpenSSL's and libsodium's headers are present (optional).
 * Ed25519 is libsodium's crypto_sign_verify_detached, the function PyNaCl calls, so
 * both paths accept exactly the same signatures. */
#include "_fastpath.h"
#include <openssl/sha.h>
#include <sodium.h>
#include <string.h>

#define SIGNER_CACHE_MAX 4096

static PyObject *statement_type;  /* ledger.statement.Statement */
static PyObject *resolver;        /* signer str -> 32-byte Ed25519 public key, or raises */
static PyObject *signer_cache;    /* dict: signer str -> public key bytes */
static PyObject *s_body, *s_kind, *s_run, *s_seq, *s_sig, *s_signer, *s_v, *s_raw, *s_leaf;
static PyObject *s_prev, *s_step, *s_dataset, *s_lazy_prev;
static PyObject *kinds[3];        /* "run.open", "step", "run.close" */
static PyObject *one, *empty_args;

/* --- field checks (ledger/statement.py BODY_FIELDS, DATASET_FIELDS) ------------------ */

enum { C_HASH, C_HEX, C_INT, C_DECIMAL, C_STR, C_OBJ };
typedef struct {
    const char *name;
    int check, required;
    PyObject *key;
    size_t len;
} Rule;

static Rule open_rules[] = {
    {"seed_commitment", C_HASH, 1}, {"dataset", C_OBJ, 1}, {"recipe", C_OBJ, 0},
    {"hyperparameters", C_OBJ, 0}, {"environment", C_OBJ, 0}, {"weights_hash", C_STR, 0},
    {"beacon", C_OBJ, 0}, {"data_parallel", C_OBJ, 0}, {NULL}};
static Rule step_rules[] = {
    {"prev", C_HASH, 1}, {"step", C_INT, 1}, {"batch_root", C_HASH, 1}, {"epoch", C_INT, 0},
    {"batch_size", C_INT, 0}, {"loss", C_DECIMAL, 0}, {"lr", C_DECIMAL, 0},
    {"weights", C_HEX, 0}, {"checkpoint", C_OBJ, 0}, {"beacon_checkpoint", C_STR, 0},
    {"beacon_round", C_OBJ, 0}, {"open_checkpoint", C_STR, 0}, {NULL}};
static Rule close_rules[] = {
    {"prev", C_HASH, 1}, {"steps", C_INT, 0}, {"weights", C_HEX, 0}, {"s_rand", C_STR, 0},
    {"manifest", C_HEX, 0}, {"final_weights", C_HEX, 0}, {"final_state", C_HASH, 0},
    {"challenge_beacon", C_OBJ, 0}, {"reason", C_STR, 0}, {NULL}};
static Rule dataset_rules[] = {
    {"root", C_HASH, 1}, {"size", C_INT, 1}, {"example_hash", C_STR, 0},
    {"sorted_root", C_HASH, 0}, {"distinct", C_INT, 0}, {"hash_list", C_HASH, 0}, {NULL}};
static Rule *rules_of[3] = {open_rules, step_rules, close_rules};

static int lower_hex(PyObject *v, Py_ssize_t lo, Py_ssize_t hi, int even) {
    if (!PyUnicode_Check(v) || PyUnicode_KIND(v) != PyUnicode_1BYTE_KIND) return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    if (n < lo || n > hi || (even && n % 2)) return 0;
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(v);
    for (Py_ssize_t i = 0; i < n; i++)
        if (fp_hexval(s[i]) < 0) return 0;
    return 1;
}

static int digits(const Py_UCS1 *s, Py_ssize_t n, Py_ssize_t *i) {
    Py_ssize_t j = *i;
    while (*i < n && s[*i] >= '0' && s[*i] <= '9') (*i)++;
    return *i > j;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? or, any case, -?(nan|inf|infinity), in
 * ASCII; any other byte (an escape, a non-ASCII character): not fast, the regular
 * expression decides. */
static int decimal_bytes(const Py_UCS1 *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    if (i < n && s[i] == '-') i++;
    if (i < n && (s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z') {
        char w[9];
        Py_ssize_t m = n - i;
        if (m > 8) return 0;
        for (Py_ssize_t k = 0; k < m; k++) w[k] = (char)(s[i + k] | 0x20);
        w[m] = 0;
        for (Py_ssize_t k = 0; k < m; k++)
            if (s[i + k] < 'A' || (s[i + k] > 'Z' && s[i + k] < 'a') || s[i + k] > 'z')
                return 0;
        return !strcmp(w, "nan") || !strcmp(w, "inf") || !strcmp(w, "infinity");
    }
    if (i < n && s[i] == '0') i++;
    else if (!digits(s, n, &i)) return 0;
    if (i < n && s[i] == '.') {
        i++;
        if (!digits(s, n, &i)) return 0;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        if (!digits(s, n, &i)) return 0;
    }
    return i == n;
}

static int decimal(PyObject *v) {
    if (!PyUnicode_Check(v) || !PyUnicode_IS_ASCII(v)) return 0;
    return decimal_bytes(PyUnicode_1BYTE_DATA(v), PyUnicode_GET_LENGTH(v));
}

static int check_fields(PyObject *obj, Rule *rules) {
    for (Rule *r = rules; r->name; r++) {
        PyObject *v = PyDict_GetItemWithError(obj, r->key);
        if (!v) {
            if (PyErr_Occurred() || r->required) return 0;
            continue;
        }
        int ok;
        switch (r->check) {
        case C_HASH: ok = lower_hex(v, 64, 64, 0); break;
        case C_HEX: ok = lower_hex(v, 32, 128, 1); break;
        case C_INT: ok = PyLong_CheckExact(v) && PyLong_AsLongLong(v) >= 0; break;
        case C_DECIMAL: ok = decimal(v); break;
        case C_STR: ok = PyUnicode_Check(v); break;
        default: ok = PyDict_Check(v);
        }
        if (!ok) return 0;
    }
    return 1;
}

/* The same checks on a value's canonical bytes [v, e) (validation-only parsing). */
static int all_hex(const unsigned char *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (fp_hexval(s[i]) < 0) return 0;
    return 1;
}

static int check_bytes(const unsigned char *v, const unsigned char *e, int check) {
    Py_ssize_t n = e - v - 2;  /* a string's length between its quotes */
    switch (check) {
    case C_HASH: return *v == '"' && n == 64 && all_hex(v + 1, n);
    case C_HEX: return *v == '"' && n >= 32 && n <= 128 && !(n % 2) && all_hex(v + 1, n);
    case C_INT: return *v >= '0' && *v <= '9';  /* at most 18 digits: in range */
    case C_DECIMAL: return *v == '"' && decimal_bytes(v + 1, n);
    case C_STR: return *v == '"';
    default: return *v == '{';
    }
}

/* The member named by `r` (keys with an escape never match a field name), or NULL. */
static const FpMember *member(const FpMember *m, int n, const Rule *r) {
    for (int i = 0; i < n; i++)
        if ((size_t)m[i].klen == r->len && m[i].k[0] == (unsigned char)r->name[0] &&
            !memcmp(m[i].k, r->name, r->len))
            return m + i;
    return NULL;
}

static int check_members(const FpMember *m, int n, Rule *rules) {
    for (Rule *r = rules; r->name; r++) {
        const FpMember *x = member(m, n, r);
        if (!x) {
            if (r->required) return 0;
            continue;
        }
        if (!check_bytes(x->v, x->vend, r->check)) return 0;
    }
    return 1;
}

/* --- statements ---------------------------------------------------------------------- */


/* The 88 characters [A-Za-z0-9+/]{85}[AQgw]== (canonical base64 of 64 bytes). */
static int decode_sig(const unsigned char *s, unsigned char *out) {
    int v[86];
    for (int i = 0; i < 86; i++)
        if ((v[i] = fp_b64val(s[i])) < 0) return 0;
    if (v[85] & 15 || s[86] != '=' || s[87] != '=') return 0;
    for (int g = 0; g < 21; g++) {
        int x = v[4 * g] << 18 | v[4 * g + 1] << 12 | v[4 * g + 2] << 6 | v[4 * g + 3];
        out[3 * g] = (unsigned char)(x >> 16);
        out[3 * g + 1] = (unsigned char)(x >> 8);
        out[3 * g + 2] = (unsigned char)x;
    }
    out[63] = (unsigned char)(v[84] << 2 | v[85] >> 4);
    return 1;
}

/* The signer's public key (a borrowed bytes object) from the cache or the resolver. */
static PyObject *public_key(PyObject *signer) {
    PyObject *k = PyDict_GetItemWithError(signer_cache, signer);
    if (k || PyErr_Occurred()) return k;
    if (!resolver) return NULL;
    k = PyObject_CallOneArg(resolver, signer);
    if (!k) return NULL;
    if (!PyBytes_CheckExact(k) || PyBytes_GET_SIZE(k) != 32) {
        Py_DECREF(k);
        return NULL;
    }
    if (PyDict_GET_SIZE(signer_cache) >= SIGNER_CACHE_MAX) PyDict_Clear(signer_cache);
    int r = PyDict_SetItem(signer_cache, signer, k);
    Py_DECREF(k);
    return r < 0 ? NULL : k;  /* the cache holds it */
}

static int field_key(Parser *ps, const char *name) {
    size_t n = strlen(name);
    return fp_lit(ps, ",\"", 2) && fp_lit(ps, name, n) && fp_lit(ps, "\":", 2);
}

#define MAX_MEMBERS 64  /* body members recorded by the validation-only parse */

static Rule prev_rule = {"prev", C_HASH, 1, NULL, 4};
static Rule step_rule = {"step", C_INT, 1, NULL, 4};
static Rule dataset_rule = {"dataset", C_OBJ, 1, NULL, 7};

/* Statement.__post_init__'s body checks on the members of a body validated, not built:
 * 1 if they pass, with *prev the body's prev (a new str; None for a run.open). */
static int check_body_bytes(const FpMember *m, int n, int kind, long long seqv,
                            const unsigned char *b0, const unsigned char *b1,
                            const unsigned char *r, PyObject **prev) {
    if (!check_members(m, n, rules_of[kind])) return 0;
    if (kind == 0) {
        if (seqv != 0 || member(m, n, &prev_rule)) return 0;
        const FpMember *d = member(m, n, &dataset_rule);
        FpMember dm[MAX_MEMBERS];
        int dn;
        Parser sub = {.start = d->v, .p = d->v, .end = d->vend};
        if (!fp_scan_object(&sub, dm, MAX_MEMBERS, &dn) || !check_members(dm, dn, dataset_rules))
            return 0;
        unsigned char h[32];
        static const char hx[] = "0123456789abcdef";
        SHA256(b0, (size_t)(b1 - b0), h);
        for (int i = 0; i < 32; i++)
            if (r[2 * i] != hx[h[i] >> 4] || r[2 * i + 1] != hx[h[i] & 15]) return 0;
        Py_INCREF(Py_None);
        *prev = Py_None;
        return 1;
    }
    if (seqv == 0) return 0;
    if (kind == 1) {
        const FpMember *st = member(m, n, &step_rule);
        Parser sub = {.start = st->v, .p = st->v, .end = st->vend};
        long long stepv;
        if (!fp_scan_int(&sub, &stepv) || stepv != seqv - 1) return 0;
    }
    const FpMember *pv = member(m, n, &prev_rule);
    return (*prev = PyUnicode_FromStringAndSize((const char *)pv->v + 1, 64)) != NULL;
}

/* One statement at ps->p ('{'), exactly canonical and valid -> Statement, else NULL.
 * With `lazy` the body is validated without being built: the Statement gets its prev
 * as _prev and Python builds the body on first use (ledger/statement.py). */
static PyObject *parse_statement(Parser *ps, PyObject *raw_obj, int lazy) {
    const unsigned char *st = ps->p;
    PyObject *body = NULL, *run = NULL, *seq = NULL, *signer = NULL, *sig = NULL,
             *raw = NULL, *leaf = NULL, *obj = NULL, *prev = NULL;
    FpMember members[MAX_MEMBERS];
    int nm = 0;
    if (!fp_lit(ps, "{\"body\":", 8) || ps->p >= ps->end || *ps->p != '{') return FAIL;
    const unsigned char *b0 = ps->p;
    ps->depth = 0;
    if (lazy ? !fp_scan_object(ps, members, MAX_MEMBERS, &nm) : !(body = fp_parse_object(ps)))
        return FAIL;
    const unsigned char *b1 = ps->p;
    int kind;
    if (field_key(ps, "kind") == 0) goto fail;
    if (fp_lit(ps, "\"run.open\"", 10)) kind = 0;
    else if (fp_lit(ps, "\"step\"", 6)) kind = 1;
    else if (fp_lit(ps, "\"run.close\"", 11)) kind = 2;
    else goto fail;
    if (!field_key(ps, "run") || ps->end - ps->p < 66 || ps->p[0] != '"' || ps->p[65] != '"')
        goto fail;
    const unsigned char *r = ps->p + 1;
    for (int i = 0; i < 64; i++)
        if (fp_hexval(r[i]) < 0) goto fail;
    ps->p += 66;
    if (!field_key(ps, "seq") || ps->p >= ps->end || *ps->p == '-') goto fail;
    if (!(seq = fp_parse_int(ps))) goto fail;
    long long seqv = PyLong_AsLongLong(seq);
    unsigned char sigb[64];
    if (!field_key(ps, "sig") || ps->end - ps->p < 90 || ps->p[0] != '"' || ps->p[89] != '"' ||
        !decode_sig(ps->p + 1, sigb))
        goto fail;
    ps->p += 90;
    if (!field_key(ps, "signer") || ps->p >= ps->end || *ps->p != '"') goto fail;
    const unsigned char *sg = ps->p;
    if (ps->signer && ps->end - sg > ps->signer_len &&
        !memcmp(sg, ps->signer_at, (size_t)ps->signer_len)) {  /* the same token */
        signer = ps->signer;
        Py_INCREF(signer);
        ps->p += ps->signer_len;
    } else {
        if (!(signer = fp_parse_string(ps))) goto fail;
        Py_INCREF(signer);
        Py_XSETREF(ps->signer, signer);
        ps->signer_at = sg;
        ps->signer_len = ps->p - sg;
    }
    if (!fp_lit(ps, ",\"v\":1}", 7)) goto fail;
    if (!public_key(signer)) goto fail;
    /* Statement.__post_init__'s checks */
    if (lazy) {
        if (!check_body_bytes(members, nm, kind, seqv, b0, b1, r, &prev)) goto fail;
    } else if (!check_fields(body, rules_of[kind])) goto fail;
    else if (kind == 0) {
        if (seqv != 0) goto fail;
        int has = PyDict_Contains(body, s_prev);
        if (has != 0) goto fail;
        if (!check_fields(PyDict_GetItem(body, s_dataset), dataset_rules)) goto fail;
        unsigned char h[32];
        static const char hx[] = "0123456789abcdef";
        SHA256(b0, (size_t)(b1 - b0), h);
        for (int i = 0; i < 32; i++)
            if (r[2 * i] != hx[h[i] >> 4] || r[2 * i + 1] != hx[h[i] & 15]) goto fail;
    } else {
        if (seqv == 0) goto fail;
        if (kind == 1 && PyLong_AsLongLong(PyDict_GetItem(body, s_step)) != seqv - 1)
            goto fail;
    }
    Py_ssize_t n = ps->p - st;
    if (raw_obj) {
        raw = raw_obj;
        Py_INCREF(raw);
    } else if (!(raw = PyBytes_FromStringAndSize((const char *)st, n))) goto fail;
    if (!(leaf = PyBytes_FromStringAndSize(NULL, 32))) goto fail;
    SHA256_CTX c;
    SHA256_Init(&c);
    SHA256_Update(&c, "\0", 1);
    SHA256_Update(&c, st, (size_t)n);
    SHA256_Final((unsigned char *)PyBytes_AS_STRING(leaf), &c);
    if (ps->run && !memcmp(r, ps->run_at, 64)) {
        run = ps->run;
        Py_INCREF(run);
    } else {
        if (!(run = PyUnicode_FromStringAndSize((const char *)r, 64))) goto fail;
        Py_INCREF(run);
        Py_XSETREF(ps->run, run);
        ps->run_at = r;
    }
    if (!(sig = PyBytes_FromStringAndSize((const char *)sigb, 64))) goto fail;
    /* object.__new__ then plain attribute stores: the instance keeps its attributes
     * inline, with the keys its class shares (cheaper to make and to free than a dict) */
    PyTypeObject *t = (PyTypeObject *)statement_type;
    if (!(obj = t->tp_new(t, empty_args, NULL))) goto fail;
    if (PyObject_GenericSetAttr(obj, s_kind, kinds[kind]) < 0 ||
        PyObject_GenericSetAttr(obj, s_run, run) < 0 ||
        PyObject_GenericSetAttr(obj, s_seq, seq) < 0 ||
        PyObject_GenericSetAttr(obj, s_signer, signer) < 0 ||
        PyObject_GenericSetAttr(obj, s_sig, sig) < 0 ||
        PyObject_GenericSetAttr(obj, lazy ? s_lazy_prev : s_body, lazy ? prev : body) < 0 ||
        PyObject_GenericSetAttr(obj, s_v, one) < 0 ||
        PyObject_GenericSetAttr(obj, s_raw, raw) < 0 ||
        PyObject_GenericSetAttr(obj, s_leaf, leaf) < 0)
        goto fail;
    Py_XDECREF(body); Py_XDECREF(prev); Py_DECREF(run); Py_DECREF(seq); Py_DECREF(signer);
    Py_DECREF(sig); Py_DECREF(raw); Py_DECREF(leaf);
    return obj;
fail:
    Py_XDECREF(obj); Py_XDECREF(prev);
    Py_XDECREF(body); Py_XDECREF(run); Py_XDECREF(seq); Py_XDECREF(signer); Py_XDECREF(sig);
    Py_XDECREF(raw); Py_XDECREF(leaf);
    return FAIL;
}

static void parser_init(Parser *ps, const char *data, Py_ssize_t len, Py_ssize_t pos) {
    ps->start = (const unsigned char *)data;
    ps->p = ps->start + pos;
    ps->end = ps->start + len;
    ps->depth = 0;
    ps->memo = NULL;
    ps->buf = NULL;
    ps->cap = 0;
    ps->run = ps->signer = NULL;
    ps->run_at = ps->signer_at = NULL;
    ps->signer_len = 0;
}

static void parser_free(Parser *ps) {
    Py_XDECREF(ps->memo);
    PyMem_Free(ps->buf);
    Py_XDECREF(ps->run);
    Py_XDECREF(ps->signer);
}

static PyObject *not_fast(Parser *ps) {
    PyErr_Clear();  /* whatever went wrong, the Python parser will meet it again */
    parser_free(ps);
    Py_RETURN_NONE;
}

/* parse_one(data: bytes, lazy: bool) -> Statement | None */
static PyObject *parse_one(PyObject *self, PyObject *args) {
    PyObject *data;
    int lazy;
    if (!PyArg_ParseTuple(args, "Op", &data, &lazy)) return NULL;
    if (!statement_type || !PyBytes_CheckExact(data)) Py_RETURN_NONE;
    Parser ps;
    parser_init(&ps, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), 0);
    if (!(ps.memo = PyDict_New())) return not_fast(&ps);
    PyObject *st = parse_statement(&ps, data, lazy);
    if (!st || ps.p != ps.end) {
        Py_XDECREF(st);
        return not_fast(&ps);
    }
    parser_free(&ps);
    return st;
}

/* parse_batch(data: bytes, pos: int, count: int, lazy: bool) -> (list, next) | None: up
 * to `count` statements of the canonical batch `data` (a JSON array, no whitespace) from
 * byte `pos`, which must start a statement; `next` is where the next one starts, or -1
 * after the last (the final ']' is the last byte of `data`). */
static PyObject *parse_batch(PyObject *self, PyObject *args) {
    PyObject *data;
    Py_ssize_t pos, count;
    int lazy;
    if (!PyArg_ParseTuple(args, "Snnp", &data, &pos, &count, &lazy)) return NULL;
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    if (!statement_type || pos < 1 || pos >= len || count < 1) Py_RETURN_NONE;
    Parser ps;
    parser_init(&ps, PyBytes_AS_STRING(data), len, pos);
    PyObject *out = PyList_New(0);
    ps.memo = PyDict_New();
    if (!out || !ps.memo) {
        Py_XDECREF(out);
        return not_fast(&ps);
    }
    Py_ssize_t next = -1;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *st = parse_statement(&ps, NULL, lazy);
        if (!st || PyList_Append(out, st) < 0) {
            Py_XDECREF(st);
            Py_DECREF(out);
            return not_fast(&ps);
        }
        Py_DECREF(st);
        if (ps.p + 1 < ps.end && ps.p[0] == ',' && ps.p[1] == '{') {
            next = ++ps.p - ps.start;
            continue;
        }
        if (ps.p + 1 == ps.end && *ps.p == ']') {
            next = -1;
            break;
        }
        Py_DECREF(out);
        return not_fast(&ps);
    }
    parser_free(&ps);
    return Py_BuildValue("Nn", out, next);
}

/* --- verification -------------------------------------------------------------------- */

static const char PREFIX[] = "potd-statement-v1\n";
#define PREFIX_LEN 18

typedef struct {
    const unsigned char *raw, *sig, *pk;
    Py_ssize_t len;
} Job;

/* verify(statements: list, start: int) -> int: the index of the first statement from
 * `start` on whose signature does not verify (or whose fields cannot be read), or
 * len(statements) if all do. The Ed25519 checks run with the GIL released. */
static PyObject *verify(PyObject *self, PyObject *args) {
    PyObject *list;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!n", &PyList_Type, &list, &start)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (start < 0) start = 0;
    if (start >= n) return PyLong_FromSsize_t(n);
    Py_ssize_t m = n - start, ready = 0, maxlen = 0;
    Job *jobs = PyMem_Malloc(sizeof(Job) * (size_t)m);
    PyObject *held = PyList_New(0);  /* keeps raw, sig and key alive without the GIL */
    if (!jobs || !held) {
        PyMem_Free(jobs);
        Py_XDECREF(held);
        return PyErr_NoMemory();
    }
    for (; ready < m && start + ready < PyList_GET_SIZE(list); ready++) {
        /* the resolver runs Python code: the list may change meanwhile */
        PyObject *st = PyList_GET_ITEM(list, start + ready);
        Py_INCREF(st);
        PyObject *raw = PyObject_GetAttr(st, s_raw);
        PyObject *sig = raw ? PyObject_GetAttr(st, s_sig) : NULL;
        PyObject *signer = sig ? PyObject_GetAttr(st, s_signer) : NULL;
        PyObject *pk = signer && PyUnicode_Check(signer) ? public_key(signer) : NULL;
        int ok = pk && PyBytes_CheckExact(raw) && PyBytes_CheckExact(sig) &&
                 PyBytes_GET_SIZE(sig) == 64 && PyList_Append(held, raw) == 0 &&
                 PyList_Append(held, sig) == 0 && PyList_Append(held, pk) == 0;
        Py_XDECREF(raw);
        Py_XDECREF(sig);
        Py_XDECREF(signer);
        Py_DECREF(st);
        if (!ok) {
            PyErr_Clear();
            break;
        }
        jobs[ready].raw = (const unsigned char *)PyBytes_AS_STRING(raw);
        jobs[ready].len = PyBytes_GET_SIZE(raw);
        jobs[ready].sig = (const unsigned char *)PyBytes_AS_STRING(sig);
        jobs[ready].pk = (const unsigned char *)PyBytes_AS_STRING(pk);
        if (jobs[ready].len > maxlen) maxlen = jobs[ready].len;
    }
    Py_ssize_t bad = ready;
    unsigned char *msg = PyMem_RawMalloc((size_t)maxlen + PREFIX_LEN + 1);
    if (!msg) bad = 0;
    else {
        Py_BEGIN_ALLOW_THREADS
        memcpy(msg, PREFIX, PREFIX_LEN);
        for (Py_ssize_t k = 0; k < ready; k++) {
            /* ledger/statement.py signing_message: raw without its last ,"sig":"..." */
            const unsigned char *raw = jobs[k].raw, *i = NULL;
            Py_ssize_t len = jobs[k].len;
            for (Py_ssize_t x = len - 8; x >= 0; x--)
                if (raw[x] == ',' && !memcmp(raw + x, ",\"sig\":\"", 8)) {
                    i = raw + x;
                    break;
                }
            const unsigned char *j = i ? memchr(i + 8, '"', (size_t)(raw + len - (i + 8)))
                                       : NULL;
            if (!j) {
                bad = k;
                break;
            }
            j++;
            size_t a = (size_t)(i - raw), b = (size_t)(raw + len - j);
            memcpy(msg + PREFIX_LEN, raw, a);
            memcpy(msg + PREFIX_LEN + a, j, b);
            if (crypto_sign_verify_detached(jobs[k].sig, msg, PREFIX_LEN + a + b,
                                            jobs[k].pk) != 0) {
                bad = k;
                break;
            }
        }
        Py_END_ALLOW_THREADS
    }
    PyMem_RawFree(msg);
    PyMem_Free(jobs);
    Py_DECREF(held);
    return PyLong_FromSsize_t(start + bad);
}

/* configure(Statement, resolver): the class to build and the signer-key resolver
 * (str -> 32-byte Ed25519 public key; raises for a key the Python path refuses). */
static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *cls, *res;
    if (!PyArg_ParseTuple(args, "O!O", &PyType_Type, &cls, &res)) return NULL;
    Py_INCREF(cls);
    Py_XSETREF(statement_type, cls);
    Py_INCREF(res);
    Py_XSETREF(resolver, res);
    PyDict_Clear(signer_cache);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse_one", parse_one, METH_VARARGS, "parse_one(data, lazy) -> Statement | None"},
    {"parse_batch", parse_batch, METH_VARARGS,
     "parse_batch(data, pos, count, lazy) -> (list of Statement, next) | None"},
    {"verify", verify, METH_VARARGS, "verify(statements, start) -> first failing index"},
    {"configure", configure, METH_VARARGS, "configure(Statement, resolver)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath",
                                    "Native statement parsing and Ed25519 verification.", -1,
                                    methods};

static int intern(PyObject **o, const char *s) {
    return (*o = PyUnicode_InternFromString(s)) != NULL;
}

PyMODINIT_FUNC PyInit__fastpath(void) {
    fp_init_tables();
    if (sodium_init() < 0) {
        PyErr_SetString(PyExc_ImportError, "libsodium failed to initialise");
        return NULL;
    }
    if (!intern(&s_body, "body") || !intern(&s_kind, "kind") || !intern(&s_run, "run") ||
        !intern(&s_seq, "seq") || !intern(&s_sig, "sig") || !intern(&s_signer, "signer") ||
        !intern(&s_v, "v") || !intern(&s_raw, "raw") || !intern(&s_leaf, "_leaf") ||
        !intern(&s_prev, "prev") || !intern(&s_step, "step") ||
        !intern(&s_dataset, "dataset") || !intern(&s_lazy_prev, "_prev") || !intern(&kinds[0], "run.open") ||
        !intern(&kinds[1], "step") || !intern(&kinds[2], "run.close"))
        return NULL;
    Rule *all[] = {open_rules, step_rules, close_rules, dataset_rules};
    for (int i = 0; i < 4; i++)
        for (Rule *r = all[i]; r->name; r++) {
            if (!intern(&r->key, r->name)) return NULL;
            r->len = strlen(r->name);
        }
    if (!(one = PyLong_FromLong(1)) || !(empty_args = PyTuple_New(0)) || !(signer_cache = PyDict_New())) return NULL;
    return PyModule_Create(&module);
}
