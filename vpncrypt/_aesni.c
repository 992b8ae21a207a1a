/*
 * vpncrypt._siv's AES-NI engine: the CBC-MAC chains of S2V (RFC 5297 2.4,
 * CMAC of RFC 4493) run SIV_LANES at a time in lockstep.
 *
 * A CBC-MAC chain is serial: each block waits for the previous block's AES,
 * 10 to 14 AESENC instructions of about 4 cycles' latency each, while the
 * CPU can issue one or two of them a cycle. Chains of different messages (or
 * of one message's AD components) are independent, so here up to 8 of them
 * take each round in turn and the AES units stay busy: the chains' cost
 * becomes throughput-bound instead of latency-bound.
 *
 * Chains of different lengths: a phase runs the chains in the lanes for as
 * many blocks as the shortest of their current runs has left; then each lane
 * whose run ended moves to its chain's next run, and a lane whose chain
 * ended takes the next chain waiting. So 8 packets of one length run 8 wide
 * throughout, and a mix of lengths keeps as many lanes busy as there are
 * chains left.
 *
 * Only the MAC half's block encryption is here; S2V's composition (D, the
 * doubling, xorend, the subkeys) is _siv.c's, shared with the OpenSSL engine.
 * The code is compiled for AES-NI and SSE4.1 function by function
 * (target attributes), never for the whole file, and called only where
 * aesni_supported() said yes (CPUID at run time): the module loads and runs
 * on any x86-64 CPU, and on other machines this file is empty of engine.
 * Nothing branches on the key or the data: the lanes' schedule depends only
 * on the messages' lengths.
 */

#include "_siv.h"

#include <stdint.h>
#include <string.h>

#include <openssl/crypto.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <smmintrin.h>
#include <wmmintrin.h>

#define AESNI __attribute__((target("aes,sse4.1")))

int
aesni_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("sse4.1");
}

/* SubWord(RotWord(w)) of FIPS 197 5.2, from AESKEYGENASSIST's second dword
 * (Intel's white paper "Advanced Encryption Standard (AES) New Instructions
 * Set", 2010): its RotWord is a rotation right by 8 of the little-endian
 * dword, the same as FIPS 197's on bytes, and SubWord works byte by byte. */
static AESNI uint32_t
sub_rot_word(uint32_t w)
{
    return (uint32_t)_mm_extract_epi32(_mm_aeskeygenassist_si128(_mm_set_epi32(0, 0, (int)w, 0), 0), 1);
}

/* SubWord(w): AESKEYGENASSIST's first dword. */
static AESNI uint32_t
sub_word(uint32_t w)
{
    return (uint32_t)_mm_cvtsi128_si32(_mm_aeskeygenassist_si128(_mm_set_epi32(0, 0, (int)w, 0), 0));
}

/* KeyExpansion (FIPS 197 5.2) word by word, for Nk = 4, 6 or 8: the same
 * code for the three key sizes. Words are little-endian dwords of the key's
 * bytes in order, as the AES instructions read round keys. */
int AESNI
aesni_expand_key(const unsigned char *key, size_t len, unsigned char schedule[MAX_ROUND_KEYS * BLOCK])
{
    static const uint32_t rcon[10] = {0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36};
    uint32_t w[MAX_ROUND_KEYS * 4];
    int nk = (int)(len / 4), rounds = nk + 6, total = 4 * (rounds + 1);

    memcpy(w, key, len);
    for (int i = nk; i < total; i++) {
        uint32_t t = w[i - 1];
        if (i % nk == 0)
            t = sub_rot_word(t) ^ rcon[i / nk - 1];
        else if (nk > 6 && i % nk == 4)
            t = sub_word(t);
        w[i] = w[i - nk] ^ t;
    }
    memcpy(schedule, w, (size_t)total * 4);
    OPENSSL_cleanse(w, sizeof w);
    return rounds;
}

/* `steps` blocks into each of `width` chains: x = AES(K, x ^ block), the
 * blocks of lane j at p[j]. Always inlined into lanes_1 ... lanes_8, where
 * width is a constant: the loops over the lanes unroll and the chains stay in
 * registers. */
