/* The canonical JSON grammar of ledger/_fastpath.c (see there): Python's
 * json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) output in strict
 * UTF-8, and nothing else. Every function returns a new reference, or NULL for "not
 * this grammar" (a Python error may be set too; the caller clears it). */
#include "_fastpath.h"

static PyObject *parse_value(Parser *ps);

signed char FP_HEX[256], FP_B64[256];
static unsigned char STR_CLASS[256];  /* byte classes inside strings */
enum { S_PLAIN, S_QUOTE, S_BACKSLASH, S_CONTROL, S_HIGH };

void fp_init_tables(void) {
    static const char b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    memset(FP_HEX, -1, sizeof FP_HEX);
    memset(FP_B64, -1, sizeof FP_B64);
    for (int i = 0; i < 10; i++) FP_HEX['0' + i] = (signed char)i;
    for (int i = 0; i < 6; i++) FP_HEX['a' + i] = (signed char)(10 + i);
    for (int i = 0; i < 64; i++) FP_B64[(unsigned char)b64[i]] = (signed char)i;
    for (int c = 0; c < 256; c++)
        STR_CLASS[c] = c < 0x20 ? S_CONTROL : c == '"' ? S_QUOTE : c == '\\' ? S_BACKSLASH
                     : c >= 0x80 ? S_HIGH : S_PLAIN;
}

