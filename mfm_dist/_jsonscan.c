/* Compiled checks for canonical JSON (see mfm_dist/canonical.py).
 *
 * One pass in C over a Python value answers "would the reference checker
 * (`canonical._check_json_reference`) accept this value?" for the common case:
 * exact dict/list/tuple/str/int/bool/None, integers within the safe range, no
 * lone surrogates, nesting below the limit, and no secret-shaped key or string.
 * Anything else -- a float, a subclass, an unknown type, a secret, a problem --
 * is reported as DIRTY and the caller re-runs the exact Python reference, which
 * raises the precise error (or accepts, e.g. for str subclasses). So this
 * module only has to be sound ("clean" implies the reference accepts); it never
 * chooses an error code.
 *
 * The secret rule (mfm_dist/secrets.py: `is_secret_string`, configured with the same
 * markers and word counts) is applied here exactly, with two facts about CPython's
 * Unicode tables that tests/test_canonical.py checks over every code point: `str.lower()`
 * maps only 'A'-'Z', U+0130 and U+212A to anything containing ASCII, and `str.split()`
 * splits on Py_UNICODE_ISSPACE. No Python code runs during a walk, so the borrowed
 * references taken from containers stay valid.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_MARKERS 128
#define MAX_MARKER_LEN 64

enum { F_DIRTY = 1, F_ASTRAL_KEY = 2 };
enum { S_NONE = 0, S_FOUND = 1, S_UNDECIDED = 2 };

static unsigned char LOWER[256];
static unsigned char SPACE1[256];
static unsigned char marker_text[MAX_MARKERS][MAX_MARKER_LEN];
static Py_ssize_t marker_len[MAX_MARKERS];
static int n_markers = 0;
static Py_ssize_t min_marker_len = 2;
static unsigned char n_by_first[256];          /* markers starting with a byte */
static unsigned char by_first[256][MAX_MARKERS]; /* their indices */
static uint8_t SHIFT[65536]; /* Wu-Manber shifts by lowered byte pair */
static int max_depth = 512;
static long long max_int = 9007199254740991LL;
static Py_ssize_t mnemonic_min = 12;
static Py_ssize_t mnemonic_max = 24;
static int secrets_configured = 0;
static int limits_configured = 0;
/* find_secret gives up (undecided) below this many levels; the Python reference walks on. */
#define FIND_DEPTH_CAP 1000

/* Marker search, Wu-Manber with blocks of two characters: a window of min_marker_len
 * characters ends at `pos`; the projected pair ending there says how far the window may move
 * without skipping a marker that could start in it (SHIFT, built by configure_secrets); at
 * shift 0 the markers beginning at the window's start are compared in full. Ordinary text
 * moves by the maximum most of the time, so few characters are looked at.
 *
 * PROJ maps a character to the byte it is compared as: its ASCII lowercase, or 0xFF (a byte
 * no marker holds) for anything without an ASCII lowercase form. */
#define DEFINE_MARKER_SCAN(NAME, T, PROJ)                                                     \
    static int NAME(const T *s, Py_ssize_t n)                                                 \
    {                                                                                         \
        Py_ssize_t m = min_marker_len;                                                        \
        if (n < m) {                                                                          \
            return 0;                                                                         \
        }                                                                                     \
        Py_ssize_t pos = m - 1;                                                               \
        while (pos < n) {                                                                     \
            unsigned shift = SHIFT[(PROJ(s[pos - 1]) << 8) | PROJ(s[pos])];                   \
            if (shift) {                                                                      \
                pos += shift;                                                                 \
                continue;                                                                     \
            }                                                                                 \
            Py_ssize_t i = pos - m + 1;                                                       \
            unsigned c0 = PROJ(s[i]);                                                         \
            for (int j = 0; j < n_by_first[c0]; j++) {                                        \
                int mk = by_first[c0][j];                                                     \
                Py_ssize_t len = marker_len[mk];                                              \
                if (i + len > n) {                                                            \
                    continue;                                                                 \
                }                                                                             \
                Py_ssize_t k = 1;                                                             \
                while (k < len && PROJ(s[i + k]) == marker_text[mk][k]) {                    \
                    k++;                                                                      \
                }                                                                             \
                if (k == len) {                                                               \
                    return 1;                                                                 \
                }                                                                             \
            }                                                                                 \
            pos++;                                                                            \
        }                                                                                     \
        return 0;                                                                             \
    }

/* Below U+0100, lower() maps only 'A'-'Z' to ASCII, one character each. */
#define PROJ_UCS1(c) ((unsigned)LOWER[(c)])
/* Wider: `str.lower()` maps exactly two non-ASCII code points to anything ASCII (checked
 * over every code point by tests/test_canonical.py): U+212A KELVIN SIGN to "k", and U+0130
 * to "i" + U+0307. Projecting U+0130 to "i" alone can only add matches (the U+0307 that
 * follows in the lowered text is a breaker), so a match in a string holding U+0130 is
 * re-checked on the exact projection (`dotted_i_markers`). */
