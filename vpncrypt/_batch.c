/*
 * vpncrypt._siv's batch path: the per-packet work of sealing and opening a
 * batch of datagrams in one call, around the cipher of _siv.c.
 *
 * The Python code specifies it and stays the reference and the fallback:
 *
 *   - AesSiv.seal_batch is the loop of Peer.seal (vpncrypt/core/peer.py):
 *     counter, header, associated data and AES-SIV for each payload, the
 *     S2Vs of SIV_LANES payloads at a time together (so that the AES-NI
 *     engine interleaves their CMACs), then CTR payload by payload.
 *   - open_run is open_datagrams' loop (vpncrypt/core/receive.py) for the
 *     datagrams of the common path: data and keepalives from a known peer,
 *     inside the time window, NEWEST or REORDERED in its replay window, with
 *     failure credit, whose epoch's context is already made and whose
 *     timestamp is below the peer's save_at. It authenticates them (up to
 *     SIV_LANES consecutive ones of a peer together: see `group`), commits
 *     the replay window, moves the endpoint, checks the inner packet and its
 *     source, and appends (peer, packet) as the Python loop does. It also
 *     counts the drops that change nothing but a counter (bad_length,
 *     old_version, unknown_kind, unknown_client, replayed, the inner
 *     packet's two, and outside_time_window where no time answer can be
 *     earned: a flood of stale garbage costs no more than other garbage).
 *     Any other datagram (a probe, a time answer to earn, a restart
 *     question, a forgery, a jump in the window, a missing context ...) it
 *     leaves to the Python loop: it returns that datagram's index, the loop
 *     decides it and calls open_run again for the rest. So the order of
 *     decisions is the Python loop's, and whatever the C code does not know
 *     is decided by the code that specifies it.
 *
 * A peer's state is read from its Python attributes when its first datagram
 * of a run comes, kept here while the run lasts, and written back before
 * control returns to Python (for a deferred datagram, a call into Python, or
 * the end). The Python objects stay the only state: nothing is kept between
 * calls.
 *
 * Threads: like an AesSiv object, each peer's state has one owner thread,
 * the daemon's event loop thread. Nothing here releases the GIL, though the
 * issue that asked for this code wanted it released around the cipher: the
 * packets are at most 64 KiB and a group's cipher work a few microseconds,
 * and the daemon's only other thread writes the state files (daemon.py).
 * Released, the GIL would let that thread take it for up to the
 * interpreter's switch interval (5 ms) in the middle of a batch, for no
 * gain: nothing else would run in parallel with the cipher (_siv.c's
 * GIL_RELEASE_BYTES measures the same trade for a single call).
 *
 * The tests (tests/core/test_fast_path.py) feed the same datagrams to this
 * path and to the Python loop and require identical results.
 */

#include "_siv.h"

#include <stdint.h>
#include <string.h>

#include <openssl/crypto.h>

/* The wire format: vpncrypt/core/wire.py, docs/PROTOCOL.md sections 2-5. */
#define HEADER_LEN 8
#define OVERHEAD (HEADER_LEN + BLOCK)
#define TIMESTAMP_BITS 10
#define TIMESTAMP_MOD 1024
#define TIMESTAMP_MASK (TIMESTAMP_MOD - 1)
#define KIND_DATA 0x21
#define KIND_KEEPALIVE 0x22
#define KIND_DATA_PARTIAL 0x23
#define AD_LEN (HEADER_LEN + 1 + 4 + 8) /* header, direction, server ID, full timestamp */

/* The replay window: vpncrypt/core/replay.py (RFC 6479). */
#define WINDOW 2048
#define HALF (UINT32_C(1) << 31)
#define RING_BYTES 512
#define BLOCK_MASK (UINT32_C(0xFFFFFFFF) >> 3)

/* Inner protocols (IANA): vpncrypt/core/inner.py. */
#define TCP 6
#define UDP 17
#define ICMPV6 58

/* ---- seal ----------------------------------------------------------------- */

const char batch_seal_doc[] =
    "seal_batch(payloads, word0, partial_word0, client_id, counter, suffix, partial_type)\n"
    "    -> (datagrams, counter, payload_bytes)\n\n"
    "Peer.seal's loop: for each payload (a list of bytes-like objects) the next\n"
    "counter (mod 2**32), the 8-byte header (word0, or partial_word0 for a\n"
    "payload whose type is exactly partial_type), and AES-SIV with the header\n"
    "followed by suffix (13 bytes: direction, server ID, full timestamp) as the\n"
    "one AD string. Returns the datagrams, the last counter used and the\n"
    "payloads' total length. Raises TypeError / ValueError for arguments of the\n"
    "wrong type or range, RuntimeError if OpenSSL fails.";

