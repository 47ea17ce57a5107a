/* Shared by ledger/_fastpath.c (statements, verification, the module) and
 * ledger/_fastpath_json.c (the canonical JSON grammar). */
#ifndef POTD_FASTPATH_H
#define POTD_FASTPATH_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_DEPTH 64   /* deeper nesting: not fast (the strict parser decides) */
#define MAX_DIGITS 18  /* longer integers: not fast (they may be outside 64 bits) */
#define FAIL ((PyObject *)NULL)
#if defined(__GNUC__)
#define FP_LOCAL __attribute__((visibility("hidden")))  /* not exported by the .so */
#else
#define FP_LOCAL
#endif

typedef struct {
    const unsigned char *start, *p, *end;
    int depth;
    PyObject *memo;  /* object keys seen in this call, shared */
    unsigned char *buf;
    Py_ssize_t cap;
    /* the previous statement's run and signer strings and where their bytes are: a
     * batch's statements mostly repeat them, and then share one object */
    PyObject *run, *signer;
    const unsigned char *run_at, *signer_at;
    Py_ssize_t signer_len;
} Parser;

/* lowercase hex digit values and base64 std values; -1: not one */
FP_LOCAL extern signed char FP_HEX[256], FP_B64[256];
static inline int fp_hexval(unsigned char c) { return FP_HEX[c]; }
static inline int fp_b64val(unsigned char c) { return FP_B64[c]; }

/* consume exactly the n bytes s, or nothing */
static inline int fp_lit(Parser *ps, const char *s, size_t n) {
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, s, n) != 0)
        return 0;
    ps->p += n;
    return 1;
}

/* One member of an object: the key's raw string contents (between the quotes), whether
 * they hold an escape, and the value's bytes. */
typedef struct {
    const unsigned char *k, *v, *vend;
    Py_ssize_t klen;
    int kesc;
} FpMember;

FP_LOCAL void fp_init_tables(void);
FP_LOCAL PyObject *fp_parse_string(Parser *ps);  /* at the opening quote */
FP_LOCAL PyObject *fp_parse_int(Parser *ps);
FP_LOCAL PyObject *fp_parse_object(Parser *ps);  /* at '{' */
/* Validation only, nothing built: 1 if the canonical value (object at '{') is there,
 * ps->p then after it; 0 if not (no Python error). fp_scan_object records up to `max`
 * members in `out` (NULL: none) and their number in *count; more: 0. */
FP_LOCAL int fp_scan_int(Parser *ps, long long *v);
FP_LOCAL int fp_skip_value(Parser *ps);
FP_LOCAL int fp_scan_object(Parser *ps, FpMember *out, int max, int *count);

#endif
