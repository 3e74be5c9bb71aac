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
 *
 * Reads have a second pass, over JSON bytes (`check_bytes`, below the walks): it accepts
 * exactly the canonical, clean bytes, so that a verified read is one `orjson.loads` and a
 * check needs no value at all; it too only has to be sound, the reference read deciding
 * everything it does not accept.
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
 * U+0130 becomes "i" and a breaker byte. -1 when out of memory (no exception set: this also
 * runs without the GIL, see check_bytes). */
static int
dotted_i_markers(int kind, const void *data, Py_ssize_t n)
{
    unsigned char *buf = PyMem_RawMalloc((size_t)(2 * n + 1));
    if (buf == NULL) {
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
    PyMem_RawFree(buf);
    return found;
}

/* Markers in a string of 2- or 4-byte characters: 1 or 0; -1 when out of memory (no
 * exception set). */
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
    if (found < 0) {
        PyErr_NoMemory();
        return -1;
    }
    if (found) {
        return 1;
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

/* ---- Canonical bytes: the fast path of parse_canonical and check_canonical_bytes --------
 *
 * One pass over JSON bytes deciding whether they are exactly the bytes the runtime writes
 * and clean for a read (canonical._parse_canonical_reference accepts them):
 *
 * - no insignificant whitespace, exactly one value;
 * - object keys strictly ascending by UTF-16 code units (so no duplicates);
 * - numbers only integers in canonical form ("0", or an optional '-' and a non-zero digit
 *   first; no "-0", fraction or exponent) within +-max_int;
 * - strings escaped exactly as JCS escapes them (\" \\ \b \f \n \r \t, \u00xx in lowercase
 *   hex for the other characters below U+0020, nothing else) and otherwise valid UTF-8,
 *   which also excludes lone surrogates;
 * - containers nested below max_depth;
 * - no secret-shaped key or string: str_is_secret's rule on the decoded text (on the raw
 *   bytes when they are the text's exact ASCII projection: no escape, no U+0130/U+212A).
 *
 * B_CANONICAL is the only verdict the caller acts on; every other one sends the bytes to the
 * reference read, which picks the error (and, for nesting beyond max_depth, which reads do
 * not refuse by themselves, decides). So the pass only has to be sound, and the tests hold
 * it to the reference on random and mutated bytes. No Python API is called during the pass,
 * so a long one runs without the GIL. */

enum { B_ERROR = -1, B_CANONICAL = 0, B_REJECT = 1, B_SECRET = 2, B_DEEP = 3 };
/* Traits of a scanned string: holds an escape; a non-ASCII character; one encoded with a
 * lead byte >= 0xEE (U+E000 and up: UTF-8 and UTF-16 orders of such characters differ);
 * U+0130 or U+212A (their lowercase forms hold ASCII). */
enum { T_ESCAPE = 1, T_NONASCII = 2, T_HIGH = 4, T_LOWERS_TO_ASCII = 8 };
/* String byte classes: plain ASCII, quote, backslash, control (refused raw), non-ASCII. */
enum { SC_PLAIN = 0, SC_QUOTE, SC_BACKSLASH, SC_CONTROL, SC_NONASCII };

#define GIL_FREE_BYTES 65536 /* check_bytes releases the GIL for inputs at least this long */
#define LOCAL_FRAMES 64

static unsigned char STR_CLASS[256];
static signed char HEX_LOWER[256];     /* 0-15 for '0'-'9' and 'a'-'f', else -1 */
static unsigned char SHORT_ESCAPE[256]; /* the character a two-byte escape stands for, or 0 */

static void
init_byte_tables(void)
{
    for (int c = 0; c < 256; c++) {
        STR_CLASS[c] = (unsigned char)(c < 0x20    ? SC_CONTROL
                                       : c >= 0x80 ? SC_NONASCII
                                       : c == '"'  ? SC_QUOTE
                                       : c == '\\' ? SC_BACKSLASH
                                                   : SC_PLAIN);
        HEX_LOWER[c] = (signed char)(c >= '0' && c <= '9'   ? c - '0'
                                     : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                                            : -1);
    }
    SHORT_ESCAPE['"'] = '"';
    SHORT_ESCAPE['\\'] = '\\';
    SHORT_ESCAPE['b'] = '\b';
    SHORT_ESCAPE['f'] = '\f';
    SHORT_ESCAPE['n'] = '\n';
    SHORT_ESCAPE['r'] = '\r';
    SHORT_ESCAPE['t'] = '\t';
}

typedef struct {
    int is_object;
    const unsigned char *key; /* the object's last key (raw bytes), NULL before the first */
    Py_ssize_t key_len;
    unsigned key_traits;
} Frame;

typedef struct {
    Frame local[LOCAL_FRAMES];
    Frame *frames;
    Py_ssize_t n_frames;
    Py_UCS4 *text; /* a decoded string, for the secret rule */
    Py_ssize_t text_cap;
} Scratch;

static void
scratch_init(Scratch *sc)
{
    sc->frames = sc->local;
    sc->n_frames = LOCAL_FRAMES;
    sc->text = NULL;
    sc->text_cap = 0;
}

static void
scratch_free(Scratch *sc)
{
    if (sc->frames != sc->local) {
        PyMem_RawFree(sc->frames);
    }
    PyMem_RawFree(sc->text);
}

static int
grow_frames(Scratch *sc)
{
    Py_ssize_t n = 2 * sc->n_frames;
    Frame *frames = PyMem_RawMalloc((size_t)n * sizeof(Frame));
    if (frames == NULL) {
        return -1;
    }
    memcpy(frames, sc->frames, (size_t)sc->n_frames * sizeof(Frame));
    if (sc->frames != sc->local) {
        PyMem_RawFree(sc->frames);
    }
    sc->frames = frames;
    sc->n_frames = n;
    return 0;
}

/* The UTF-8 sequence at s (s < end, *s >= 0x80): its length if it is valid and minimal and
 * encodes no surrogate (the code point in *cp), else 0. */
static int
utf8_char(const unsigned char *s, const unsigned char *end, Py_UCS4 *cp)
{
    Py_ssize_t avail = end - s;
    unsigned c = s[0];
    if (c >= 0xC2 && c <= 0xDF) {
        if (avail < 2 || (s[1] & 0xC0) != 0x80) {
            return 0;
        }
        *cp = ((Py_UCS4)(c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (avail < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) {
            return 0;
        }
        Py_UCS4 v = ((Py_UCS4)(c & 0x0F) << 12) | ((Py_UCS4)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        if (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF)) {
            return 0;
        }
        *cp = v;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (avail < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 ||
            (s[3] & 0xC0) != 0x80) {
            return 0;
        }
        Py_UCS4 v = ((Py_UCS4)(c & 0x07) << 18) | ((Py_UCS4)(s[1] & 0x3F) << 12) |
                    ((Py_UCS4)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
        if (v < 0x10000 || v > 0x10FFFF) {
            return 0;
        }
        *cp = v;
        return 4;
    }
    return 0;
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Eight string bytes at once: nonzero when one of them is not SC_PLAIN (non-ASCII, below
 * 0x20, a quote or a backslash). The zero-byte tests may flag a byte above a flagged one,
 * never miss one; the byte loop then looks at each. */
static inline uint64_t
not_plain8(const unsigned char *s)
{
    uint64_t x;
    memcpy(&x, s, 8);
    uint64_t q = x ^ (ONES * '"');
    uint64_t b = x ^ (ONES * '\\');
    return (x | ((x - ONES * 0x20) & ~x) | ((q - ONES) & ~q) | ((b - ONES) & ~b)) & HIGHS;
}

/* The string whose opening quote precedes s: B_CANONICAL if it is written exactly as JCS
 * writes it (*close is then its closing quote, *traits its traits), else B_REJECT. */
static int
scan_string(const unsigned char *s, const unsigned char *end, const unsigned char **close,
            unsigned *traits)
{
    unsigned t = 0;
    for (;;) {
        while (end - s >= 8 && !not_plain8(s)) {
            s += 8;
        }
        while (s < end && STR_CLASS[*s] == SC_PLAIN) {
            s++;
        }
        if (s >= end) {
            return B_REJECT;
        }
        switch (STR_CLASS[*s]) {
        case SC_QUOTE:
            *close = s;
            *traits = t;
            return B_CANONICAL;
        case SC_BACKSLASH:
            t |= T_ESCAPE;
            if (end - s < 2) {
                return B_REJECT;
            }
            if (SHORT_ESCAPE[s[1]]) {
                s += 2;
                break;
            }
            /* \u00xx, lowercase hex, only for characters below U+0020 without a short form */
            if (s[1] != 'u' || end - s < 6 || s[2] != '0' || s[3] != '0' ||
                (s[4] != '0' && s[4] != '1') || HEX_LOWER[s[5]] < 0) {
                return B_REJECT;
            }
            {
                unsigned v = (unsigned)(s[4] - '0') * 16 + (unsigned)HEX_LOWER[s[5]];
                if (v == '\b' || v == '\t' || v == '\n' || v == '\f' || v == '\r') {
                    return B_REJECT;
                }
            }
            s += 6;
            break;
        case SC_CONTROL:
            return B_REJECT;
        default:
            t |= T_NONASCII;
            do { /* a run of non-ASCII characters */
                Py_UCS4 cp;
                int len = utf8_char(s, end, &cp);
                if (len == 0) {
                    return B_REJECT;
                }
                if (*s >= 0xEE) {
                    t |= T_HIGH;
                }
                if (cp == 0x130 || cp == 0x212A) {
                    t |= T_LOWERS_TO_ASCII;
                }
                s += len;
            } while (s < end && *s >= 0x80);
        }
    }
}

/* The next character of a string scan_string accepted (its raw bytes at *p). */
static Py_UCS4
next_char(const unsigned char **p)
{
    const unsigned char *s = *p;
    Py_UCS4 c = s[0];
    if (c == '\\') {
        if (s[1] == 'u') {
            *p = s + 6;
            return (Py_UCS4)(s[4] - '0') * 16 + (Py_UCS4)HEX_LOWER[s[5]];
        }
        *p = s + 2;
        return SHORT_ESCAPE[s[1]];
    }
    if (c < 0x80) {
        *p = s + 1;
        return c;
    }
    if (c < 0xE0) {
        *p = s + 2;
        return ((c & 0x1F) << 6) | (s[1] & 0x3F);
    }
    if (c < 0xF0) {
        *p = s + 3;
        return ((c & 0x0F) << 12) | ((Py_UCS4)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    }
    *p = s + 4;
    return ((c & 0x07) << 18) | ((Py_UCS4)(s[1] & 0x3F) << 12) | ((Py_UCS4)(s[2] & 0x3F) << 6) |
           (s[3] & 0x3F);
}

/* A character's rank in UTF-16 code-unit order: below U+D800 itself; beyond U+FFFF (a
 * surrogate pair, whose first unit is D800-DBFF) next, in code point order; U+E000-U+FFFF
 * last. Comparing strings rank by rank compares their UTF-16 code units. */
static uint32_t
utf16_rank(Py_UCS4 c)
{
    if (c < 0xD800) {
        return c;
    }
    if (c > 0xFFFF) {
        return 0xD800 + (c - 0x10000);
    }
    return c + 0x100000;
}

/* Order of two keys scan_string accepted, by UTF-16 code units: <0, 0 or >0. Raw bytes
 * compare in code point order (UTF-8's property), which is UTF-16 order unless an escape
 * or a character from U+E000 up is involved. */
static int
key_cmp(const unsigned char *a, Py_ssize_t na, unsigned ta, const unsigned char *b,
        Py_ssize_t nb, unsigned tb)
{
    if (!((ta | tb) & (T_ESCAPE | T_HIGH))) {
        int r = memcmp(a, b, (size_t)(na < nb ? na : nb));
        if (r) {
            return r;
        }
        return (na > nb) - (na < nb);
    }
    const unsigned char *ae = a + na, *be = b + nb;
    while (a < ae && b < be) {
        uint32_t ra = utf16_rank(next_char(&a));
        uint32_t rb = utf16_rank(next_char(&b));
        if (ra != rb) {
            return ra < rb ? -1 : 1;
        }
    }
    return (a < ae) - (b < be);
}

/* secrets._looks_like_mnemonic (MNEMONIC_LOOP) over the raw bytes of a string scan_string
 * accepted, decoding its escapes and non-ASCII characters on the way. */
static int
mnemonic_raw(const unsigned char *s, Py_ssize_t n)
{
    if (n < 2 * mnemonic_min - 1) {
        return 0; /* at most n characters */
    }
    const unsigned char *end = s + n;
    Py_ssize_t words = 0;
    int in_word = 0;
    while (s < end) {
        Py_UCS4 c = *s;
        if (c >= 'a' && c <= 'z') {
            s++;
            if (!in_word) {
                in_word = 1;
                if (++words > mnemonic_max) {
                    return 0;
                }
            }
            continue;
        }
        if (c >= 0x80 || c == '\\') {
            c = next_char(&s);
        }
        else {
            s++;
        }
        if (c < 256 ? SPACE1[c] : Py_UNICODE_ISSPACE(c)) {
            in_word = 0;
        }
        else {
            return 0;
        }
    }
    return words >= mnemonic_min;
}

/* str_is_secret for the string scan_string accepted at s (n raw bytes): 1 or 0; -1 when out
 * of memory (no exception set). */
static int
string_is_secret(const unsigned char *s, Py_ssize_t n, unsigned traits, Scratch *sc)
{
    if (!(traits & T_LOWERS_TO_ASCII)) {
        /* In the raw bytes every ASCII character of the text stands as itself, every other
         * character as bytes >= 0x80, which no marker holds, and an escaped one (no marker
         * holds a control character, '"' or '\\') as a backslash and ASCII: a marker in the
         * lowered text is one in the bytes, and without escapes the converse holds too. */
        int markers = marker_scan(s, n);
        if (!markers) {
            return mnemonic_raw(s, n);
        }
        if (!(traits & T_ESCAPE)) {
            return 1;
        }
    }
    /* The exact rule on the decoded text. */
    if (n > sc->text_cap) {
        Py_UCS4 *text = PyMem_RawRealloc(sc->text, (size_t)n * sizeof(Py_UCS4));
        if (text == NULL) {
            return -1;
        }
        sc->text = text;
        sc->text_cap = n;
    }
    Py_ssize_t len = 0;
    const unsigned char *p = s, *end = s + n;
    while (p < end) {
        sc->text[len++] = next_char(&p);
    }
    int found = wide_markers(PyUnicode_4BYTE_KIND, sc->text, len);
    if (found) {
        return found;
    }
    return mnemonic_wide(PyUnicode_4BYTE_KIND, sc->text, len);
}

/* The string whose opening quote is at *p: B_CANONICAL (and *p moves past it; start, length
 * and traits of its raw bytes are set) when it is canonical and not secret-shaped. */
static int
string_at(const unsigned char **p, const unsigned char *end, Scratch *sc,
          const unsigned char **start, Py_ssize_t *len, unsigned *traits)
{
    const unsigned char *close;
    *start = *p + 1;
    if (scan_string(*start, end, &close, traits) != B_CANONICAL) {
        return B_REJECT;
    }
    *len = close - *start;
    int secret = string_is_secret(*start, *len, *traits, sc);
    if (secret) {
        return secret < 0 ? B_ERROR : B_SECRET;
    }
    *p = close + 1;
    return B_CANONICAL;
}

/* The number at *p: B_CANONICAL (and *p moves past its digits) for an integer written as JCS
 * writes it, within +-max_int. A '.', exponent or further digit after it is refused by the
 * caller, as anything but ',', a closing bracket or the end is. */
static int
number_at(const unsigned char **p, const unsigned char *end)
{
    const unsigned char *s = *p;
    int negative = *s == '-';
    if (negative) {
        s++;
    }
    if (s >= end || *s < '0' || *s > '9') {
        return B_REJECT;
    }
    if (*s == '0') {
        if (negative) {
            return B_REJECT; /* "-0": JCS writes 0 */
        }
        *p = s + 1;
        return B_CANONICAL;
    }
    const unsigned char *digits = s;
    uint64_t v = 0;
    while (s < end && *s >= '0' && *s <= '9') {
        if (s - digits >= 19) {
            return B_REJECT; /* beyond any configurable limit; no overflow below 20 digits */
        }
        v = v * 10 + (uint64_t)(*s - '0');
        s++;
    }
    if (v > (uint64_t)max_int) {
        return B_REJECT;
    }
    *p = s;
    return B_CANONICAL;
}

/* The verdict on the bytes [p, end) (see the top of this section); B_ERROR when out of
 * memory (no exception set). */
static int
validate(const unsigned char *p, const unsigned char *end, Scratch *sc)
{
    Py_ssize_t depth = 0; /* open containers */
    Frame *f = NULL;      /* the innermost one */
    const unsigned char *start;
    Py_ssize_t len;
    unsigned traits;
    int r;
value:
    if (p >= end) {
        return B_REJECT;
    }
    switch (*p) {
    case '{':
    case '[':
        if (depth >= max_depth) {
            return B_DEEP;
        }
        if (depth == sc->n_frames && grow_frames(sc) < 0) {
            return B_ERROR;
        }
        f = &sc->frames[depth++];
        f->is_object = *p == '{';
        f->key = NULL;
        p++;
        if (p < end && *p == (f->is_object ? '}' : ']')) {
            p++;
            goto pop;
        }
        if (f->is_object) {
            goto key;
        }
        goto value;
    case '"':
        r = string_at(&p, end, sc, &start, &len, &traits);
        if (r != B_CANONICAL) {
            return r;
        }
        goto next;
    case 't':
        if (end - p >= 4 && memcmp(p, "true", 4) == 0) {
            p += 4;
            goto next;
        }
        return B_REJECT;
    case 'f':
        if (end - p >= 5 && memcmp(p, "false", 5) == 0) {
            p += 5;
            goto next;
        }
        return B_REJECT;
    case 'n':
        if (end - p >= 4 && memcmp(p, "null", 4) == 0) {
            p += 4;
            goto next;
        }
        return B_REJECT;
    default:
        if (*p == '-' || (*p >= '0' && *p <= '9')) {
            r = number_at(&p, end);
            if (r != B_CANONICAL) {
                return r;
            }
            goto next;
        }
        return B_REJECT;
    }
key:
    if (p >= end || *p != '"') {
        return B_REJECT;
    }
    r = string_at(&p, end, sc, &start, &len, &traits);
    if (r != B_CANONICAL) {
        return r;
    }
    if (f->key != NULL && key_cmp(f->key, f->key_len, f->key_traits, start, len, traits) >= 0) {
        return B_REJECT; /* out of order, or a duplicate */
    }
    f->key = start;
    f->key_len = len;
    f->key_traits = traits;
    if (p >= end || *p != ':') {
        return B_REJECT;
    }
    p++;
    goto value;
pop:
    depth--;
    f = depth ? &sc->frames[depth - 1] : NULL;
next:
    if (f == NULL) {
        return p == end ? B_CANONICAL : B_REJECT;
    }
    if (p >= end) {
        return B_REJECT;
    }
    if (*p == ',') {
        p++;
        if (f->is_object) {
            goto key;
        }
        goto value;
    }
    if (*p == (f->is_object ? '}' : ']')) {
        p++;
        goto pop;
    }
    return B_REJECT;
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

static PyObject *
jsonscan_check_bytes(PyObject *self, PyObject *data)
{
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "check_bytes(data): data must be bytes");
        return NULL;
    }
    if (require_configured(1) < 0) {
        return NULL;
    }
    /* bytes are immutable and the caller holds `data`: the pass may run without the GIL */
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    Scratch sc;
    scratch_init(&sc);
    int verdict;
    if (n >= GIL_FREE_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        verdict = validate(p, p + n, &sc);
        Py_END_ALLOW_THREADS
    }
    else {
        verdict = validate(p, p + n, &sc);
    }
    scratch_free(&sc);
    if (verdict == B_ERROR) {
        return PyErr_NoMemory();
    }
    return PyLong_FromLong(verdict);
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
    {"check_bytes", (PyCFunction)jsonscan_check_bytes, METH_O,
     "check_bytes(data) -> 0 canonical and clean for a read; 1 not canonical (or not JSON, "
     "or a non-integer or out-of-range number); 2 a secret-shaped key or string; 3 nested "
     "deeper than the limit (undecided). Anything but 0: the reference read decides"},
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
    init_byte_tables();
    return PyModule_Create(&jsonscan_module);
}
