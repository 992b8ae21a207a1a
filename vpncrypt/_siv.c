/*
 * vpncrypt._siv: AES-SIV (RFC 5297) composed from AES, keyed once.
 *
 * cryptography's AESSIV hands every call to OpenSSL's SIV, which copies a
 * cipher context per call and duplicates a CMAC context for every S2V step:
 * about 1.3 us a packet before any byte is enciphered. Here the two halves of
 * the key are each set up once per object:
 *
 *   - the MAC half: S2V (RFC 5297 2.4) is composed here once, as CBC-MAC
 *     chains (mac_chain, _siv.h): CMAC (RFC 4493) is CBC-MAC with a zero IV
 *     whose last block is first XORed with the subkey K1 (a full block) or
 *     K2 (a padded one). K1 and K2 (RFC 4493 2.3), and CMAC(0^128), with
 *     which S2V starts, are computed once, when the object is keyed. The
 *     chains go through one of two engines, the same for every object
 *     (engine(), use_engine()):
 *       "aes-ni" (vpncrypt/_aesni.c, where the CPU has AES-NI): up to 8
 *       chains at once in lockstep, from round keys made at keying;
 *       "openssl": OpenSSL's AES-CBC with no padding, in an EVP_CIPHER_CTX
 *       that is never initialised again (OpenSSL 3.0's EVP_EncryptInit_ex
 *       costs 0.1 to 0.2 us even when it only sets an IV, more than the AES
 *       of a small packet). Instead of resetting the IV, the chaining value
 *       the previous chain left (its last output block, kept here) is XORed
 *       into the next chain's first block, which cancels it;
 *   - the CTR half in OpenSSL's AES-ECB: the counter blocks, from the
 *     synthetic IV with bits 31 and 63 cleared (RFC 5297 2.6), are written
 *     out and enciphered in one call a slice, and XORed into the data.
 *
 * Same interface and exceptions as cryptography.hazmat.primitives.ciphers.aead
 * .AESSIV (encrypt and decrypt), which the tests hold it to byte for byte.
 * The doubling in GF(2^128) uses a mask, never a branch on the data, and the
 * tag is compared with CRYPTO_memcmp.
 *
 * One thread at a time per object: the contexts carry per-message state. The
 * daemon is single-threaded; a second thread that calls an object whose
 * contexts are in use (the GIL released around a large input) gets a
 * RuntimeError, never a mixed-up state.
 */

#include "_siv.h"

#include <limits.h>
#include <stdint.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/opensslv.h>

/* Inputs from this size up are enciphered with the GIL released. Measured
 * here (AES-256, 2 shared cores): releasing and taking it back with no other
 * thread waiting costs about 0.04 us, a fifth of a 64-byte call but under 1 %
 * of the 4 us a 4 KB one takes; with a thread waiting, the caller may wait
 * for it up to the interpreter's switch interval (5 ms by default), which
 * only pays for work long enough to share. The data path's packets (at most
 * the MTU) stay below it and keep the GIL. */
#define GIL_RELEASE_BYTES 4096

/* CBC output a CMAC step throws away, and CTR's keystream, go through a
 * buffer of this size on the stack, a slice at a time. */
#define SCRATCH 2048

/* Stack room for this many AD components; more take a heap array. */
#define AD_ON_STACK 8

/* Chains an engine call takes: SIV_LANES messages' final chains and their
 * AD components' (more AD components go in further calls). */
#define CHAINS (4 * SIV_LANES)

static const unsigned char zero_block[BLOCK] = {0};

/* Whether the MAC half goes through the AES-NI engine: this CPU has AES-NI
 * (set at the module's start) and use_engine() did not say otherwise. */
static int cpu_has_aesni, use_aesni;

/* b = b * x in GF(2^128) with the polynomial x^128 + x^7 + x^2 + x + 1
 * (RFC 5297 2.3, RFC 4493 2.3): a shift, and 0x87 folded in under a mask made
 * from the bit shifted out, so the time does not depend on it. */
