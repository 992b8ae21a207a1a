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

/* AES-256's 14 rounds take 15 round keys (FIPS 197 5.2). */
#define MAX_ROUND_KEYS 15

/* Messages whose S2V one call computes together (siv_s2v_many), and the
 * CBC-MAC chains the AES-NI engine runs in lockstep: 8 chains hide the 4
 * cycles an AESENC waits for its input, at one or two issued a cycle. */
#define SIV_LANES 8

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *mac; /* AES-CBC, no padding, keyed with the first half */
    EVP_CIPHER_CTX *ecb; /* AES-ECB, no padding, keyed with the second half: CTR's keystream */
    unsigned char chain[BLOCK];         /* mac's CBC chaining value: its last output block */
    unsigned char k1[BLOCK], k2[BLOCK]; /* CMAC subkeys (RFC 4493 2.3) */
    unsigned char d0[BLOCK];            /* CMAC(0^128): S2V's first D */
    /* The first half's round keys for the AES-NI engine (FIPS 197 5.2),
     * made at keying wherever the CPU has AES-NI; mac_rounds 0 where not. */
    unsigned char mac_schedule[MAX_ROUND_KEYS * BLOCK];
    int mac_rounds;                     /* 10, 12 or 14 */
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

/* One message for S2V (RFC 5297 2.4): n_ads AD components then pt; v gets
 * the synthetic IV. */
typedef struct {
    const slice *ads;
    Py_ssize_t n_ads;
    const unsigned char *pt;
    size_t pt_len;
    unsigned char *v;
} s2v_message;

/* S2V of n messages (any n; SIV_LANES at a time share the AES-NI engine's
 * lanes). Returns 0 on an OpenSSL failure. */
SIV_INTERNAL int siv_s2v_many(AesSivObject *self, const s2v_message *messages, int n);

/* A run of whole blocks that a CBC-MAC chain takes in. */
typedef struct {
    const unsigned char *buf;
    size_t blocks;
} block_run;

/* One CBC-MAC chain: each block b of the runs, in order, makes
 * x = AES(K, x ^ b). CMAC (RFC 4493 2.4) is such a chain from x = 0 whose
 * last block the caller has already XORed with K1 or K2, kept in last. */
typedef struct {
    unsigned char x[BLOCK];
    block_run runs[2];
    int n_runs;
    unsigned char last[2 * BLOCK]; /* the message's last one or two blocks, prepared */
} mac_chain;

/* The AES-NI engine (vpncrypt/_aesni.c), x86-64 only: whether this CPU has
 * AES-NI and SSE4.1 (CPUID, checked at run time); the round keys of an
 * AES-128, -192 or -256 key (len 16, 24 or 32) into schedule, returning the
 * rounds (10, 12, 14), or 0 where the engine is not there; and n chains run
 * SIV_LANES at a time in lockstep with a schedule made so. */
SIV_INTERNAL int aesni_supported(void);
SIV_INTERNAL int aesni_expand_key(const unsigned char *key, size_t len, unsigned char schedule[MAX_ROUND_KEYS * BLOCK]);
SIV_INTERNAL void aesni_chains(const unsigned char *schedule, int rounds, mac_chain *chains, int n);

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