#define PROJ_WIDE(c)                                                                          \
    ((unsigned)((c) < 0x80 ? LOWER[(c)] : (c) == 0x212A ? 'k' : (c) == 0x130 ? 'i' : 0xFF))

DEFINE_MARKER_SCAN(marker_scan, unsigned char, PROJ_UCS1)
DEFINE_MARKER_SCAN(marker_scan_ucs2, Py_UCS2, PROJ_WIDE)
DEFINE_MARKER_SCAN(marker_scan_ucs4, Py_UCS4, PROJ_WIDE)

/* secrets._looks_like_mnemonic: str.split() gives mnemonic_min..mnemonic_max words, each
 * matching ^[a-z]+$. `space` tells whether a code point is Py_UNICODE_ISSPACE. */
#define MNEMONIC_LOOP(READ)                                                                   \
    do {                                                                                      \
        if (n < 2 * mnemonic_min - 1) {                                                       \
            return 0;                                                                         \
        }                                                                                     \
        Py_ssize_t words = 0;                                                                 \
        int in_word = 0;                                                                      \
        for (Py_ssize_t i = 0; i < n; i++) {                                                  \
            Py_UCS4 c = (READ);                                                               \
            if (c >= 'a' && c <= 'z') {                                                       \
                if (!in_word) {                                                               \
                    in_word = 1;                                                              \
                    if (++words > mnemonic_max) {                                             \
                        return 0;                                                             \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
            else if (c < 256 ? SPACE1[c] : Py_UNICODE_ISSPACE(c)) {                           \
                in_word = 0;                                                                  \
            }                                                                                 \
            else {                                                                            \
                return 0;                                                                     \
            }                                                                                 \
        }                                                                                     \
        return words >= mnemonic_min;                                                         \
    } while (0)

static int
mnemonic_ucs1(const unsigned char *s, Py_ssize_t n)
{
    MNEMONIC_LOOP(s[i]);
}

static int
mnemonic_wide(int kind, const void *d, Py_ssize_t n)
{
    MNEMONIC_LOOP(PyUnicode_READ(kind, d, i));
}

/* Markers in the exact ASCII projection of the lowered text of a string holding U+0130:
 * U+0130 becomes "i" and a breaker byte. -1 on error (exception set). */
static int
dotted_i_markers(int kind, const void *data, Py_ssize_t n)
{
    unsigned char *buf = PyMem_Malloc((size_t)(2 * n + 1));
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t len = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c == 0x130) {
            buf[len++] = 'i';
            buf[len++] = 0xFF;
        }
        else {
            buf[len++] = (unsigned char)PROJ_WIDE(c);
        }
    }
    int found = marker_scan(buf, len);
    PyMem_Free(buf);
    return found;
}

static int
wide_markers(int kind, const void *data, Py_ssize_t n)
{
    int found;
    if (kind == PyUnicode_2BYTE_KIND) {
        found = marker_scan_ucs2((const Py_UCS2 *)data, n);
    }
    else {
        found = marker_scan_ucs4((const Py_UCS4 *)data, n);
    }
    if (found) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (PyUnicode_READ(kind, data, i) == 0x130) {
                return dotted_i_markers(kind, data, n);
            }
        }
    }
    return found;
}

/* secrets.is_secret_string: 1 if secret-shaped, 0 if not, -1 on error (exception set). */
static int
str_is_secret(PyObject *s)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    if (kind == PyUnicode_1BYTE_KIND) {
        /* Below U+0100, lower() maps only A-Z to ASCII, one character each. */
        const unsigned char *d = PyUnicode_1BYTE_DATA(s);
        return marker_scan(d, n) || mnemonic_ucs1(d, n);
    }
    const void *d = PyUnicode_DATA(s);
    int found = wide_markers(kind, d, n);
    if (found != 0) {
        return found;
    }
    return mnemonic_wide(kind, d, n);
}

static int
has_surrogate(PyObject *s)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    if (kind == PyUnicode_2BYTE_KIND) {
        const Py_UCS2 *d = PyUnicode_2BYTE_DATA(s);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (d[i] >= 0xD800 && d[i] <= 0xDFFF) {
                return 1;
            }
        }
    }
    else if (kind == PyUnicode_4BYTE_KIND) {
        const Py_UCS4 *d = PyUnicode_4BYTE_DATA(s);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (d[i] >= 0xD800 && d[i] <= 0xDFFF) {
                return 1;
            }
        }
    }
    return 0;
}