static void
dbl(unsigned char b[BLOCK])
{
    unsigned char mask = (unsigned char)(0 - (b[0] >> 7));
    for (int i = 0; i < BLOCK - 1; i++)
        b[i] = (unsigned char)((b[i] << 1) | (b[i + 1] >> 7));
    b[BLOCK - 1] = (unsigned char)((b[BLOCK - 1] << 1) ^ (mask & 0x87));
}

static void
xor_block(unsigned char *dst, const unsigned char *src)
{
    for (int i = 0; i < BLOCK; i++)
        dst[i] ^= src[i];
}

/* CMAC's last block (RFC 4493 2.4) in place: its held bytes (1 to 16, or
 * none for an empty message) XORed with K1 if a full block, else padded 10*
 * and XORed with K2. */
static void
finish_last(unsigned char block[BLOCK], size_t held, const unsigned char k1[BLOCK], const unsigned char k2[BLOCK])
{
    if (held == BLOCK) {
        xor_block(block, k1);
    } else {
        block[held] = 0x80;
        memset(block + held + 1, 0, BLOCK - held - 1);
        xor_block(block, k2);
    }
}

/* The chain of CMAC(msg): its whole blocks from msg itself, its last block
 * prepared in the chain. */
static void
cmac_chain(mac_chain *c, const AesSivObject *self, const unsigned char *msg, size_t len)
{
    size_t whole = len == 0 ? 0 : (len - 1) / BLOCK * BLOCK;
    memset(c->x, 0, BLOCK);
    c->runs[0].buf = msg;
    c->runs[0].blocks = whole / BLOCK;
    memcpy(c->last, msg + whole, len - whole);
    finish_last(c->last, len - whole, self->k1, self->k2);
    c->runs[1].buf = c->last;
    c->runs[1].blocks = 1;
    c->n_runs = 2;
}

/* The OpenSSL engine: each chain through the CBC context in turn. The
 * context keeps the chaining value the previous chain left (self->chain):
 * XORed into a chain's first block with the chain's own x, it is replaced by
 * x, so nothing resets the context's IV. Returns 0 on an OpenSSL failure. */
static int
openssl_chains(AesSivObject *self, mac_chain *chains, int n)
{
    unsigned char scratch[SCRATCH];
    int outl;

    for (int i = 0; i < n; i++) {
        mac_chain *c = &chains[i];
        int first = 1;
        for (int r = 0; r < c->n_runs; r++) {
            const unsigned char *in = c->runs[r].buf;
            size_t len = c->runs[r].blocks * BLOCK;
            while (len > 0) {
                size_t step = len < SCRATCH ? len : SCRATCH;
                if (first) {
                    unsigned char block[BLOCK];
                    memcpy(block, in, BLOCK);
                    xor_block(block, self->chain);
                    xor_block(block, c->x);
                    first = 0;
                    step = BLOCK;
                    int ok = EVP_EncryptUpdate(self->mac, scratch, &outl, block, BLOCK);
                    OPENSSL_cleanse(block, BLOCK);
                    if (!ok)
                        return 0;
                } else if (!EVP_EncryptUpdate(self->mac, scratch, &outl, in, (int)step)) {
                    return 0;
                }
                memcpy(self->chain, scratch + step - BLOCK, BLOCK);
                in += step;
                len -= step;
            }
        }
        if (!first)
            memcpy(c->x, self->chain, BLOCK);
    }
    return 1;
}

/* After an OpenSSL failure the chaining value is unknown: start it again
 * from a zero IV (an initialisation, as at keying). */
static void
resync(AesSivObject *self)
{
    if (EVP_EncryptInit_ex(self->mac, NULL, NULL, NULL, zero_block))
        memset(self->chain, 0, BLOCK);
}

/* n chains through the engine in use. Returns 0 on an OpenSSL failure. */
static int
run_chains(AesSivObject *self, mac_chain *chains, int n)
{
    if (use_aesni && self->mac_rounds) {
        aesni_chains(self->mac_schedule, self->mac_rounds, chains, n);
        return 1;
    }
    if (openssl_chains(self, chains, n))
        return 1;
    resync(self);
    return 0;
}

