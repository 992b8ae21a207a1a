/*
 * What vpncrypt/_siv.c (the cipher) and vpncrypt/_batch.c (the per-packet
 * work of a batch around it) share, within the one extension module
 * vpncrypt._siv.
 */

#ifndef VPNCRYPT_SIV_H
#define VPNCRYPT_SIV_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>

#include <openssl/evp.h>

#define BLOCK 16

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *mac; /* AES-CBC, no padding, keyed with the first half */
    EVP_CIPHER_CTX *ecb; /* AES-ECB, no padding, keyed with the second half: CTR's keystream */
    unsigned char chain[BLOCK];         /* mac's CBC chaining value: its last output block */
    unsigned char k1[BLOCK], k2[BLOCK]; /* CMAC subkeys (RFC 4493 2.3) */
    unsigned char d0[BLOCK];            /* CMAC(0^128): S2V's first D */
    int busy;                           /* a call holds the contexts, GIL released */
} AesSivObject;

typedef struct {
    PyObject *invalid_tag;  /* cryptography.exceptions.InvalidTag */
    PyTypeObject *aes_siv;  /* the AesSiv type */
} module_state;

/* A borrowed slice: what S2V reads. */
typedef struct {
    const unsigned char *buf;
    size_t len;
} slice;

/* Symbols shared between the two files only: hidden from the rest of the process. */
#define SIV_INTERNAL __attribute__((visibility("hidden")))

/* S2V (RFC 5297 2.4) over n_ads AD components then pt: v gets the synthetic
 * IV. Returns 0 on an OpenSSL failure. */
SIV_INTERNAL int siv_s2v(AesSivObject *self, const slice *ads, Py_ssize_t n_ads, const unsigned char *pt,
                         size_t pt_len, unsigned char v[BLOCK]);

/* AES-CTR of len bytes from in to out with the counter from v (RFC 5297
 * 2.6). Returns 0 on an OpenSSL failure. */
SIV_INTERNAL int siv_ctr(AesSivObject *self, const unsigned char v[BLOCK], const unsigned char *in, size_t len,
                         unsigned char *out);

/* _batch.c: AesSiv.seal_batch and the module's open_run. */
SIV_INTERNAL PyObject *batch_seal(AesSivObject *self, PyObject *const *args, Py_ssize_t nargs);
SIV_INTERNAL PyObject *batch_open_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
extern const char batch_seal_doc[];
extern const char batch_open_run_doc[];

#endif