/* Returns 0 to go on, 1 when the value is dirty (stop), -1 on error. */
static int
check_str(PyObject *s, int secrets, int is_key, int *flags)
{
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(s) < 0) {
        return -1;
    }
#endif
    if (!PyUnicode_IS_ASCII(s)) {
        if (PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND && has_surrogate(s)) {
            *flags |= F_DIRTY;
            return 1;
        }
        if (is_key && PyUnicode_KIND(s) == PyUnicode_4BYTE_KIND) {
            *flags |= F_ASTRAL_KEY;
        }
    }
    if (secrets) {
        int secret = str_is_secret(s);
        if (secret < 0) {
            return -1;
        }
        if (secret) {
            *flags |= F_DIRTY;
            return 1;
        }
    }
    return 0;
}

static int
walk(PyObject *o, int depth, int secrets, int *flags)
{
    PyTypeObject *t = Py_TYPE(o);
    if (o == Py_None || t == &PyBool_Type) {
        return 0;
    }
    if (t == &PyUnicode_Type) {
        return check_str(o, secrets, 0, flags);
    }
    if (t == &PyLong_Type) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow || v > max_int || v < -max_int) {
            *flags |= F_DIRTY;
            return 1;
        }
        return 0;
    }
    if (t == &PyDict_Type) {
        if (depth >= max_depth) {
            *flags |= F_DIRTY;
            return 1;
        }
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(o, &pos, &k, &v)) {
            if (!PyUnicode_CheckExact(k)) {
                *flags |= F_DIRTY;
                return 1;
            }
            int r = check_str(k, secrets, 1, flags);
            if (r == 0) {
                r = walk(v, depth + 1, secrets, flags);
            }
            if (r) {
                return r;
            }
        }
        return 0;
    }
    if (t == &PyList_Type || t == &PyTuple_Type) {
        if (depth >= max_depth) {
            *flags |= F_DIRTY;
            return 1;
        }
        for (Py_ssize_t i = 0; i < Py_SIZE(o); i++) {
            PyObject *item = t == &PyList_Type ? PyList_GET_ITEM(o, i) : PyTuple_GET_ITEM(o, i);
            int r = walk(item, depth + 1, secrets, flags);
            if (r) {
                return r;
            }
        }
        return 0;
    }
    /* float (incl. NaN/Inf), subclasses, Enum, UUID, anything else: the reference decides. */
    *flags |= F_DIRTY;
    return 1;
}

/* Mirrors secrets.iter_strings + is_secret_string; S_UNDECIDED for what only Python can say. */
static int
find_secret(PyObject *o, int depth)
{
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyUnicode_Type) {
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(o) < 0) {
            return -1;
        }
#endif
        int secret = str_is_secret(o);
        return secret < 0 ? -1 : (secret ? S_FOUND : S_NONE);
    }
    if (t == &PyDict_Type || t == &PyList_Type || t == &PyTuple_Type) {
        if (depth >= FIND_DEPTH_CAP) {
            return S_UNDECIDED;
        }
    }
    if (t == &PyDict_Type) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(o, &pos, &k, &v)) {
            int r = S_NONE;
            if (PyUnicode_CheckExact(k)) {
                r = find_secret(k, depth + 1);
            }
            else if (PyUnicode_Check(k)) {
                r = S_UNDECIDED;
            }
            if (r == S_NONE) {
                r = find_secret(v, depth + 1);
            }
            if (r != S_NONE) {
                return r;
            }
        }
        return S_NONE;
    }
    if (t == &PyList_Type || t == &PyTuple_Type) {
        for (Py_ssize_t i = 0; i < Py_SIZE(o); i++) {
            PyObject *item = t == &PyList_Type ? PyList_GET_ITEM(o, i) : PyTuple_GET_ITEM(o, i);
            int r = find_secret(item, depth + 1);
            if (r != S_NONE) {
                return r;
            }
        }
        return S_NONE;
    }
    if (PyUnicode_Check(o) || PyDict_Check(o) || PyList_Check(o) || PyTuple_Check(o)) {
        return S_UNDECIDED; /* a subclass: iteration may be overridden */
    }
    return S_NONE; /* iter_strings ignores every other object */
}

static int
require_configured(int limits)
{
    if (!secrets_configured || (limits && !limits_configured)) {
        PyErr_SetString(PyExc_RuntimeError, "mfm_dist._jsonscan is not configured");
        return -1;
    }
    return 0;
}

static PyObject *
jsonscan_scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "scan(value, secrets)");
        return NULL;
    }
    if (require_configured(1) < 0) {
        return NULL;
    }
    int secrets = PyObject_IsTrue(args[1]);
    if (secrets < 0) {
        return NULL;
    }
    int flags = 0;
    if (walk(args[0], 0, secrets, &flags) < 0) {
        return NULL;
    }
    return PyLong_FromLong(flags & F_DIRTY ? F_DIRTY : flags);
}