/* The chains c[from:used] through the engine, then D of each AD
 * component's owner (RFC 5297 2.4: D = dbl(D) xor CMAC(S_i)), in order;
 * the AD components' chains start at c[k]. */
static int
run_and_fold(AesSivObject *self, mac_chain *c, int from, int used, int k, const int *owner,
             unsigned char (*d)[BLOCK])
{
    if (!run_chains(self, c + from, used - from))
        return 0;
    for (int j = k; j < used; j++) {
        dbl(d[owner[j]]);
        xor_block(d[owner[j]], c[j].x);
    }
    return 1;
}

/* S2V of up to SIV_LANES messages. First, in one engine call, the CMACs of
 * their AD components and the whole blocks of their final CMACs that D does
 * not reach (those before a plaintext's last 16 to 31 bytes); D folds the AD
 * components' CMACs in, in order; then, in a second call, each final CMAC's
 * last blocks, with D in them. */
static int
s2v_group(AesSivObject *self, const s2v_message *m, int k)
{
    mac_chain c[CHAINS]; /* the messages' final chains, then AD components' */
    int owner[CHAINS];   /* whose AD component each chain from c[k] on is */
    unsigned char d[SIV_LANES][BLOCK];
    size_t before[SIV_LANES];
    int used = k, from = 0, top = k, ok = 0;

    for (int i = 0; i < k; i++) {
        memcpy(d[i], self->d0, BLOCK);
        before[i] = m[i].pt_len >= BLOCK ? (m[i].pt_len - BLOCK) / BLOCK * BLOCK : 0;
        memset(c[i].x, 0, BLOCK);
        c[i].runs[0].buf = m[i].pt;
        c[i].runs[0].blocks = before[i] / BLOCK;
        c[i].n_runs = 1;
    }
    for (int i = 0; i < k; i++)
        for (Py_ssize_t a = 0; a < m[i].n_ads; a++) {
            if (used == CHAINS) {
                /* the final chains' first part went with the first call */
                if (!run_and_fold(self, c, from, used, k, owner, d))
                    goto done;
                from = used = k;
            }
            owner[used] = i;
            cmac_chain(&c[used++], self, m[i].ads[a].buf, m[i].ads[a].len);
            if (used > top)
                top = used;
        }
    if (!run_and_fold(self, c, from, used, k, owner, d))
        goto done;
    for (int i = 0; i < k; i++) {
        unsigned char *last = c[i].last;
        size_t rest = m[i].pt_len - before[i];
        if (m[i].pt_len >= BLOCK) {
            /* T = plaintext xorend D: D into the last 16 bytes, of the 16 to
             * 31 left after the whole blocks chained above */
            memcpy(last, m[i].pt + before[i], rest);
            xor_block(last + rest - BLOCK, d[i]);
            if (rest == BLOCK) {
                finish_last(last, BLOCK, self->k1, self->k2);
            } else {
                finish_last(last + BLOCK, rest - BLOCK, self->k1, self->k2);
            }
            c[i].runs[0].blocks = rest == BLOCK ? 1 : 2;
        } else {
            /* T = dbl(D) xor pad(plaintext), pad being 10* to one block: a
             * full block, so its CMAC takes K1 */
            dbl(d[i]);
            memcpy(last, d[i], BLOCK);
            for (size_t b = 0; b < m[i].pt_len; b++)
                last[b] ^= m[i].pt[b];
            last[m[i].pt_len] ^= 0x80;
            finish_last(last, BLOCK, self->k1, self->k2);
            c[i].runs[0].blocks = 1;
        }
        c[i].runs[0].buf = last;
    }
    if (!run_chains(self, c, k))
        goto done;
    for (int i = 0; i < k; i++)
        memcpy(m[i].v, c[i].x, BLOCK);
    ok = 1;
done:
    /* D, and last blocks XORed with a subkey, stay on no stack. */
    OPENSSL_cleanse(d, sizeof d);
    OPENSSL_cleanse(c, (size_t)top * sizeof c[0]);
    return ok;
}