/* Length of the strict UTF-8 sequence at p (lead byte >= 0x80), or 0. */
static int utf8_len(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    Py_ssize_t left = end - p;
    unsigned char lo = 0x80, hi = 0xBF;
    int n;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;  /* no UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if (left < n || p[1] < lo || p[1] > hi) return 0;
    for (int i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

/* The closing quote of the canonical JSON string at ps->p (its opening quote), or NULL;
 * *ascii: no byte >= 0x80, *escaped: holds a backslash escape. */
static const unsigned char *scan_string(Parser *ps, int *ascii_out, int *escaped_out) {
    const unsigned char *s = ps->p + 1, *end = ps->end, *q = s;
    int ascii = 1, escaped = 0;
    while (1) {
        while (q < end && STR_CLASS[*q] == S_PLAIN) q++;
        if (q >= end) return NULL;
        unsigned char c = *q;
        if (c == '"') break;
        if (c < 0x20) return NULL;
        if (c == '\\') {
            escaped = 1;
            if (q + 1 >= end) return NULL;
            unsigned char e = q[1];
            if (e == '"' || e == '\\' || e == 'b' || e == 'f' || e == 'n' || e == 'r' ||
                e == 't') {
                q += 2;
                continue;
            }
            if (e != 'u' || end - q < 6 || q[2] != '0' || q[3] != '0') return NULL;
            int h = fp_hexval(q[4]), l = fp_hexval(q[5]);
            if (h < 0 || l < 0) return NULL;
            int v = h * 16 + l;
            if (v >= 0x20 || v == 8 || v == 9 || v == 10 || v == 12 || v == 13) return NULL;
            q += 6;
            continue;
        }
        if (c < 0x80) {
            q++;
            continue;
        }
        int n = utf8_len(q, end);
        if (!n) return NULL;
        ascii = 0;
        q += n;
    }
    *ascii_out = ascii;
    *escaped_out = escaped;
    return q;
}

/* A JSON string at ps->p (the opening quote) in canonical spelling -> str. */
PyObject *fp_parse_string(Parser *ps) {
    int ascii, escaped;
    const unsigned char *s = ps->p + 1, *q = scan_string(ps, &ascii, &escaped);
    if (!q) return FAIL;
    ps->p = q + 1;
    Py_ssize_t len = q - s;
    if (!escaped) {
        if (ascii) {
            PyObject *u = PyUnicode_New(len, 127);
            if (u) memcpy(PyUnicode_1BYTE_DATA(u), s, (size_t)len);
            return u;
        }
        return PyUnicode_DecodeUTF8((const char *)s, len, "strict");
    }
    if (ps->cap < len) {
        unsigned char *b = PyMem_Realloc(ps->buf, (size_t)len);
        if (!b) return FAIL;
        ps->buf = b;
        ps->cap = len;
    }
    unsigned char *o = ps->buf;
    for (const unsigned char *r = s; r < q;) {
        if (*r != '\\') {
            *o++ = *r++;
            continue;
        }
        unsigned char e = r[1];
        switch (e) {
        case 'b': *o++ = 8; break;
        case 'f': *o++ = 12; break;
        case 'n': *o++ = 10; break;
        case 'r': *o++ = 13; break;
        case 't': *o++ = 9; break;
        case 'u': *o++ = (unsigned char)(fp_hexval(r[4]) * 16 + fp_hexval(r[5])); r += 4; break;
        default: *o++ = e;
        }
        r += 2;
    }
    return PyUnicode_DecodeUTF8((const char *)ps->buf, o - ps->buf, "strict");
}

int fp_scan_int(Parser *ps, long long *out) {
    const unsigned char *q = ps->p, *end = ps->end;
    int neg = 0;
    if (q < end && *q == '-') {
        neg = 1;
        q++;
    }
    const unsigned char *d = q;
    long long v = 0;
    while (q < end && *q >= '0' && *q <= '9') {
        v = v * 10 + (*q - '0');
        q++;
        if (q - d > MAX_DIGITS) return 0;
    }
    if (q == d || (*d == '0' && (q - d > 1 || neg))) return 0;  /* "", "01", "-0" */
    ps->p = q;
    *out = neg ? -v : v;
    return 1;
}

PyObject *fp_parse_int(Parser *ps) {
    long long v;
    return fp_scan_int(ps, &v) ? PyLong_FromLongLong(v) : FAIL;
}

PyObject *fp_parse_object(Parser *ps) {
    if (++ps->depth > MAX_DEPTH) return FAIL;
    ps->p++;
    PyObject *d = PyDict_New(), *prev = NULL;
    if (!d) return FAIL;
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
        ps->depth--;
        return d;
    }
    while (1) {
        if (ps->p >= ps->end || *ps->p != '"') goto fail;
        PyObject *k = fp_parse_string(ps);
        if (!k) goto fail;
        PyObject *m = PyDict_SetDefault(ps->memo, k, k);  /* borrowed */
        if (!m) {
            Py_DECREF(k);
            goto fail;
        }
        Py_INCREF(m);
        Py_DECREF(k);
        k = m;
        if (prev) {
            int c = PyUnicode_Compare(prev, k);
            Py_DECREF(prev);
            prev = NULL;
            if (c >= 0) {  /* keys sorted by code point, no duplicates */
                Py_DECREF(k);
                goto fail;
            }
        }
        if (!fp_lit(ps, ":", 1)) {
            Py_DECREF(k);
            goto fail;
        }
        PyObject *v = parse_value(ps);
        if (!v || PyDict_SetItem(d, k, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(k);
            goto fail;
        }
        Py_DECREF(v);
        prev = k;
        if (fp_lit(ps, ",", 1)) continue;
        if (fp_lit(ps, "}", 1)) break;
        goto fail;
    }
    Py_XDECREF(prev);
    ps->depth--;
    return d;
fail:
    Py_XDECREF(prev);
    Py_DECREF(d);
    return FAIL;
}

static PyObject *parse_array(Parser *ps) {
    if (++ps->depth > MAX_DEPTH) return FAIL;
    ps->p++;
    PyObject *l = PyList_New(0);
    if (!l) return FAIL;
    if (fp_lit(ps, "]", 1)) {
        ps->depth--;
        return l;
    }
    while (1) {
        PyObject *v = parse_value(ps);
        if (!v || PyList_Append(l, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(l);
            return FAIL;
        }
        Py_DECREF(v);
        if (fp_lit(ps, ",", 1)) continue;
        if (fp_lit(ps, "]", 1)) break;
        Py_DECREF(l);
        return FAIL;
    }
    ps->depth--;
    return l;
}

static PyObject *parse_value(Parser *ps) {
    if (ps->p >= ps->end) return FAIL;
    switch (*ps->p) {
    case '{': return fp_parse_object(ps);
    case '[': return parse_array(ps);
    case '"': return fp_parse_string(ps);
    case 'n': if (fp_lit(ps, "null", 4)) Py_RETURN_NONE; return FAIL;
    case 't': if (fp_lit(ps, "true", 4)) Py_RETURN_TRUE; return FAIL;
    case 'f': if (fp_lit(ps, "false", 5)) Py_RETURN_FALSE; return FAIL;
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) return fp_parse_int(ps);
        return FAIL;
    }
}

/* --- validation only: the same grammar, nothing built ----------------------------- */

/* The next byte of a key's decoded UTF-8 (escapes are single bytes below 0x80). */
static unsigned char key_byte(const unsigned char **p) {
    const unsigned char *q = *p;
    if (*q != '\\') {
        *p = q + 1;
        return *q;
    }
    *p = q + 2;
    switch (q[1]) {
    case 'b': return 8;
    case 'f': return 12;
    case 'n': return 10;
    case 'r': return 13;
    case 't': return 9;
    case 'u': *p = q + 6; return (unsigned char)(fp_hexval(q[4]) * 16 + fp_hexval(q[5]));
    default: return q[1];
    }
}

/* <0, 0, >0 as the decoded keys a and b (raw canonical string contents) compare by
 * code point, which is the order of their UTF-8 bytes. */
static int key_cmp(const FpMember *a, const FpMember *b) {
    if (!a->kesc && !b->kesc) {
        Py_ssize_t n = a->klen < b->klen ? a->klen : b->klen;
        int c = memcmp(a->k, b->k, (size_t)n);
        return c ? c : (a->klen > b->klen) - (a->klen < b->klen);
    }
    const unsigned char *p = a->k, *pe = a->k + a->klen, *q = b->k, *qe = b->k + b->klen;
    while (p < pe && q < qe) {
        unsigned char x = key_byte(&p), y = key_byte(&q);
        if (x != y) return x < y ? -1 : 1;
    }
    return (p < pe) - (q < qe);
}

int fp_skip_value(Parser *ps) {
    if (ps->p >= ps->end) return 0;
    int ascii, escaped;
    long long v;
    switch (*ps->p) {
    case '{': return fp_scan_object(ps, NULL, 0, NULL);
    case '"': {
        const unsigned char *q = scan_string(ps, &ascii, &escaped);
        if (!q) return 0;
        ps->p = q + 1;
        return 1;
    }
    case '[':
        if (++ps->depth > MAX_DEPTH) return 0;
        ps->p++;
        if (fp_lit(ps, "]", 1)) {
            ps->depth--;
            return 1;
        }
        while (1) {
            if (!fp_skip_value(ps)) return 0;
            if (fp_lit(ps, ",", 1)) continue;
            if (fp_lit(ps, "]", 1)) break;
            return 0;
        }
        ps->depth--;
        return 1;
    case 'n': return fp_lit(ps, "null", 4);
    case 't': return fp_lit(ps, "true", 4);
    case 'f': return fp_lit(ps, "false", 5);
    default:
        return (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) && fp_scan_int(ps, &v);
    }
}

int fp_scan_object(Parser *ps, FpMember *out, int max, int *count) {
    if (++ps->depth > MAX_DEPTH) return 0;
    ps->p++;
    int n = 0;
    FpMember cur, prev = {0};
    if (fp_lit(ps, "}", 1)) goto done;
    while (1) {
        int ascii, escaped;
        const unsigned char *q;
        if (ps->p >= ps->end || *ps->p != '"' || !(q = scan_string(ps, &ascii, &escaped)))
            return 0;
        cur.k = ps->p + 1;
        cur.klen = q - cur.k;
        cur.kesc = escaped;
        if (n && key_cmp(&prev, &cur) >= 0) return 0;  /* sorted by code point, no twins */
        ps->p = q + 1;
        if (!fp_lit(ps, ":", 1)) return 0;
        cur.v = ps->p;
        if (!fp_skip_value(ps)) return 0;
        cur.vend = ps->p;
        if (out) {
            if (n >= max) return 0;  /* more members than the caller can hold: not fast */
            out[n] = cur;
        }
        prev = cur;
        n++;
        if (fp_lit(ps, ",", 1)) continue;
        if (fp_lit(ps, "}", 1)) break;
        return 0;
    }
done:
    ps->depth--;
    if (count) *count = n;
    return 1;
}