static PyObject *
jsonscan_find_secret(PyObject *self, PyObject *value)
{
    if (require_configured(0) < 0) {
        return NULL;
    }
    int r = find_secret(value, 0);
    if (r < 0) {
        return NULL;
    }
    return PyLong_FromLong(r);
}

static PyObject *
jsonscan_configure_secrets(PyObject *self, PyObject *args)
{
    PyObject *markers;
    Py_ssize_t mn_min, mn_max;
    if (!PyArg_ParseTuple(args, "Onn", &markers, &mn_min, &mn_max)) {
        return NULL;
    }
    if (mn_min < 1 || mn_max < mn_min) {
        PyErr_SetString(PyExc_ValueError, "bad mnemonic word counts");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(markers, "markers must be a sequence");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count < 1 || count > MAX_MARKERS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "between 1 and 128 markers");
        return NULL;
    }
    secrets_configured = 0;
    memset(n_by_first, 0, sizeof n_by_first);
    min_marker_len = MAX_MARKER_LEN;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *m = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t len;
        const char *text = PyUnicode_Check(m) ? PyUnicode_AsUTF8AndSize(m, &len) : NULL;
        if (text == NULL || len < 2 || len >= MAX_MARKER_LEN) {
            Py_DECREF(seq);
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "markers are str of 2..63 characters");
            return NULL;
        }
        for (Py_ssize_t k = 0; k < len; k++) {
            unsigned char c = (unsigned char)text[k];
            if (c >= 0x80 || (c >= 'A' && c <= 'Z')) {
                Py_DECREF(seq);
                PyErr_SetString(PyExc_ValueError, "markers are lowercase ASCII");
                return NULL;
            }
        }
        memcpy(marker_text[i], text, (size_t)len);
        marker_len[i] = len;
        unsigned c0 = (unsigned char)text[0];
        by_first[c0][n_by_first[c0]++] = (unsigned char)i;
        if (len < min_marker_len) {
            min_marker_len = len;
        }
    }
    Py_DECREF(seq);
    n_markers = (int)count;
    /* A pair ending at offset j of some marker's first min_marker_len bytes allows a shift of
     * at most min_marker_len - 1 - j; a pair in no marker's prefix, min_marker_len - 1. */
    memset(SHIFT, (int)(min_marker_len - 1), sizeof SHIFT);
    for (int i = 0; i < n_markers; i++) {
        for (Py_ssize_t j = 1; j < min_marker_len; j++) {
            unsigned pair = ((unsigned)marker_text[i][j - 1] << 8) | marker_text[i][j];
            uint8_t shift = (uint8_t)(min_marker_len - 1 - j);
            if (shift < SHIFT[pair]) {
                SHIFT[pair] = shift;
            }
        }
    }
    for (int c = 0; c < 256; c++) {
        LOWER[c] = (unsigned char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        SPACE1[c] = (unsigned char)(Py_UNICODE_ISSPACE((Py_UCS4)c) ? 1 : 0);
    }
    mnemonic_min = mn_min;
    mnemonic_max = mn_max;
    secrets_configured = 1;
    Py_RETURN_NONE;
}

static PyObject *
jsonscan_configure_limits(PyObject *self, PyObject *args)
{
    int depth;
    long long limit;
    if (!PyArg_ParseTuple(args, "iL", &depth, &limit)) {
        return NULL;
    }
    if (depth < 1 || depth > 100000 || limit < 0) {
        PyErr_SetString(PyExc_ValueError, "bad limits");
        return NULL;
    }
    max_depth = depth;
    max_int = limit;
    limits_configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef jsonscan_methods[] = {
    {"configure_secrets", (PyCFunction)jsonscan_configure_secrets, METH_VARARGS,
     "configure_secrets(markers, mnemonic_min_words, mnemonic_max_words)"},
    {"configure_limits", (PyCFunction)jsonscan_configure_limits, METH_VARARGS,
     "configure_limits(max_depth, max_abs_int)"},
    {"scan", (PyCFunction)(void (*)(void))jsonscan_scan, METH_FASTCALL,
     "scan(value, secrets) -> 0 clean, 1 dirty (ask the reference), 2 clean with a key "
     "beyond U+FFFF"},
    {"find_secret", (PyCFunction)jsonscan_find_secret, METH_O,
     "find_secret(value) -> 0 none, 1 a secret-shaped key or string, 2 undecided"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef jsonscan_module = {
    PyModuleDef_HEAD_INIT, "mfm_dist._jsonscan",
    "Compiled canonical-JSON checks (see mfm_dist/canonical.py).", -1, jsonscan_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__jsonscan(void)
{
    return PyModule_Create(&jsonscan_module);
}