int
siv_s2v_many(AesSivObject *self, const s2v_message *messages, int n)
{
    for (int i = 0; i < n; i += SIV_LANES)
        if (!s2v_group(self, messages + i, n - i < SIV_LANES ? n - i : SIV_LANES))
            return 0;
    return 1;
}

/* S2V of one message: v gets the synthetic IV. Returns 0 on an OpenSSL
 * failure. */
static int
s2v_one(AesSivObject *self, const slice *ads, Py_ssize_t n_ads, const unsigned char *pt, size_t pt_len,
        unsigned char v[BLOCK])
{
    s2v_message m = {ads, n_ads, pt, pt_len, v};
    return s2v_group(self, &m, 1);
}

/* AES-CTR of len bytes from in to out, the counter starting at V with bits
 * 31 and 63 cleared (RFC 5297 2.6), a 128-bit big-endian counter: a slice's
 * counter blocks are written out, enciphered in one ECB call and XORed into
 * the data, 16 bytes at a time. With bit 63 cleared the low half cannot carry
 * into the high one below 2**63 blocks, so only the low half counts. The
 * keystream is not wiped from the stack: it is the plaintext XOR the
 * ciphertext, and the plaintext stays in Python objects anyway. (GCC and
 * Clang's __builtin_bswap64: the counter is big-endian.) */
int
siv_ctr(AesSivObject *self, const unsigned char v[BLOCK], const unsigned char *in, size_t len, unsigned char *out)
{
    unsigned char ks[SCRATCH];
    uint64_t lo;

    memcpy(&lo, v + 8, 8);
    lo = __builtin_bswap64(lo) & ~UINT64_C(0x8000000080000000);
    while (len > 0) {
        size_t n = len < SCRATCH ? len : SCRATCH;
        size_t blocks = (n + BLOCK - 1) / BLOCK, i = 0;
        int outl;
        for (size_t b = 0; b < blocks; b++) {
            uint64_t counter = __builtin_bswap64(lo++);
            memcpy(ks + b * BLOCK, v, 8);
            memcpy(ks + b * BLOCK + 8, &counter, 8);
        }
        if (!EVP_EncryptUpdate(self->ecb, ks, &outl, ks, (int)(blocks * BLOCK)))
            return 0;
        for (; i + BLOCK <= n; i += BLOCK) {
            uint64_t d0, d1, k0, k1;
            memcpy(&d0, in + i, 8);
            memcpy(&d1, in + i + 8, 8);
            memcpy(&k0, ks + i, 8);
            memcpy(&k1, ks + i + 8, 8);
            d0 ^= k0;
            d1 ^= k1;
            memcpy(out + i, &d0, 8);
            memcpy(out + i + 8, &d1, 8);
        }
        for (; i < n; i++)
            out[i] = in[i] ^ ks[i];
        in += n;
        out += n;
        len -= n;
    }
    return 1;
}

/* ---- arguments ---------------------------------------------------------- */

/* A buffer as cryptography takes it, with its TypeError for anything else. */
static int
get_buffer(PyObject *obj, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) == 0)
        return 0;
    if (PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        if (PyUnicode_Check(obj))
            PyErr_Format(PyExc_TypeError,
                         "Cannot convert \"%R\" instance to a buffer.\nDid you mean to pass a bytestring instead?",
                         (PyObject *)Py_TYPE(obj));
        else
            PyErr_Format(PyExc_TypeError, "Cannot convert \"%R\" instance to a buffer.", (PyObject *)Py_TYPE(obj));
    }
    return -1;
}

static int
too_long(size_t len)
{
    if (len > (size_t)INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "Data or associated data too long. Max 2**31 - 1 bytes");
        return 1;
    }
    return 0;
}

/* The arguments of a call, held until release_args. */
typedef struct {
    Py_buffer data;
    int have_data;
    Py_buffer *ad_views;
    Py_ssize_t n_ads;
    slice *ads;
    Py_buffer ad_stack[AD_ON_STACK];
    slice ad_slices[AD_ON_STACK];
} call_args;

static void
release_args(call_args *a)
{
    for (Py_ssize_t i = 0; i < a->n_ads; i++)
        PyBuffer_Release(&a->ad_views[i]);
    if (a->ad_views != a->ad_stack) {
        PyMem_Free(a->ad_views);
        PyMem_Free(a->ads);
    }
    if (a->have_data)
        PyBuffer_Release(&a->data);
}