static void
put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void
put_be64(unsigned char *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

/* An int argument in [0, max], else an exception and -1. */
static long long
int_arg(PyObject *obj, long long max, const char *what)
{
    long long v = PyLong_AsLongLong(obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > max) {
        PyErr_Format(PyExc_ValueError, "%s out of range", what);
        return -1;
    }
    return v;
}

PyObject *
batch_seal(AesSivObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "seal_batch() takes 7 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *payloads = args[0], *partial_type = args[6];
    long long word0, partial_word0, client_id, counter;
    if ((word0 = int_arg(args[1], 0xFFFF, "word0")) < 0
        || (partial_word0 = int_arg(args[2], 0xFFFF, "partial_word0")) < 0
        || (client_id = int_arg(args[3], 0xFFFF, "client_id")) < 0
        || (counter = int_arg(args[4], 0xFFFFFFFF, "counter")) < 0)
        return NULL;
    if (!PyList_Check(payloads)) {
        PyErr_SetString(PyExc_TypeError, "payloads must be a list");
        return NULL;
    }
    Py_buffer suffix;
    if (PyObject_GetBuffer(args[5], &suffix, PyBUF_SIMPLE) < 0)
        return NULL;
    if (suffix.len != AD_LEN - HEADER_LEN) {
        PyBuffer_Release(&suffix);
        PyErr_SetString(PyExc_ValueError, "suffix must be 13 bytes");
        return NULL;
    }
    if (self->busy) {
        PyBuffer_Release(&suffix);
        PyErr_SetString(PyExc_RuntimeError, "this AesSiv object is in use by another thread");
        return NULL;
    }
    unsigned char ad[SIV_LANES][AD_LEN];
    slice ad_slice[SIV_LANES];
    for (int j = 0; j < SIV_LANES; j++) {
        memcpy(ad[j] + HEADER_LEN, suffix.buf, AD_LEN - HEADER_LEN);
        ad_slice[j].buf = ad[j];
        ad_slice[j].len = AD_LEN;
    }
    PyBuffer_Release(&suffix);

    Py_ssize_t n = PyList_GET_SIZE(payloads);
    PyObject *datagrams = PyList_New(n);
    if (datagrams == NULL)
        return NULL;
    uint32_t c = (uint32_t)counter;
    long long total = 0;
    /* SIV_LANES payloads at a time: their S2Vs together, then CTR one by one. */
    for (Py_ssize_t first = 0; first < n; first += SIV_LANES) {
        Py_buffer view[SIV_LANES];
        s2v_message m[SIV_LANES];
        int k = 0, ok = 1;
        for (; k < SIV_LANES && first + k < n; k++) {
            PyObject *payload = PyList_GET_ITEM(payloads, first + k);
            if (PyObject_GetBuffer(payload, &view[k], PyBUF_SIMPLE) < 0)
                break;
            c += 1;
            uint32_t w = (uint32_t)((PyObject *)Py_TYPE(payload) == partial_type ? partial_word0 : word0);
            PyObject *out = PyBytes_FromStringAndSize(NULL, OVERHEAD + view[k].len);
            if (out == NULL) {
                PyBuffer_Release(&view[k]);
                break;
            }
            PyList_SET_ITEM(datagrams, first + k, out);
            unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
            o[0] = (unsigned char)(w >> 8);
            o[1] = (unsigned char)w;
            o[2] = (unsigned char)(client_id >> 8);
            o[3] = (unsigned char)client_id;
            put_be32(o + 4, c);
            memcpy(ad[k], o, HEADER_LEN);
            m[k] = (s2v_message){&ad_slice[k], 1, view[k].buf, (size_t)view[k].len, o + HEADER_LEN};
            total += view[k].len;
        }
        int complete = k == SIV_LANES || first + k == n;
        if (complete) {
            ok = siv_s2v_many(self, m, k);
            for (int j = 0; j < k && ok; j++)
                ok = siv_ctr(self, m[j].v, m[j].pt, m[j].pt_len, m[j].v + BLOCK);
        }
        for (int j = 0; j < k; j++)
            PyBuffer_Release(&view[j]);
        if (!complete)
            goto fail;
        if (!ok) {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL's AES failed");
            goto fail;
        }
    }
    return Py_BuildValue("(NkL)", datagrams, (unsigned long)c, total);
fail:
    Py_DECREF(datagrams);
    return NULL;
}

/* ---- open ----------------------------------------------------------------- */

const char batch_open_run_doc[] =
    "open_run(datagrams, start, opened, drops, plan) -> int\n\n"
    "Decide datagrams[start:] (a list of (bytes, endpoint) pairs) as\n"
    "vpncrypt.core.receive.open_datagrams does, appending (peer, packet) to\n"
    "opened and counting drops in drops (a dict of reason -> int), up to the\n"
    "first datagram it leaves to the Python loop; returns that datagram's index\n"
    "(len(datagrams) when none is left). plan is the tuple open_datagrams\n"
    "builds: (now_seconds, time_window, direction, server_id, find_peer, hosts,\n"
    "remembered, longest_match, well_formed, checksum_location, partial_type, follow_source,\n"
    "max_datagram, probe_kind, reasons, answers_time), reasons the drop names\n"
    "(bad_length, old_version, unknown_kind, unknown_client, replayed,\n"
    "inner_malformed, inner_source_not_allowed, outside_time_window),\n"
    "answers_time whether a datagram outside the time window may earn a time\n"
    "answer (open_datagrams' skewed). Raises only what a callback raises, or\n"
    "MemoryError.";

enum {
    PLAN_NOW, PLAN_TIME_WINDOW, PLAN_DIRECTION, PLAN_SERVER_ID, PLAN_FIND_PEER, PLAN_HOSTS, PLAN_REMEMBERED,
    PLAN_LONGEST_MATCH,    PLAN_WELL_FORMED, PLAN_CHECKSUM_LOCATION, PLAN_PARTIAL_TYPE, PLAN_FOLLOW_SOURCE, PLAN_MAX_DATAGRAM,
    PLAN_PROBE_KIND, PLAN_REASONS, PLAN_ANSWERS_TIME, PLAN_SIZE
};

enum {
    DROP_BAD_LENGTH, DROP_OLD_VERSION, DROP_UNKNOWN_KIND, DROP_UNKNOWN_CLIENT, DROP_REPLAYED, DROP_INNER_MALFORMED,
    DROP_INNER_SOURCE_NOT_ALLOWED, DROP_OUTSIDE_TIME_WINDOW, DROP_REASONS
};

/* Attribute names, interned once. */
enum {
    NAME_WINDOW, NAME_FLOOR, NAME_NEWEST_TS, NAME_NEWEST_COUNTER, NAME_RING, NAME_FAILURE_CREDIT, NAME_SAVE_AT,
    NAME_EPOCH_SECONDS, NAME_CONTEXTS, NAME_ENDPOINT, NAME_ROAMS, NAME_RX_PACKETS, NAME_RX_BYTES,
    NAME_TIME_ANSWER_DUE, NAME_TIME_DROPS, NAMES
};
static const char *const name_strings[NAMES] = {
    "window", "floor", "newest_ts", "newest_counter", "ring", "failure_credit", "save_at",
    "epoch_seconds", "contexts", "endpoint", "roams", "rx_packets", "rx_bytes",
    "time_answer_due", "time_drops",
};
static PyObject *names[NAMES];

static int
intern_names(void)
{
    if (names[NAMES - 1] != NULL)
        return 0;
    for (int i = 0; i < NAMES; i++)
        if (names[i] == NULL && (names[i] = PyUnicode_InternFromString(name_strings[i])) == NULL)
            return -1;
    return 0;
}

/* One peer's state while its datagrams follow each other in a run. */
typedef struct {
    long client_id;   /* whose state this is; -1: nobody's */
    PyObject *peer;   /* the Peer, or NULL if find_peer gave None */
    int usable;       /* the common path may decide this peer's datagrams */
    PyObject *window; /* its ReplayWindow */
    PyObject *ring;   /* window.ring, a bytearray of RING_BYTES */
    int64_t floor, newest_ts, save_at, epoch_seconds;
    uint32_t newest_counter;
    int window_moved;
    PyObject *contexts;  /* epoch -> AesSiv */
    AesSivObject *ctx;   /* the context of ctx_epoch, or NULL */
    int64_t ctx_epoch;
    PyObject *endpoint;
    int endpoint_moved;
    double time_answer_due;                /* Unix seconds: no time answer is earned before */
    long long roams, rx_packets, rx_bytes, time_drops; /* to add */
    unsigned char source[16];              /* an inner source address known to be this peer's */
    Py_ssize_t source_len;                 /* 0: none yet */
} peer_run;

static void
run_clear(peer_run *run)
{
    Py_CLEAR(run->peer);
    Py_CLEAR(run->window);
    Py_CLEAR(run->ring);
    Py_CLEAR(run->contexts);
    Py_CLEAR(run->ctx);
    Py_CLEAR(run->endpoint);
    run->client_id = -1;
    run->usable = 0;
}

/* An int attribute as int64; *overflow is set (and 0 returned) past int64. */
static int
get_int64(PyObject *obj, int name, int64_t *out, int *overflow)
{
    PyObject *value = PyObject_GetAttr(obj, names[name]);
    if (value == NULL)
        return -1;
    long long v = PyLong_AsLongLongAndOverflow(value, overflow);
    Py_DECREF(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

/* attr += add, for a peer's int counters. */
static int
add_to_attr(PyObject *obj, int name, long long add)
{
    if (add == 0)
        return 0;
    PyObject *value = PyObject_GetAttr(obj, names[name]);
    if (value == NULL)
        return -1;
    PyObject *delta = PyLong_FromLongLong(add);
    PyObject *sum = delta ? PyNumber_Add(value, delta) : NULL;
    Py_DECREF(value);
    Py_XDECREF(delta);
    if (sum == NULL)
        return -1;
    int failed = PyObject_SetAttr(obj, names[name], sum);
    Py_DECREF(sum);
    return failed;
}

static int
set_int_attr(PyObject *obj, int name, long long v)
{
    PyObject *value = PyLong_FromLongLong(v);
    if (value == NULL)
        return -1;
    int failed = PyObject_SetAttr(obj, names[name], value);
    Py_DECREF(value);
    return failed;
}

/* Write back what the run changed, then forget the peer. */
static int
run_flush(peer_run *run)
{
    int failed = 0;
    if (run->peer != NULL) {
        if (run->window_moved)
            failed = set_int_attr(run->window, NAME_NEWEST_COUNTER, run->newest_counter) < 0
                     || set_int_attr(run->window, NAME_NEWEST_TS, run->newest_ts) < 0;
        if (!failed && run->endpoint_moved)
            failed = PyObject_SetAttr(run->peer, names[NAME_ENDPOINT], run->endpoint) < 0;
        if (!failed)
            failed = add_to_attr(run->peer, NAME_ROAMS, run->roams) < 0
                     || add_to_attr(run->peer, NAME_RX_PACKETS, run->rx_packets) < 0
                     || add_to_attr(run->peer, NAME_RX_BYTES, run->rx_bytes) < 0
                     || add_to_attr(run->peer, NAME_TIME_DROPS, run->time_drops) < 0;
    }
    run->window_moved = run->endpoint_moved = 0;
    run->roams = run->rx_packets = run->rx_bytes = run->time_drops = 0;
    run->source_len = 0;
    run_clear(run);
    return failed ? -1 : 0;
}

/* Take up client_id's peer: find_peer(client_id), and its state. Returns -1
 * on an error; run->peer is NULL for an unknown client, run->usable 0 for a
 * peer whose datagrams the Python loop must decide. */
static int
run_load(peer_run *run, PyObject *find_peer, long client_id)
{
    int overflow;
    int64_t newest_counter;
    PyObject *id = PyLong_FromLong(client_id);
    if (id == NULL)
        return -1;
    PyObject *peer = PyObject_CallOneArg(find_peer, id);
    Py_DECREF(id);
    if (peer == NULL)
        return -1;
    run->client_id = client_id;
    if (peer == Py_None) {
        Py_DECREF(peer);
        return 0;
    }
    run->peer = peer;
    PyObject *due = PyObject_GetAttr(peer, names[NAME_TIME_ANSWER_DUE]);
    if (due == NULL)
        return -1;
    run->time_answer_due = PyFloat_AsDouble(due);
    Py_DECREF(due);
    if (run->time_answer_due == -1.0 && PyErr_Occurred())
        return -1;
    if ((run->window = PyObject_GetAttr(peer, names[NAME_WINDOW])) == NULL)
        return -1;
    /* An empty window (newest_counter -1) takes its first datagram as a jump: Python's. */
    if (get_int64(run->window, NAME_NEWEST_COUNTER, &newest_counter, &overflow) < 0)
        return -1;
    if (overflow || newest_counter < 0 || newest_counter > 0xFFFFFFFF)
        return 0;
    run->newest_counter = (uint32_t)newest_counter;
    if (get_int64(run->window, NAME_NEWEST_TS, &run->newest_ts, &overflow) < 0)
        return -1;
    if (overflow)
        return 0;
    if (get_int64(run->window, NAME_FLOOR, &run->floor, &overflow) < 0)
        return -1;
    if (overflow)
        return 0;
    if ((run->ring = PyObject_GetAttr(run->window, names[NAME_RING])) == NULL)
        return -1;
    if (!PyByteArray_CheckExact(run->ring) || PyByteArray_GET_SIZE(run->ring) != RING_BYTES)
        return 0;
    PyObject *credit = PyObject_GetAttr(peer, names[NAME_FAILURE_CREDIT]);
    if (credit == NULL)
        return -1;
    double c = PyFloat_AsDouble(credit);
    Py_DECREF(credit);
    if (c == -1.0 && PyErr_Occurred())
        return -1;
    if (!(c >= 1.0))
        return 0; /* refilled or refused: Python's */
    if (get_int64(peer, NAME_SAVE_AT, &run->save_at, &overflow) < 0)
        return -1;
    if (overflow)
        run->save_at = overflow > 0 ? INT64_MAX : INT64_MIN;
    if (get_int64(peer, NAME_EPOCH_SECONDS, &run->epoch_seconds, &overflow) < 0)
        return -1;
    if (overflow || run->epoch_seconds <= 0)
        return 0;
    if ((run->contexts = PyObject_GetAttr(peer, names[NAME_CONTEXTS])) == NULL)
        return -1;
    if (!PyDict_Check(run->contexts))
        return 0;
    if ((run->endpoint = PyObject_GetAttr(peer, names[NAME_ENDPOINT])) == NULL)
        return -1;
    run->usable = 1;
    return 0;
}

/* well_formed's fast way through (vpncrypt/core/inner.py), for IPv4 without
 * options carrying TCP or UDP unfragmented, or anything else, and IPv6
 * without extension headers carrying TCP, UDP or ICMPv6, with no padding:
 * WELL_FORMED_TRANSPORT for TCP or UDP (whose checksum's place is then
 * known), WELL_FORMED for the rest, 0 malformed, -1 for well_formed itself
 * to decide. */
#define WELL_FORMED 1
#define WELL_FORMED_TRANSPORT 2
static int
inner_fast(const unsigned char *p, Py_ssize_t size)
{
    if (size >= 28) {
        Py_ssize_t end = p[2] << 8 | p[3];
        unsigned fragment = (unsigned)(p[6] << 8 | p[7]);
        unsigned protocol = p[9];
        if (p[0] == 0x45 && end == size) {
            if (protocol != TCP && protocol != UDP)
                return WELL_FORMED; /* ICMP and the rest: no transport header is checked */
            if (!(fragment & 0x3FFF)) {
                if (protocol == UDP) {
                    Py_ssize_t length = p[24] << 8 | p[25];
                    return 8 <= length && length <= size - 20 ? WELL_FORMED_TRANSPORT : 0;
                }
                Py_ssize_t offset = (p[32] >> 4) * 4;
                return size >= 40 && 20 <= offset && offset <= size - 20 ? WELL_FORMED_TRANSPORT : 0;
            }
        } else if (p[0] >> 4 == 6 && size >= 48 && (p[4] << 8 | p[5]) == size - 40) {
            protocol = p[6];
            if (protocol == UDP) {
                Py_ssize_t length = p[44] << 8 | p[45];
                return 8 <= length && length <= size - 40 ? WELL_FORMED_TRANSPORT : 0;
            }
            if (protocol == TCP) {
                Py_ssize_t offset = (p[52] >> 4) * 4;
                return size >= 60 && 20 <= offset && offset <= size - 40 ? WELL_FORMED_TRANSPORT : 0;
            }
            if (protocol == ICMPV6)
                return WELL_FORMED;
        }
        return -1;
    }
    return size < 20 ? 0 : -1;
}

typedef struct {
    int follow_source;
    PyObject *hosts, *remembered, *longest_match, *well_formed, *checksum_location, *partial_type, *opened;
    long long *counts;
} open_env;

/* Whether the inner packet's source (an IPv4 or IPv6 address) routes to the
 * run's peer: hosts.get(source), else longest_match(source), must be it;
 * longest_match's answer is looked up in its table's ``remembered`` first
 * (PrefixTable in vpncrypt/core/inner.py). 1 yes, 0 no, -1 error. */
static int
source_allowed(peer_run *run, PyObject *packet, const open_env *env)
{
    PyObject *hosts = env->hosts;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(packet);
    const unsigned char *source = p[0] >> 4 == 4 ? p + 12 : p + 8;
    Py_ssize_t len = p[0] >> 4 == 4 ? 4 : 16;
    if (run->source_len == len && memcmp(run->source, source, (size_t)len) == 0)
        return 1; /* the table does not change within a call */
    PyObject *key = PyBytes_FromStringAndSize((const char *)source, len);
    if (key == NULL)
        return -1;
    PyObject *owner = PyDict_GetItemWithError(hosts, key); /* borrowed */
    if (owner == NULL && PyErr_Occurred()) {
        Py_DECREF(key);
        return -1;
    }
    int allowed;
    if (owner == NULL || owner == Py_None) {
        owner = PyDict_GetItemWithError(env->remembered, key); /* borrowed */
        if (owner != NULL) {
            Py_DECREF(key);
            allowed = owner == run->peer;
            goto decided;
        }
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
        owner = PyObject_CallOneArg(env->longest_match, key);
        Py_DECREF(key);
        if (owner == NULL)
            return -1;
        allowed = owner == run->peer;
        Py_DECREF(owner);
    } else {
        Py_DECREF(key);
        allowed = owner == run->peer;
    }
decided:
    if (allowed) {
        memcpy(run->source, source, (size_t)len);
        run->source_len = len;
    }
    return allowed;
}

/* The verdicts of vpncrypt/core/replay.py that the common path takes. */
#define NEWEST 1
#define REORDERED 2
#define REPLAYED (-1)
#define PYTHONS 0 /* any other: the Python loop decides */

static int
window_verdict(const peer_run *run, int64_t ts, uint32_t counter, uint32_t *ahead)
{
    const unsigned char *ring = (const unsigned char *)PyByteArray_AS_STRING(run->ring);
    *ahead = counter - run->newest_counter;
    if (*ahead > 0 && *ahead < WINDOW && ts >= run->newest_ts)
        return NEWEST;
    if (ts < run->floor)
        return PYTHONS; /* superseded */
    if (*ahead > 0 && *ahead < HALF)
        return PYTHONS; /* superseded, or a jump */
    if (ts > run->newest_ts)
        return PYTHONS; /* a restarted sender */
    if (run->newest_counter - counter >= WINDOW)
        return PYTHONS; /* too old */
    if (ring[(counter >> 3) & (RING_BYTES - 1)] >> (counter & 7) & 1)
        return REPLAYED;
    return REORDERED;
}

static void
window_commit(peer_run *run, int64_t ts, uint32_t counter, int verdict, uint32_t ahead)
{
    unsigned char *ring = (unsigned char *)PyByteArray_AS_STRING(run->ring);
    if (verdict == NEWEST) {
        if ((counter & 7) < ahead) {
            /* counter entered a new ring byte: clear those the window slides onto (RFC 6479) */
            uint32_t newest_block = run->newest_counter >> 3;
            uint32_t skipped = ((counter >> 3) - newest_block) & BLOCK_MASK;
            for (uint32_t k = 1; k <= skipped; k++)
                ring[(newest_block + k) & (RING_BYTES - 1)] = 0;
        }
        run->newest_counter = counter;
        run->newest_ts = ts;
        run->window_moved = 1;
    }
    ring[(counter >> 3) & (RING_BYTES - 1)] |= (unsigned char)(1 << (counter & 7));
}

/* The context of epoch, borrowed from the run: NULL (no exception) if the
 * peer has none made, or not a compiled one. */
static AesSivObject *
run_context(peer_run *run, int64_t epoch, PyTypeObject *aes_siv)
{
    if (run->ctx != NULL && run->ctx_epoch == epoch)
        return run->ctx;
    Py_CLEAR(run->ctx);
    PyObject *key = PyLong_FromLongLong(epoch);
    if (key == NULL)
        return NULL;
    PyObject *ctx = PyDict_GetItemWithError(run->contexts, key);
    Py_DECREF(key);
    if (ctx == NULL || !PyObject_TypeCheck(ctx, aes_siv))
        return NULL;
    Py_INCREF(ctx);
    run->ctx = (AesSivObject *)ctx;
    run->ctx_epoch = epoch;
    return run->ctx;
}

/* What the inner-packet checks and the delivery need, fixed for a call. */

/* Datagrams decided together (at most SIV_LANES to open): consecutive
 * datagrams of one peer, with one epoch's context, each of which the common
 * path takes as it would if every earlier one had authenticated (its replay
 * verdict against the window with theirs committed, so that a duplicate
 * within the group is REPLAYED), and the drops counted between them, whose
 * counting waits for the group's verdict. Their S2Vs run in one engine call
 * (interleaved on AES-NI); then they are committed in order up to the first
 * that does not authenticate, which goes back to the Python loop with
 * everything after it, as if the group had never been taken. */
#define GROUP_MAX (4 * SIV_LANES)

typedef struct {
    Py_ssize_t index;  /* in datagrams */
    PyObject *item;    /* the (datagram, endpoint) pair: a new reference */
    int reason;        /* a drop counted with the group's verdict, or OPEN */
    int verdict;       /* NEWEST or REORDERED */
    uint32_t counter, ahead;
    int64_t ts;
    unsigned kind;
    PyObject *packet;  /* its plaintext, not yet authenticated: a new reference */
    int deciphered;    /* 0: OpenSSL's CTR failed, left to the Python loop as a forgery would be */
    unsigned char v[BLOCK];
    unsigned char ad[AD_LEN];
    slice ad_slice;
} member;

#define OPEN (-1)

typedef struct {
    member m[GROUP_MAX];
    int count, opens;
    AesSivObject *ctx; /* the context of all of them: a new reference */
    /* the window before the group: a cut puts it back and commits again up to the cut */
    uint32_t newest_counter;
    int64_t newest_ts;
    int window_moved;
    unsigned char ring[RING_BYTES];
} group;

/* Take datagram index (d, size bytes) into the group, with its verdict
 * committed to the run's window for the datagrams after it: the CTR half of
 * opening it now, S2V with the group's. Returns -1 on MemoryError. */
static int
group_open(group *g, peer_run *run, PyObject *item, Py_ssize_t index, AesSivObject *ctx, const unsigned char *d,
           Py_ssize_t size, int direction, uint32_t server_id, int64_t ts, uint32_t counter, int verdict,
           uint32_t ahead, unsigned kind)
{
    size_t len = (size_t)(size - OVERHEAD);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (out == NULL)
        return -1;
    if (g->opens == 0) {
        g->newest_counter = run->newest_counter;
        g->newest_ts = run->newest_ts;
        g->window_moved = run->window_moved;
        memcpy(g->ring, PyByteArray_AS_STRING(run->ring), RING_BYTES);
        Py_INCREF(ctx);
        g->ctx = ctx;
    }
    member *m = &g->m[g->count++];
    g->opens++;
    Py_INCREF(item);
    m->index = index;
    m->item = item;
    m->reason = OPEN;
    m->verdict = verdict;
    m->counter = counter;
    m->ahead = ahead;
    m->ts = ts;
    m->kind = kind;
    m->packet = out;
    memcpy(m->ad, d, HEADER_LEN);
    m->ad[HEADER_LEN] = (unsigned char)direction;
    put_be32(m->ad + HEADER_LEN + 1, server_id);
    put_be64(m->ad + HEADER_LEN + 5, (uint64_t)ts);
    m->ad_slice.buf = m->ad;
    m->ad_slice.len = AD_LEN;
    m->deciphered = siv_ctr(ctx, d + HEADER_LEN, d + OVERHEAD, len, (unsigned char *)PyBytes_AS_STRING(out));
    window_commit(run, ts, counter, verdict, ahead);
    return 0;
}

/* Count a drop now, or with the group's verdict if one is open. */
static void
drop(group *g, long long *counts, Py_ssize_t index, int reason)
{
    if (g->opens == 0) {
        counts[reason]++;
        return;
    }
    member *m = &g->m[g->count++];
    m->index = index;
    m->item = NULL;
    m->packet = NULL;
    m->reason = reason;
}

/* The window as it was before the group, then the openings of its first
 * `upto` members committed again. */
static void
group_cut(group *g, peer_run *run, int upto)
{
    run->newest_counter = g->newest_counter;
    run->newest_ts = g->newest_ts;
    run->window_moved = g->window_moved;
    memcpy(PyByteArray_AS_STRING(run->ring), g->ring, RING_BYTES);
    for (int j = 0; j < upto; j++)
        if (g->m[j].reason == OPEN)
            window_commit(run, g->m[j].ts, g->m[j].counter, g->m[j].verdict, g->m[j].ahead);
}

/* Forget the group's members, their plaintexts wiped from `from` on (not
 * authenticated, or forged). */
static void
group_clear(group *g, int from)
{
    for (int j = 0; j < g->count; j++) {
        member *m = &g->m[j];
        if (m->packet != NULL && j >= from)
            OPENSSL_cleanse(PyBytes_AS_STRING(m->packet), (size_t)PyBytes_GET_SIZE(m->packet));
        Py_CLEAR(m->packet);
        Py_CLEAR(m->item);
    }
    g->count = g->opens = 0;
    Py_CLEAR(g->ctx);
}

/* The rest of the common path for an authentic datagram, as open_datagrams
 * does it: the endpoint, then the inner packet's checks, and (peer, packet)
 * appended. Takes m->packet. Returns -1 on an error from a callback. */
static int
deliver(peer_run *run, member *m, const open_env *env)
{
    PyObject *packet = m->packet, *address = PyTuple_GET_ITEM(m->item, 1);
    m->packet = NULL;
    if (env->follow_source && m->verdict != REORDERED && address != run->endpoint) {
        int moved = PyObject_RichCompareBool(address, run->endpoint, Py_NE);
        if (moved < 0) {
            Py_DECREF(packet);
            return -1;
        }
        if (moved) {
            if (run->endpoint != Py_None)
                run->roams++;
            Py_INCREF(address);
            Py_SETREF(run->endpoint, address);
            run->endpoint_moved = 1;
        }
    }
    if (m->kind == KIND_KEEPALIVE) {
        Py_DECREF(packet);
        return 0;
    }
    int fast = inner_fast((const unsigned char *)PyBytes_AS_STRING(packet), PyBytes_GET_SIZE(packet));
    if (fast < 0) {
        PyObject *checked = PyObject_CallOneArg(env->well_formed, packet);
        Py_DECREF(packet);
        if (checked == NULL)
            return -1;
        if (checked != Py_None && !PyBytes_Check(checked)) {
            Py_DECREF(checked);
            PyErr_SetString(PyExc_TypeError, "well_formed must return bytes or None");
            return -1;
        }
        packet = checked;
    } else if (fast == 0) {
        Py_SETREF(packet, Py_NewRef(Py_None));
    }
    if (packet == Py_None) {
        Py_DECREF(packet);
        env->counts[DROP_INNER_MALFORMED]++;
        return 0;
    }
    int allowed = source_allowed(run, packet, env);
    if (allowed <= 0) {
        Py_DECREF(packet);
        if (allowed < 0)
            return -1;
        env->counts[DROP_INNER_SOURCE_NOT_ALLOWED]++;
        return 0;
    }
    Py_ssize_t inner_size = PyBytes_GET_SIZE(packet);
    if (m->kind == KIND_DATA_PARTIAL) {
        /* Past the fast way through with TCP or UDP, a checksum's place is always found. */
        if (fast != WELL_FORMED_TRANSPORT) {
            PyObject *location = PyObject_CallOneArg(env->checksum_location, packet);
            if (location == NULL) {
                Py_DECREF(packet);
                return -1;
            }
            int none = location == Py_None;
            Py_DECREF(location);
            if (none) {
                Py_DECREF(packet);
                env->counts[DROP_INNER_MALFORMED]++;
                return 0;
            }
        }
        Py_SETREF(packet, PyObject_CallOneArg(env->partial_type, packet));
        if (packet == NULL)
            return -1;
    }
    run->rx_packets++;
    run->rx_bytes += inner_size;
    PyObject *pair = PyTuple_Pack(2, run->peer, packet);
    Py_DECREF(packet);
    if (pair == NULL || PyList_Append(env->opened, pair) < 0) {
        Py_XDECREF(pair);
        return -1;
    }
    Py_DECREF(pair);
    return 0;
}

/* Decide the group: the S2Vs of its openings together, then its members in
 * order up to the first forgery (or OpenSSL failure), whose index goes to
 * *stop (else it stays). Returns -1 on an error from a callback (the window
 * then committed up to the member it stopped at, as one at a time would). */
static int
group_finish(group *g, peer_run *run, const open_env *env, Py_ssize_t *stop)
{
    s2v_message msgs[SIV_LANES] = {{0}}; /* k >= 1: g->opens > 0 */
    int k = 0, cut = g->count, failed = 0, j;

    if (g->opens == 0)
        return 0;
    for (j = 0; j < g->count; j++)
        if (g->m[j].reason == OPEN) {
            member *m = &g->m[j];
            msgs[k++] = (s2v_message){&m->ad_slice, 1, (const unsigned char *)PyBytes_AS_STRING(m->packet),
                                      (size_t)PyBytes_GET_SIZE(m->packet), m->v};
        }
    int ok = siv_s2v_many(g->ctx, msgs, k);
    for (j = 0; j < g->count; j++) {
        member *m = &g->m[j];
        if (m->reason != OPEN)
            continue;
        const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(PyTuple_GET_ITEM(m->item, 0));
        if (!ok || !m->deciphered || CRYPTO_memcmp(m->v, d + HEADER_LEN, BLOCK) != 0) {
            cut = j;
            *stop = m->index;
            group_cut(g, run, cut);
            break;
        }
    }
    for (j = 0; j < cut; j++) {
        member *m = &g->m[j];
        if (m->reason != OPEN) {
            env->counts[m->reason]++;
            if (m->reason == DROP_OUTSIDE_TIME_WINDOW)
                run->time_drops++;
        } else if (deliver(run, m, env) < 0) {
            failed = 1;
            if (j + 1 < cut)
                group_cut(g, run, j + 1);
            break;
        }
    }
    group_clear(g, cut);
    return failed ? -1 : 0;
}

PyObject *
batch_open_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "open_run() takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *datagrams = args[0], *opened = args[2], *drops = args[3], *plan = args[4];
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    if (!PyList_Check(datagrams) || !PyList_Check(opened) || !PyDict_Check(drops) || !PyTuple_Check(plan)
        || PyTuple_GET_SIZE(plan) != PLAN_SIZE || !PyTuple_Check(PyTuple_GET_ITEM(plan, PLAN_REASONS))
        || PyTuple_GET_SIZE(PyTuple_GET_ITEM(plan, PLAN_REASONS)) != DROP_REASONS
        || !PyDict_Check(PyTuple_GET_ITEM(plan, PLAN_HOSTS)) || !PyDict_Check(PyTuple_GET_ITEM(plan, PLAN_REMEMBERED))) {
        PyErr_SetString(PyExc_TypeError, "open_run(list, int, list, dict, plan tuple)");
        return NULL;
    }
    if (intern_names() < 0)
        return NULL;
    module_state *state = PyModule_GetState(module);
    long long now = PyLong_AsLongLong(PyTuple_GET_ITEM(plan, PLAN_NOW));
    long long time_window = PyLong_AsLongLong(PyTuple_GET_ITEM(plan, PLAN_TIME_WINDOW));
    long direction = PyLong_AsLong(PyTuple_GET_ITEM(plan, PLAN_DIRECTION));
    unsigned long server_id = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(plan, PLAN_SERVER_ID));
    long long max_datagram = PyLong_AsLongLong(PyTuple_GET_ITEM(plan, PLAN_MAX_DATAGRAM));
    long probe_kind = PyLong_AsLong(PyTuple_GET_ITEM(plan, PLAN_PROBE_KIND));
    int follow_source = PyObject_IsTrue(PyTuple_GET_ITEM(plan, PLAN_FOLLOW_SOURCE));
    int answers_time = PyObject_IsTrue(PyTuple_GET_ITEM(plan, PLAN_ANSWERS_TIME));
    if (PyErr_Occurred() || follow_source < 0 || answers_time < 0)
        return NULL;
    if (server_id > 0xFFFFFFFFUL || direction < 0 || direction > 0xFF) {
        PyErr_SetString(PyExc_ValueError, "open_run: server_id or direction out of range");
        return NULL;
    }
    long long counts[DROP_REASONS] = {0};
    open_env env = {
        .follow_source = follow_source,
        .hosts = PyTuple_GET_ITEM(plan, PLAN_HOSTS),
        .remembered = PyTuple_GET_ITEM(plan, PLAN_REMEMBERED),
        .longest_match = PyTuple_GET_ITEM(plan, PLAN_LONGEST_MATCH),
        .well_formed = PyTuple_GET_ITEM(plan, PLAN_WELL_FORMED),
        .checksum_location = PyTuple_GET_ITEM(plan, PLAN_CHECKSUM_LOCATION),
        .partial_type = PyTuple_GET_ITEM(plan, PLAN_PARTIAL_TYPE),
        .opened = opened,
        .counts = counts,
    };
    PyObject *find_peer = PyTuple_GET_ITEM(plan, PLAN_FIND_PEER);
    PyObject *reasons = PyTuple_GET_ITEM(plan, PLAN_REASONS);
    /* rebuild_timestamp (wire.py): the full timestamp nearest to now */
    int64_t ts_base = now - TIMESTAMP_MOD / 2, ts_min = now - time_window, ts_max = now + time_window;

    peer_run run;
    memset(&run, 0, sizeof run);
    run.client_id = -1;
    group *g = PyMem_Malloc(sizeof(group));
    if (g == NULL)
        return PyErr_NoMemory();
    g->count = g->opens = 0;
    g->ctx = NULL;
    Py_ssize_t n = PyList_GET_SIZE(datagrams), i = start < 0 ? 0 : start;
    int failed = 0;

    /* A `break` leaves datagram i to the Python loop, after the group. */
    for (; i < n; i++) {
        if (g->opens == SIV_LANES || g->count == GROUP_MAX) {
            Py_ssize_t stop = -1;
            if (group_finish(g, &run, &env, &stop) < 0) {
                failed = 1;
                break;
            }
            if (stop >= 0) {
                i = stop;
                goto stopped;
            }
        }
        PyObject *item = PyList_GET_ITEM(datagrams, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
            break;
        PyObject *datagram = PyTuple_GET_ITEM(item, 0);
        if (!PyBytes_CheckExact(datagram))
            break;
        Py_ssize_t size = PyBytes_GET_SIZE(datagram);
        const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(datagram);
        if (size < OVERHEAD || size > max_datagram) {
            drop(g, counts, i, DROP_BAD_LENGTH);
            continue;
        }
        unsigned word0 = (unsigned)(d[0] << 8 | d[1]);
        long client_id = d[2] << 8 | d[3];
        uint32_t counter = (uint32_t)d[4] << 24 | (uint32_t)d[5] << 16 | (uint32_t)d[6] << 8 | d[7];
        unsigned kind = word0 >> TIMESTAMP_BITS;
        if (kind == KIND_KEEPALIVE) {
            if (size != OVERHEAD) {
                drop(g, counts, i, DROP_BAD_LENGTH);
                continue;
            }
        } else if (kind == (unsigned)probe_kind) {
            break;
        } else if (kind != KIND_DATA && kind != KIND_DATA_PARTIAL) {
            drop(g, counts, i, kind == 0x11 || kind == 0x12 || kind == 0x13 ? DROP_OLD_VERSION : DROP_UNKNOWN_KIND);
            continue;
        }
        if (client_id != run.client_id) {
            /* the group is the run's peer's: decided before its state goes back */
            Py_ssize_t stop = -1;
            if (group_finish(g, &run, &env, &stop) < 0) {
                failed = 1;
                break;
            }
            if (stop >= 0) {
                i = stop;
                goto stopped;
            }
            if (run_flush(&run) < 0 || run_load(&run, find_peer, client_id) < 0) {
                failed = 1;
                break;
            }
        }
        if (run.peer == NULL) {
            drop(g, counts, i, DROP_UNKNOWN_CLIENT);
            continue;
        }
        int64_t ts = ts_base + (int64_t)(((uint64_t)word0 - (uint64_t)ts_base) & TIMESTAMP_MASK);
        if (ts < ts_min || ts > ts_max || ts < 0) {
            /* Counted here only where no time answer can be earned (a
             * client; or a peer's next answer not due before the next
             * second, as _may_answer finds for the rest of a flood). */
            if (ts < 0 || (answers_time && (double)(now + 1) > run.time_answer_due))
                break;
            if (g->opens == 0)
                run.time_drops++; /* else when the group is decided */
            drop(g, counts, i, DROP_OUTSIDE_TIME_WINDOW);
            continue;
        }
        if (!run.usable)
            break;
        uint32_t ahead;
        int verdict = window_verdict(&run, ts, counter, &ahead);
        if (verdict == PYTHONS)
            break;
        if (verdict == REPLAYED) {
            drop(g, counts, i, DROP_REPLAYED);
            continue;
        }
        if (ts >= run.save_at)
            break;
        AesSivObject *ctx = run_context(&run, ts / run.epoch_seconds, state->aes_siv);
        if (ctx == NULL) {
            if (PyErr_Occurred())
                failed = 1;
            break;
        }
        if (ctx->busy)
            break;
        if (g->opens > 0 && ctx != g->ctx) {
            /* another epoch's key: the group so far first */
            Py_ssize_t stop = -1;
            Py_INCREF(ctx);
            int finished = group_finish(g, &run, &env, &stop);
            Py_DECREF(ctx); /* run->ctx still holds it */
            if (finished < 0) {
                failed = 1;
                break;
            }
            if (stop >= 0) {
                i = stop;
                goto stopped;
            }
        }
        if (group_open(g, &run, item, i, ctx, d, size, (int)direction, (uint32_t)server_id, ts, counter, verdict,
                       ahead, kind) < 0) {
            failed = 1;
            break;
        }
    }
    if (failed) {
        /* an error: the group's openings are undone, the call raises */
        if (g->opens > 0)
            group_cut(g, &run, 0);
        group_clear(g, 0);
    } else {
        Py_ssize_t stop = -1;
        if (group_finish(g, &run, &env, &stop) < 0)
            failed = 1;
        else if (stop >= 0)
            i = stop;
    }
stopped:
    PyMem_Free(g);

    /* What was counted goes into drops even when an error stops the run. */
    PyObject *error_type, *error_value, *error_traceback;
    PyErr_Fetch(&error_type, &error_value, &error_traceback);
    if (run_flush(&run) < 0)
        failed = 1;
    for (int r = 0; r < DROP_REASONS && !PyErr_Occurred(); r++) {
        if (counts[r] == 0)
            continue;
        PyObject *reason = PyTuple_GET_ITEM(reasons, r);
        PyObject *had = PyDict_GetItemWithError(drops, reason);
        if (had == NULL && PyErr_Occurred())
            break;
        PyObject *delta = PyLong_FromLongLong(counts[r]);
        PyObject *sum = delta == NULL ? NULL : had == NULL ? Py_NewRef(delta) : PyNumber_Add(had, delta);
        Py_XDECREF(delta);
        if (sum == NULL || PyDict_SetItem(drops, reason, sum) < 0)
            failed = 1;
        Py_XDECREF(sum);
    }
    if (error_type != NULL) {
        PyErr_Restore(error_type, error_value, error_traceback);
        return NULL;
    }
    if (failed || PyErr_Occurred())
        return NULL;
    return PyLong_FromSsize_t(i);
}
