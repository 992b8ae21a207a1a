/*
 * vpncrypt._siv: AES-SIV (RFC 5297) composed from OpenSSL's AES, keyed once.
 *
 * cryptography's AESSIV hands every call to OpenSSL's SIV, which copies a
 * cipher context per call and duplicates a CMAC context for every S2V step:
 * about 1.3 us a packet before any byte is enciphered. Here the two halves of
 * the key are each set up once per object, in an EVP_CIPHER_CTX that is
 * never initialised again (OpenSSL 3.0's EVP_EncryptInit_ex costs 0.1 to
 * 0.2 us even when it only sets an IV, more than the AES of a small packet;
 * without it a 64-byte seal takes 0.2 us instead of 0.42 here):
 *
 *   - the MAC half in AES-CBC with no padding: CMAC (RFC 4493) is CBC-MAC with
 *     a zero IV whose last block is first XORed with the subkey K1 (a full
 *     block) or K2 (a padded one). Instead of resetting the IV, the chaining
 *     value the previous message left (its last output block, kept here) is
 *     XORed into the next message's first block, which cancels it. K1 and K2
 *     (RFC 4493 2.3), and CMAC(0^128), with which S2V starts, are computed
 *     once, when the object is keyed;
 *   - the CTR half in AES-ECB: the counter blocks, from the synthetic IV with
 *     bits 31 and 63 cleared (RFC 5297 2.6), are written out and enciphered
 *     in one call a slice, and XORed into the data.
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

/* One CMAC computation. */
typedef struct {
    EVP_CIPHER_CTX *ctx;
    unsigned char *chain; /* the context's chaining value before this message */
    int first;            /* no block of this message enciphered yet */
    unsigned char last[BLOCK];
    unsigned char scratch[SCRATCH];
} cmac_state;

static const unsigned char zero_block[BLOCK] = {0};

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

/* CBC-encrypt whole blocks (len a multiple of 16) into the scratch, a slice
 * at a time; the chaining value stays in the context. The message's first
 * block has the previous message's chaining value XORed in, so that the
 * chain starts from zero as CMAC's does. Returns 0 on an OpenSSL failure. */
static int
cbc_blocks(cmac_state *st, const unsigned char *in, size_t len)
{
    int outl;
    if (len > 0 && st->first) {
        unsigned char first[BLOCK];
        memcpy(first, in, BLOCK);
        xor_block(first, st->chain);
        st->first = 0;
        if (!EVP_EncryptUpdate(st->ctx, st->scratch, &outl, first, BLOCK))
            return 0;
        in += BLOCK;
        len -= BLOCK;
    }
    while (len > 0) {
        size_t n = len < SCRATCH ? len : SCRATCH;
        if (!EVP_EncryptUpdate(st->ctx, st->scratch, &outl, in, (int)n))
            return 0;
        in += n;
        len -= n;
    }
    return 1;
}

static void
cmac_init(cmac_state *st, AesSivObject *self)
{
    st->ctx = self->mac;
    st->chain = self->chain;
    st->first = 1;
}

/* The end of a CMAC (RFC 4493 2.4): in is the rest of the message after the
 * whole blocks already chained; its last block (1 to 16 bytes, or none for an
 * empty message) is XORed with K1 if full, else padded 10* and XORed with K2. */