/* (data, associated_data), positional or by keyword, as cryptography names
 * them; associated_data is a list of buffers or None. Returns 0, -1 with an
 * exception set, or 1 if data is shorter than short_below bytes, found where
 * cryptography finds it: after the list's type, before its items. */
static int
parse_args(call_args *a, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, const char *method,
           Py_ssize_t short_below)
{
    static const char *const names[2] = {"data", "associated_data"};
    PyObject *slots[2] = {NULL, NULL};

    a->have_data = 0;
    a->n_ads = 0;
    a->ad_views = a->ad_stack;
    a->ads = a->ad_slices;

    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "AesSiv.%s() takes 2 positional arguments but %zd were given", method, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        slots[i] = args[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int slot = -1;
        for (int j = 0; j < 2; j++)
            if (PyUnicode_CompareWithASCIIString(name, names[j]) == 0)
                slot = j;
        if (slot < 0) {
            PyErr_Format(PyExc_TypeError, "AesSiv.%s() got an unexpected keyword argument '%U'", method, name);
            return -1;
        }
        if (slots[slot] != NULL) {
            PyErr_Format(PyExc_TypeError, "AesSiv.%s() got multiple values for argument '%s'", method, names[slot]);
            return -1;
        }
        slots[slot] = args[nargs + k];
    }
    for (int j = 0; j < 2; j++)
        if (slots[j] == NULL) {
            PyErr_Format(PyExc_TypeError, "AesSiv.%s() missing 1 required positional argument: '%s'", method,
                         names[j]);
            return -1;
        }

    if (get_buffer(slots[0], &a->data) < 0)
        return -1;
    a->have_data = 1;
    if (too_long((size_t)a->data.len))
        return -1;

    PyObject *ad = slots[1];
    if (ad != Py_None && !PyList_Check(ad)) {
        PyErr_Format(PyExc_TypeError, "'%s' object is not an instance of 'list'", Py_TYPE(ad)->tp_name);
        return -1;
    }
    if (a->data.len < short_below)
        return 1;
    if (ad == Py_None)
        return 0;
    /* Views are taken first (a view keeps its object alive and, for a
     * bytearray, its size fixed), so the list may change afterwards. */
    Py_ssize_t n = PyList_GET_SIZE(ad);
    if (n > AD_ON_STACK) {
        a->ad_views = PyMem_New(Py_buffer, n);
        a->ads = PyMem_New(slice, n);
        if (a->ad_views == NULL || a->ads == NULL) {
            PyMem_Free(a->ad_views);
            PyMem_Free(a->ads);
            a->ad_views = a->ad_stack;
            a->ads = a->ad_slices;
            PyErr_NoMemory();
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(ad); i++) {
        PyObject *item = PyList_GET_ITEM(ad, i);
        Py_INCREF(item); /* a buffer export may run Python code that changes the list */
        int failed = get_buffer(item, &a->ad_views[i]);
        Py_DECREF(item);
        if (failed < 0)
            return -1;
        a->n_ads = i + 1;
        if (too_long((size_t)a->ad_views[i].len))
            return -1;
        a->ads[i].buf = a->ad_views[i].buf;
        a->ads[i].len = (size_t)a->ad_views[i].len;
    }
    return 0;
}

/* ---- the type ------------------------------------------------------------ */

static PyObject *
raise_openssl(void)
{
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL's AES failed");
    return NULL;
}

static int
claim(AesSivObject *self)
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this AesSiv object is in use by another thread");
        return -1;
    }
    return 0;
}