static inline __attribute__((always_inline)) AESNI void
lanes(int width, const unsigned char *schedule, int rounds, mac_chain *const *chain, const unsigned char *const *p,
      size_t steps)
{
    const __m128i *rk = (const __m128i *)schedule;
    __m128i x[SIV_LANES];

#pragma GCC unroll 8
    for (int j = 0; j < width; j++)
        x[j] = _mm_loadu_si128((const __m128i *)chain[j]->x);
    for (size_t s = 0; s < steps; s++) {
        __m128i k = _mm_loadu_si128(rk);
#pragma GCC unroll 8
        for (int j = 0; j < width; j++)
            x[j] = _mm_xor_si128(_mm_xor_si128(x[j], _mm_loadu_si128((const __m128i *)(p[j] + s * BLOCK))), k);
        for (int r = 1; r < rounds; r++) {
            k = _mm_loadu_si128(rk + r);
#pragma GCC unroll 8
            for (int j = 0; j < width; j++)
                x[j] = _mm_aesenc_si128(x[j], k);
        }
        k = _mm_loadu_si128(rk + rounds);
#pragma GCC unroll 8
        for (int j = 0; j < width; j++)
            x[j] = _mm_aesenclast_si128(x[j], k);
    }
#pragma GCC unroll 8
    for (int j = 0; j < width; j++)
        _mm_storeu_si128((__m128i *)chain[j]->x, x[j]);
}

typedef void lanes_fn(const unsigned char *, int, mac_chain *const *, const unsigned char *const *, size_t);

#define LANES(W)                                                                                                     \
    static AESNI void lanes_##W(const unsigned char *schedule, int rounds, mac_chain *const *chain,                  \
                                const unsigned char *const *p, size_t steps)                                         \
    {                                                                                                                \
        lanes(W, schedule, rounds, chain, p, steps);                                                                 \
    }
LANES(1)
LANES(2)
LANES(3)
LANES(4)
LANES(5)
LANES(6)
LANES(7)
LANES(8)

static lanes_fn *const lanes_of_width[SIV_LANES + 1] = {
    NULL, lanes_1, lanes_2, lanes_3, lanes_4, lanes_5, lanes_6, lanes_7, lanes_8,
};

/* Put the next run of chain c with blocks in it into lane j, from run r on;
 * 0 if none is left (the chain is done). */
static int
take_run(mac_chain *c, int r, int *run, const unsigned char **p, size_t *left)
{
    for (; r < c->n_runs; r++)
        if (c->runs[r].blocks > 0) {
            *run = r;
            *p = c->runs[r].buf;
            *left = c->runs[r].blocks;
            return 1;
        }
    return 0;
}

void
aesni_chains(const unsigned char *schedule, int rounds, mac_chain *chains, int n)
{
    mac_chain *chain[SIV_LANES];
    const unsigned char *p[SIV_LANES];
    size_t left[SIV_LANES];
    int run[SIV_LANES];
    int width = 0, next = 0;

    for (;;) {
        while (width < SIV_LANES && next < n) {
            mac_chain *c = &chains[next++];
            if (take_run(c, 0, &run[width], &p[width], &left[width]))
                chain[width++] = c;
        }
        if (width == 0)
            return;
        size_t steps = left[0];
        for (int j = 1; j < width; j++)
            if (left[j] < steps)
                steps = left[j];
        lanes_of_width[width](schedule, rounds, chain, p, steps);
        for (int j = 0; j < width;) {
            p[j] += steps * BLOCK;
            left[j] -= steps;
            if (left[j] > 0 || take_run(chain[j], run[j] + 1, &run[j], &p[j], &left[j])) {
                j++;
                continue;
            }
            /* chain j is done: the last lane takes its place */
            width--;
            chain[j] = chain[width];
            run[j] = run[width];
            p[j] = p[width];
            left[j] = left[width];
        }
    }
}

#else /* not x86-64: the OpenSSL engine alone */

int
aesni_supported(void)
{
    return 0;
}

int
aesni_expand_key(const unsigned char *key, size_t len, unsigned char schedule[MAX_ROUND_KEYS * BLOCK])
{
    (void)key;
    (void)len;
    (void)schedule;
    return 0;
}

void
aesni_chains(const unsigned char *schedule, int rounds, mac_chain *chains, int n)
{
    (void)schedule;
    (void)rounds;
    (void)chains;
    (void)n;
}

#endif