static int
cmac_finish(cmac_state *st, const unsigned char k1[BLOCK], const unsigned char k2[BLOCK], const unsigned char *in,
            size_t len, unsigned char out[BLOCK])
{
    size_t whole = len == 0 ? 0 : (len - 1) / BLOCK * BLOCK;
    size_t held = len - whole;
    int outl;

    if (!cbc_blocks(st, in, whole))
        return 0;
    memcpy(st->last, in + whole, held);
    if (held == BLOCK) {
        xor_block(st->last, k1);
    } else {
        st->last[held] = 0x80;
        memset(st->last + held + 1, 0, BLOCK - held - 1);
        xor_block(st->last, k2);
    }
    if (st->first) {
        xor_block(st->last, st->chain);
        st->first = 0;
    }
    if (!EVP_EncryptUpdate(st->ctx, out, &outl, st->last, BLOCK) || outl != BLOCK)
        return 0;
    memcpy(st->chain, out, BLOCK);
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

/* S2V (RFC 5297 2.4) over the AD components then the plaintext: v gets the
 * synthetic IV. Returns 0 on an OpenSSL failure. */
int
siv_s2v(AesSivObject *self, const slice *ads, Py_ssize_t n_ads, const unsigned char *pt, size_t pt_len,
    unsigned char v[BLOCK])
{
    cmac_state st;
    unsigned char d[BLOCK], mac[BLOCK];
    int ok = 0;

    memcpy(d, self->d0, BLOCK);
    for (Py_ssize_t i = 0; i < n_ads; i++) {
        cmac_init(&st, self);
        if (!cmac_finish(&st, self->k1, self->k2, ads[i].buf, ads[i].len, mac))
            goto done;
        dbl(d);
        xor_block(d, mac);
    }
    cmac_init(&st, self);
    if (pt_len >= BLOCK) {
        /* T = plaintext xorend D: D goes into the last 16 bytes. The whole
         * blocks before them are chained from the plaintext itself; the
         * remaining 16 to 31 bytes, D XORed in, from a copy. */
        size_t before = (pt_len - BLOCK) / BLOCK * BLOCK;
        size_t rest = pt_len - before;
        unsigned char tail[2 * BLOCK];
        memcpy(tail, pt + before, rest);
        xor_block(tail + rest - BLOCK, d);
        ok = cbc_blocks(&st, pt, before) && cmac_finish(&st, self->k1, self->k2, tail, rest, v);
        OPENSSL_cleanse(tail, sizeof tail);
    } else {
        /* T = dbl(D) xor pad(plaintext), pad being 10* to one block: a
         * full block, so its CMAC takes K1. */
        unsigned char t[BLOCK];
        dbl(d);
        memcpy(t, d, BLOCK);
        for (size_t i = 0; i < pt_len; i++)
            t[i] ^= pt[i];
        t[pt_len] ^= 0x80;
        ok = cmac_finish(&st, self->k1, self->k2, t, BLOCK, v);
        OPENSSL_cleanse(t, BLOCK);
    }
done:
    /* D, and a last block XORed with a subkey, stay on no stack. */
    OPENSSL_cleanse(d, BLOCK);
    OPENSSL_cleanse(st.last, BLOCK);
    if (!ok)
        resync(self);
    return ok;
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
        ok = siv_s2v(self, a.ads, a.n_ads, pt, len, o) && siv_ctr(self, o, pt, len, o + BLOCK);
        Py_END_ALLOW_THREADS
        self->busy = 0;
    } else {
        ok = siv_s2v(self, a.ads, a.n_ads, pt, len, o) && siv_ctr(self, o, pt, len, o + BLOCK);
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
        ok = siv_ctr(self, in, in + BLOCK, len, o) && siv_s2v(self, a.ads, a.n_ads, o, len, v);
        Py_END_ALLOW_THREADS
        self->busy = 0;
    } else {
        ok = siv_ctr(self, in, in + BLOCK, len, o) && siv_s2v(self, a.ads, a.n_ads, o, len, v);
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

/* Key both contexts and derive K1, K2 and CMAC(0^128). */
static int
set_key(AesSivObject *self, const unsigned char *key, size_t len)
{
    size_t half = len / 2;
    unsigned char l[BLOCK];
    cmac_state st;
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
    /* L = AES(K, 0^128): one CBC block from a zero IV (RFC 4493 2.3); the
     * chaining value is L after it. */
    ok = EVP_EncryptUpdate(self->mac, l, &outl, zero_block, BLOCK) && outl == BLOCK;
    if (ok) {
        memcpy(self->chain, l, BLOCK);
        memcpy(self->k1, l, BLOCK);
        dbl(self->k1);
        memcpy(self->k2, self->k1, BLOCK);
        dbl(self->k2);
        cmac_init(&st, self);
        ok = cmac_finish(&st, self->k1, self->k2, zero_block, BLOCK, self->d0);
        OPENSSL_cleanse(st.last, BLOCK);
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
"AESSIV. Contexts are set up here and only their IVs reset per message.\n\n"
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

static PyMethodDef module_methods[] = {
    {"open_run", (PyCFunction)(void (*)(void))batch_open_run, METH_FASTCALL, batch_open_run_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "vpncrypt._siv",
    .m_doc = "AES-SIV (RFC 5297) composed from OpenSSL's AES-CBC (for CMAC) and AES-CTR, keyed once per object.",
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