static PyObject *
AesSiv_encrypt(AesSivObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    call_args a;
    PyObject *out = NULL;
    int ok;

    if (claim(self) < 0)
        return NULL;
    if (parse_args(&a, args, nargs, kwnames, "encrypt", 0) != 0)
        goto done;
    out = PyBytes_FromStringAndSize(NULL, BLOCK + a.data.len);
    if (out == NULL)
        goto done;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    const unsigned char *pt = a.data.buf;
    size_t len = (size_t)a.data.len;
    if (len >= GIL_RELEASE_BYTES) {
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        ok = s2v_one(self, a.ads, a.n_ads, pt, len, o) && siv_ctr(self, o, pt, len, o + BLOCK);
        Py_END_ALLOW_THREADS
        self->busy = 0;
    } else {
        ok = s2v_one(self, a.ads, a.n_ads, pt, len, o) && siv_ctr(self, o, pt, len, o + BLOCK);
    }
    if (!ok) {
        Py_CLEAR(out);
        raise_openssl();
    }
done:
    release_args(&a);
    return out;
}

static PyObject *
AesSiv_decrypt(AesSivObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    call_args a;
    PyObject *out = NULL;
    int ok, authentic = 0;
    unsigned char v[BLOCK];

    if (claim(self) < 0)
        return NULL;
    int parsed = parse_args(&a, args, nargs, kwnames, "decrypt", BLOCK);
    if (parsed != 0) {
        if (parsed > 0) {
            module_state *state = PyType_GetModuleState(Py_TYPE(self));
            PyErr_SetNone(state->invalid_tag);
        }
        goto done;
    }
    size_t len = (size_t)a.data.len - BLOCK;
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (out == NULL)
        goto done;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    const unsigned char *in = a.data.buf;
    if (len >= GIL_RELEASE_BYTES) {
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        ok = siv_ctr(self, in, in + BLOCK, len, o) && s2v_one(self, a.ads, a.n_ads, o, len, v);
        Py_END_ALLOW_THREADS
        self->busy = 0;
    } else {
        ok = siv_ctr(self, in, in + BLOCK, len, o) && s2v_one(self, a.ads, a.n_ads, o, len, v);
    }
    if (ok)
        authentic = CRYPTO_memcmp(v, in, BLOCK) == 0;
    if (!authentic) {
        /* The plaintext of a forgery never leaves. */
        OPENSSL_cleanse(o, len);
        Py_CLEAR(out);
        if (ok) {
            module_state *state = PyType_GetModuleState(Py_TYPE(self));
            PyErr_SetNone(state->invalid_tag);
        } else {
            raise_openssl();
        }
    }
done:
    release_args(&a);
    return out;
}

static const EVP_CIPHER *
cbc_for(size_t half)
{
    return half == 16 ? EVP_aes_128_cbc() : half == 24 ? EVP_aes_192_cbc() : EVP_aes_256_cbc();
}

static const EVP_CIPHER *
ecb_for(size_t half)
{
    return half == 16 ? EVP_aes_128_ecb() : half == 24 ? EVP_aes_192_ecb() : EVP_aes_256_ecb();
}

/* Key both contexts and derive K1, K2 and CMAC(0^128); the MAC half's round
 * keys for the AES-NI engine where the CPU has it. */
static int
set_key(AesSivObject *self, const unsigned char *key, size_t len)
{
    size_t half = len / 2;
    unsigned char l[BLOCK];
    mac_chain c;
    int outl, ok;

    self->mac = EVP_CIPHER_CTX_new();
    self->ecb = EVP_CIPHER_CTX_new();
    if (self->mac == NULL || self->ecb == NULL)
        return 0;
    if (!EVP_EncryptInit_ex(self->mac, cbc_for(half), NULL, key, zero_block)
        || !EVP_CIPHER_CTX_set_padding(self->mac, 0)
        || !EVP_EncryptInit_ex(self->ecb, ecb_for(half), NULL, key + half, NULL)
        || !EVP_CIPHER_CTX_set_padding(self->ecb, 0))
        return 0;
    if (cpu_has_aesni)
        self->mac_rounds = aesni_expand_key(key, half, self->mac_schedule);
    /* L = AES(K, 0^128): one CBC block from a zero IV (RFC 4493 2.3); the
     * chaining value is L after it. */
    ok = EVP_EncryptUpdate(self->mac, l, &outl, zero_block, BLOCK) && outl == BLOCK;
    if (ok) {
        memcpy(self->chain, l, BLOCK);
        memcpy(self->k1, l, BLOCK);
        dbl(self->k1);
        memcpy(self->k2, self->k1, BLOCK);
        dbl(self->k2);
        cmac_chain(&c, self, zero_block, BLOCK);
        ok = run_chains(self, &c, 1);
        memcpy(self->d0, c.x, BLOCK);
        OPENSSL_cleanse(&c, sizeof c);
    }
    OPENSSL_cleanse(l, BLOCK);
    return ok;
}

