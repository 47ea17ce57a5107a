/* Optional accelerator for dataset hashing (docs/protocol.md §4.6): the same bytes as the
 * pure-Python path in prover/datasets.py and ledger/merkle.py, without one interpreter
 * call per SHA-256. Built by setup.py when OpenSSL's headers are present (optional: the
 * Python path is used otherwise). Both functions release the GIL while they hash. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/sha.h>
#include <string.h>

/* window_hashes(buf, header, window, stride, count) -> bytes: count * 32 bytes,
 * SHA-256(header || buf[i*stride : i*stride + window]) for i in 0..count-1. */
static PyObject *window_hashes(PyObject *self, PyObject *args) {
    Py_buffer buf, hdr;
    Py_ssize_t window, stride, count;
    if (!PyArg_ParseTuple(args, "y*y*nnn", &buf, &hdr, &window, &stride, &count))
        return NULL;
    if (window < 0 || stride < 1 || count < 0 ||
        (count > 0 && (count - 1) * stride + window > buf.len) || hdr.len > 256) {
        PyBuffer_Release(&buf);
        PyBuffer_Release(&hdr);
        PyErr_SetString(PyExc_ValueError, "windows outside the buffer (or header > 256 bytes)");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, count * 32);
    if (out == NULL) {
        PyBuffer_Release(&buf);
        PyBuffer_Release(&hdr);
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    const unsigned char *b = buf.buf, *h = hdr.buf;
    Py_ssize_t hl = hdr.len;
    Py_BEGIN_ALLOW_THREADS
    SHA256_CTX base;
    SHA256_Init(&base);
    SHA256_Update(&base, h, (size_t)hl);
    for (Py_ssize_t i = 0; i < count; i++) {
        SHA256_CTX c = base;
        SHA256_Update(&c, b + i * stride, (size_t)window);
        SHA256_Final(o + i * 32, &c);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    PyBuffer_Release(&hdr);
    return out;
}

/* rfc6962_root(hashes) -> bytes: the RFC 6962 Merkle tree hash over the entries whose
 * hashes (32 bytes each) are concatenated in `hashes`: leaves SHA-256(0x00 || h), nodes
 * SHA-256(0x01 || l || r), level by level, an odd last node moving up unchanged. */
static PyObject *rfc6962_root(PyObject *self, PyObject *args) {
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*", &buf))
        return NULL;
    if (buf.len % 32 != 0 || buf.len == 0) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "need a non-empty multiple of 32 bytes");
        return NULL;
    }
    Py_ssize_t n = buf.len / 32;
    unsigned char *level = PyMem_Malloc((size_t)n * 32);
    if (level == NULL) {
        PyBuffer_Release(&buf);
        return PyErr_NoMemory();
    }
    const unsigned char *in = buf.buf;
    Py_BEGIN_ALLOW_THREADS
    /* the low-level context API: OpenSSL 3's one-shot SHA256() fetches an EVP method
     * per call, several times the cost of hashing 65 bytes */
    static const unsigned char leaf = 0x00, node = 0x01;
    SHA256_CTX c;
    for (Py_ssize_t i = 0; i < n; i++) {
        SHA256_Init(&c);
        SHA256_Update(&c, &leaf, 1);
        SHA256_Update(&c, in + i * 32, 32);
        SHA256_Final(level + i * 32, &c);
    }
    while (n > 1) {
        Py_ssize_t up = 0;
        for (Py_ssize_t i = 0; i + 1 < n; i += 2) {
            SHA256_Init(&c);
            SHA256_Update(&c, &node, 1);
            SHA256_Update(&c, level + i * 32, 64);
            SHA256_Final(level + up * 32, &c);  /* up <= i: reads before it writes */
            up++;
        }
        if (n % 2) {
            memmove(level + up * 32, level + (n - 1) * 32, 32);
            up++;
        }
        n = up;
    }
    Py_END_ALLOW_THREADS
    PyObject *out = PyBytes_FromStringAndSize((const char *)level, 32);
    PyMem_Free(level);
    PyBuffer_Release(&buf);
    return out;
}

static PyMethodDef methods[] = {
    {"window_hashes", window_hashes, METH_VARARGS,
     "window_hashes(buf, header, window, stride, count) -> count*32 bytes of "
     "SHA-256(header || window i)."},
    {"rfc6962_root", rfc6962_root, METH_VARARGS,
     "rfc6962_root(hashes) -> the RFC 6962 root over the concatenated entry hashes."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "prover._native",
                                    "Optional native dataset hashing.", -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