static void AesSiv_dealloc(AesSivObject *self);

static PyObject *
AesSiv_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"key", NULL};
    PyObject *key_obj;
    Py_buffer key;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:AesSiv", kwlist, &key_obj))
        return NULL;
    if (get_buffer(key_obj, &key) < 0)
        return NULL;
    if (key.len != 32 && key.len != 48 && key.len != 64) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "AESSIV key must be 256, 384, or 512 bits.");
        return NULL;
    }
    AesSivObject *self = (AesSivObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        PyBuffer_Release(&key);
        return NULL;
    }
    int ok = set_key(self, key.buf, (size_t)key.len);
    PyBuffer_Release(&key);
    if (!ok) {
        Py_DECREF(self);
        return raise_openssl();
    }
    return (PyObject *)self;
}

static void
AesSiv_dealloc(AesSivObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    /* EVP_CIPHER_CTX_free wipes the key schedules. */
    EVP_CIPHER_CTX_free(self->mac);
    EVP_CIPHER_CTX_free(self->ecb);
    OPENSSL_cleanse(self->chain, BLOCK);
    OPENSSL_cleanse(self->k1, BLOCK);
    OPENSSL_cleanse(self->k2, BLOCK);
    OPENSSL_cleanse(self->d0, BLOCK);
    OPENSSL_cleanse(self->mac_schedule, sizeof self->mac_schedule);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

PyDoc_STRVAR(encrypt_doc,
"encrypt(data, associated_data) -> bytes\n\n"
"The 16-byte synthetic IV, then the ciphertext (as long as data).\n"
"associated_data: a list of bytes-like components, or None for none.\n"
"Raises TypeError for a non-buffer or an AD that is not a list, OverflowError\n"
"past 2**31 - 1 bytes.");

PyDoc_STRVAR(decrypt_doc,
"decrypt(data, associated_data) -> bytes\n\n"
"The plaintext of data (synthetic IV then ciphertext) if it authenticates\n"
"with associated_data; raises cryptography.exceptions.InvalidTag if it does\n"
"not (or data is shorter than 16 bytes), TypeError / OverflowError as encrypt.");

static PyMethodDef AesSiv_methods[] = {
    {"encrypt", (PyCFunction)(void (*)(void))AesSiv_encrypt, METH_FASTCALL | METH_KEYWORDS, encrypt_doc},
    {"decrypt", (PyCFunction)(void (*)(void))AesSiv_decrypt, METH_FASTCALL | METH_KEYWORDS, decrypt_doc},
    {"seal_batch", (PyCFunction)(void (*)(void))batch_seal, METH_FASTCALL, batch_seal_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(AesSiv_doc,
"AesSiv(key)\n\n"
"AES-SIV (RFC 5297) keyed once: key is 32, 48 or 64 bytes (the MAC half, then\n"
"the CTR half; AES-128, -192 or -256), else ValueError, as cryptography's\n"
"AESSIV. Its OpenSSL contexts, and the MAC half's round keys for the AES-NI\n"
"engine, are set up here once; no call initialises them again.\n\n"
"One thread at a time per object (vpncrypt's daemon is single-threaded): a\n"
"call from a second thread while a large input is being enciphered with the\n"
"GIL released raises RuntimeError.");

static PyType_Slot AesSiv_slots[] = {
    {Py_tp_new, AesSiv_new},
    {Py_tp_dealloc, AesSiv_dealloc},
    {Py_tp_methods, AesSiv_methods},
    {Py_tp_doc, (void *)AesSiv_doc},
    {0, NULL},
};

static PyType_Spec AesSiv_spec = {
    .name = "vpncrypt._siv.AesSiv",
    .basicsize = sizeof(AesSivObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = AesSiv_slots,
};

/* ---- the module ---------------------------------------------------------- */

static int
module_exec(PyObject *module)
{
    module_state *state = PyModule_GetState(module);
    PyObject *exceptions = PyImport_ImportModule("cryptography.exceptions");
    if (exceptions == NULL)
        return -1;
    state->invalid_tag = PyObject_GetAttrString(exceptions, "InvalidTag");
    Py_DECREF(exceptions);
    if (state->invalid_tag == NULL)
        return -1;
    PyObject *type = PyType_FromModuleAndSpec(module, &AesSiv_spec, NULL);
    if (type == NULL)
        return -1;
    state->aes_siv = (PyTypeObject *)type;
    Py_INCREF(type);
    if (PyModule_AddObject(module, "AesSiv", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    /* The engines this CPU can run, the fastest first and in use. */
    cpu_has_aesni = aesni_supported();
    use_aesni = cpu_has_aesni;
    PyObject *engines = cpu_has_aesni ? Py_BuildValue("(ss)", "aes-ni", "openssl") : Py_BuildValue("(s)", "openssl");
    if (engines == NULL || PyModule_AddObject(module, "ENGINES", engines) < 0) {
        Py_XDECREF(engines);
        return -1;
    }
    /* The library loaded at run time, which may differ from the headers. */
    return PyModule_AddStringConstant(module, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION));
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *state = PyModule_GetState(module);
    Py_VISIT(state->invalid_tag);
    Py_VISIT(state->aes_siv);
    return 0;
}

static int
module_clear(PyObject *module)
{
    module_state *state = PyModule_GetState(module);
    Py_CLEAR(state->invalid_tag);
    Py_CLEAR(state->aes_siv);
    return 0;
}

static PyObject *
engine(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    return PyUnicode_FromString(use_aesni ? "aes-ni" : "openssl");
}

static PyObject *
use_engine(PyObject *Py_UNUSED(module), PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "use_engine() takes a str, not %.100s", Py_TYPE(name)->tp_name);
        return NULL;
    }
    if (PyUnicode_CompareWithASCIIString(name, "openssl") == 0) {
        use_aesni = 0;
    } else if (PyUnicode_CompareWithASCIIString(name, "aes-ni") == 0) {
        if (!cpu_has_aesni) {
            PyErr_SetString(PyExc_ValueError, "engine 'aes-ni': this CPU has no AES-NI (or this is not x86-64)");
            return NULL;
        }
        use_aesni = 1;
    } else {
        PyErr_Format(PyExc_ValueError, "unknown engine %R: 'aes-ni' or 'openssl'", name);
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(engine_doc,
"engine() -> str\n\n"
"The engine of the MAC half (S2V's CMACs) in use, for every AesSiv object:\n"
"\"aes-ni\" (vpncrypt/_aesni.c, up to 8 CBC-MAC chains interleaved) or\n"
"\"openssl\" (OpenSSL's AES-CBC, one chain at a time). CTR is OpenSSL's in both.");

PyDoc_STRVAR(use_engine_doc,
"use_engine(name) -> None\n\n"
"Make name (one of ENGINES) the engine of every AesSiv object from the next\n"
"call on; both give the same bytes. ValueError for another name, or for\n"
"\"aes-ni\" on a CPU without it; TypeError for a non-str.");

static PyMethodDef module_methods[] = {
    {"open_run", (PyCFunction)(void (*)(void))batch_open_run, METH_FASTCALL, batch_open_run_doc},
    {"engine", engine, METH_NOARGS, engine_doc},
    {"use_engine", use_engine, METH_O, use_engine_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "vpncrypt._siv",
    .m_doc = "AES-SIV (RFC 5297) keyed once per object: S2V's CMACs on AES-NI where the CPU has it (else "
             "OpenSSL's AES-CBC), CTR on OpenSSL's AES.",
    .m_size = sizeof(module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
};

PyMODINIT_FUNC
PyInit__siv(void)
{
    return PyModuleDef_Init(&module_def);
}
