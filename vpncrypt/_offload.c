/*
 * vpncrypt._offload: the TUN offload splitters and the write coalescer of
 * vpncrypt/tun/offload.py, compiled.
 *
 * The Python module specifies them and stays the reference and the fallback;
 * this one gives the same results for the same input:
 *
 *   - split(packet, gso_type, gso_size) and split_datagrams(packet, gso_size)
 *     return the same PartialChecksumPacket segments, byte for byte, and []
 *     for the same packets;
 *   - coalesce(packets, merge_datagrams=True) returns plans of the same
 *     shape ([virtio header, IP and TCP/UDP header, payloads ...] for a merged
 *     run, [virtio header, packet] otherwise) whose buffers hold the same bytes;
 *   - write_coalesced(fd, packets, merge_datagrams) is LinuxTun's write loop
 *     (tun/linux.py): it plans as coalesce does and hands each plan to
 *     writev(2) itself, with no Python object per plan, and returns how many
 *     packets the kernel refused, counted as the Python loop counts them.
 *
 * tests/tun/test_offload_compiled.py holds the two to each other with random
 * super-packets and batches, malformed ones included.
 *
 * What comes from the kernel or the tunnel is never trusted: every read of a
 * packet is checked against its length first, and what cannot be cut or
 * merged is refused as the Python does ([] or a plan of its own).
 *
 * Header layouts: RFC 791 (IPv4), RFC 8200 (IPv6 and its extension headers),
 * RFC 9293 (TCP), RFC 768 (UDP); the virtio_net_hdr and its GSO types from
 * linux/virtio_net.h (the virtio specification, 5.1.6).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

/* linux/virtio_net.h, as in offload.py. */
#define VNET_HEADER_LEN 10
#define F_NEEDS_CSUM 1
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_UDP_L4 5
#define GSO_ECN 0x80

/* IANA protocol numbers and RFC 9293's flags. */
#define TCP 6
#define UDP 17
#define TCP_CHECKSUM_OFFSET 16
#define UDP_CHECKSUM_OFFSET 6
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_PSH 0x08
#define TCP_FLAG_ACK 0x10
#define TCP_FLAG_CWR 0x80
#define MERGEABLE_FLAGS (TCP_FLAG_ACK | TCP_FLAG_PSH)

/* IPv6 extension headers (RFC 8200 4.1): hop-by-hop, routing, destination
 * options, and the fragment header, walked as core/inner.py walks them. */
#define IPV6_HOP_BY_HOP 0
#define IPV6_ROUTING 43
#define IPV6_DEST_OPTIONS 60
#define IPV6_FRAGMENT 44
#define MAX_IPV6_EXTENSIONS 8
#define SPLIT_WALK_LIMIT 2048 /* how far the splitters look for the upper layer */

#define MAX_MERGED 65535 /* the IPv4 total length / IPv6 payload length field */
#define MAX_SEGMENTS 64  /* UDP_MAX_SEGMENTS */
#define MAX_HEADER 128   /* IPv6 (40) + TCP with options (60) is the largest merged header */

typedef struct {
    PyTypeObject *partial; /* vpncrypt.core.inner.PartialChecksumPacket */
    PyObject *plain;       /* bytes(10): the virtio header of a packet written as it is */
} module_state;

/* ---- bytes ------------------------------------------------------------------ */

static inline unsigned
be16(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

static inline uint32_t
be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void
put_be16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static inline void
put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static inline void
put_le16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

/* struct virtio_net_hdr (without num_buffers): flags, gso_type, then
 * hdr_len, gso_size, csum_start, csum_offset in the host's byte order
 * (little-endian on every machine vpncrypt runs on, as offload.py packs it). */
static void
vnet_header(unsigned char *p, unsigned flags, unsigned gso_type, unsigned hdr_len, unsigned gso_size,
            unsigned csum_start, unsigned csum_offset)
{
    p[0] = (unsigned char)flags;
    p[1] = (unsigned char)gso_type;
    put_le16(p + 2, hdr_len);
    put_le16(p + 4, gso_size);
    put_le16(p + 6, csum_start);
    put_le16(p + 8, csum_offset);
}

/* ---- checksums (RFC 1071), as offload.py computes them -------------------- */

static uint64_t
fold(uint64_t total)
{
    while (total > 0xFFFF)
        total = (total & 0xFFFF) + (total >> 16);
    return total;
}

static uint64_t
words_sum(const unsigned char *p, Py_ssize_t len)
{
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i + 1 < len; i += 2)
        total += be16(p + i);
    return total;
}

/* offload.pseudo_header_sum: the folded, uncomplemented pseudo-header sum;
 * ``header`` holds at least 20 (IPv4) or 40 (IPv6) bytes. */
static unsigned
pseudo_header_sum(const unsigned char *header, int version, uint64_t length, unsigned protocol)
{
    uint64_t addresses = version == 4 ? words_sum(header + 12, 8) : words_sum(header + 8, 32);
    return (unsigned)fold(addresses + protocol + length);
}

/* offload._ipv4_checksum: two folds and the complement. */
static unsigned
ipv4_checksum(uint64_t partial_sum)
{
    partial_sum = (partial_sum & 0xFFFF) + (partial_sum >> 16);
    return (unsigned)(~((partial_sum & 0xFFFF) + (partial_sum >> 16)) & 0xFFFF);
}

/* ---- IPv6 extension headers (core/inner.py) ------------------------------- */

static inline int
is_extension(unsigned protocol)
{
    return protocol == IPV6_HOP_BY_HOP || protocol == IPV6_ROUTING || protocol == IPV6_DEST_OPTIONS;
}

/* inner.ipv6_upper_layer: 0 with the upper-layer protocol, where its header
 * starts and the fragment offset in bytes; -1 if a header runs past ``size``
 * or there are more than MAX_IPV6_EXTENSIONS. ``fragmented`` is set if a
 * fragment header was passed. */
static int
ipv6_upper_layer(const unsigned char *p, Py_ssize_t size, unsigned *protocol_out, Py_ssize_t *start_out,
                 unsigned *fragment_offset_out, int *fragmented)
{
    if (size < 40)
        return -1;
    unsigned protocol = p[6], fragment_offset = 0;
    Py_ssize_t start = 40;
    *fragmented = 0;
    for (int i = 0; i < MAX_IPV6_EXTENSIONS; i++) {
        if (is_extension(protocol)) {
            if (start + 8 > size)
                return -1;
            protocol = p[start];
            start += ((Py_ssize_t)p[start + 1] + 1) * 8;
        }
        else if (protocol == IPV6_FRAGMENT) {
            if (start + 8 > size)
                return -1;
            fragment_offset = be16(p + start + 2) & 0xFFF8;
            *fragmented = 1;
            protocol = p[start];
            start += 8;
        }
        else {
            if (start > size)
                return -1;
            *protocol_out = protocol;
            *start_out = start;
            *fragment_offset_out = fragment_offset;
            return 0;
        }
    }
    return -1;
}

/* inner._has_fragment_header: whether the chain holds a fragment header with
 * more fragments to follow (a first fragment). Every header is checked
 * against ``size``, though its only caller has walked the chain already. */
static int
has_first_fragment_header(const unsigned char *p, Py_ssize_t size)
{
    unsigned protocol = p[6];
    Py_ssize_t start = 40;
    for (int i = 0; i < MAX_IPV6_EXTENSIONS; i++) {
        if (start + 8 > size)
            return 0;
        if (protocol == IPV6_FRAGMENT)
            return p[start + 3] & 1;
        if (!is_extension(protocol))
            return 0;
        protocol = p[start];
        start += ((Py_ssize_t)p[start + 1] + 1) * 8;
    }
    return 0;
}

/* offload._ipv6_unfragmented: 0 with the upper-layer protocol and where its
 * header starts (at most SPLIT_WALK_LIMIT bytes in, with 8 bytes of it
 * there); -1 for a malformed chain or one with a fragment header. */
static int
ipv6_unfragmented(const unsigned char *p, Py_ssize_t size, unsigned *protocol, Py_ssize_t *start)
{
    Py_ssize_t head = size < SPLIT_WALK_LIMIT ? size : SPLIT_WALK_LIMIT;
    unsigned fragment_offset;
    int fragmented;
    if (ipv6_upper_layer(p, head, protocol, start, &fragment_offset, &fragmented) < 0 || *start + 8 > head
        || fragmented)
        return -1;
    return 0;
}

/* inner.checksum_location: 0 with (start of the TCP/UDP header, offset of
 * its checksum field), -1 for anything else. */
static int
checksum_location(const unsigned char *p, Py_ssize_t size, Py_ssize_t *start_out, unsigned *offset_out)
{
    if (size == 0)
        return -1;
    unsigned version = p[0] >> 4, protocol, offset;
    Py_ssize_t start, end;
    if (version == 4 && size >= 20) {
        start = (p[0] & 0x0F) * 4;
        protocol = p[9];
        if (start < 20 || be16(p + 6) & 0x3FFF) /* MF flag or fragment offset */
            return -1;
        end = be16(p + 2);
    }
    else if (version == 6 && size >= 40) {
        start = 40;
        protocol = p[6];
        if (protocol != TCP && protocol != UDP) {
            unsigned fragment_offset;
            int fragmented;
            if (ipv6_upper_layer(p, size, &protocol, &start, &fragment_offset, &fragmented) < 0
                || fragment_offset || (start > 40 && has_first_fragment_header(p, size)))
                return -1;
        }
        end = 40 + (Py_ssize_t)be16(p + 4);
    }
    else
        return -1;
    if (protocol == TCP)
        offset = TCP_CHECKSUM_OFFSET;
    else if (protocol == UDP)
        offset = UDP_CHECKSUM_OFFSET;
    else
        return -1;
    if (start + offset + 2 > (size < end ? size : end) || end > size)
        return -1;
    *start_out = start;
    *offset_out = offset;
    return 0;
}

/* ---- arguments -------------------------------------------------------------- */

/* An int argument as a long long; one too large for it is clamped to the
 * sign's end of the range, which gives what Python's ints give in every use
 * below (a segment size past any packet, a GSO type that is no known one). */
static int
clamped_int(PyObject *obj, long long *out)
{
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (value == -1 && PyErr_Occurred())
        return -1;
    *out = overflow > 0 ? LLONG_MAX : overflow < 0 ? LLONG_MIN : value;
    return 0;
}

/* A new PartialChecksumPacket of ``size`` bytes, to be filled in: allocated
 * as bytes' own constructor allocates a subclass (bytes_subtype_new), so the
 * segment is copied once, straight into it. */
static PyObject *
new_partial(module_state *state, Py_ssize_t size, unsigned char **data)
{
    PyObject *packet = state->partial->tp_alloc(state->partial, size);
    if (packet == NULL)
        return NULL;
    PyBytesObject *bytes = (PyBytesObject *)packet;
    bytes->ob_sval[size] = '\0';
    /* tp_alloc zeroes the object, and 0 would be taken for its hash: -1 is
     * "not computed yet". The field is deprecated for readers since 3.11,
     * not for a constructor. */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    bytes->ob_shash = -1;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
    *data = (unsigned char *)bytes->ob_sval;
    return packet;
}

/* ---- split ------------------------------------------------------------------ */

/* What split and split_datagrams share once the headers are found: cut
 * ``p[header_len:size]`` into chunks of ``gso_size`` and give each a copy of
 * the header with its lengths, IPv4 ID and checksum, and the partial
 * TCP/UDP checksum; TCP segments also get their sequence number and flags. */
static PyObject *
cut(module_state *state, const unsigned char *p, Py_ssize_t size, int version, Py_ssize_t ip_len,
    Py_ssize_t header_len, unsigned protocol, long long gso_size)
{
    Py_ssize_t total_payload = size - header_len;
    Py_ssize_t transport_len = header_len - ip_len;
    /* The largest segment is the first: its length field must hold it. */
    long long first = (gso_size < total_payload ? gso_size : total_payload) + header_len - (version == 6 ? 40 : 0);
    if (first > MAX_MERGED)
        return PyList_New(0);
    Py_ssize_t count = (Py_ssize_t)(total_payload / gso_size + (total_payload % gso_size != 0));
    PyObject *segments = PyList_New(count);
    if (segments == NULL)
        return NULL;
    unsigned pseudo0 = pseudo_header_sum(p, version, 0, protocol);
    uint64_t ip_sum0 = 0;
    unsigned ip_id0 = 0;
    if (version == 4) { /* the header's words without total length, ID and checksum */
        ip_sum0 = words_sum(p, ip_len) - be16(p + 2) - be16(p + 4) - be16(p + 10);
        ip_id0 = be16(p + 4);
    }
    uint32_t seq0 = 0;
    unsigned flags = 0;
    if (protocol == TCP) {
        seq0 = be32(p + ip_len + 4);
        flags = p[ip_len + 13];
    }
    for (Py_ssize_t index = 0; index < count; index++) {
        Py_ssize_t start = (Py_ssize_t)(index * gso_size);
        Py_ssize_t chunk = total_payload - start < gso_size ? total_payload - start : (Py_ssize_t)gso_size;
        unsigned transport_length = (unsigned)(transport_len + chunk);
        unsigned char *out;
        PyObject *segment = new_partial(state, header_len + chunk, &out);
        if (segment == NULL) {
            Py_DECREF(segments);
            return NULL;
        }
        memcpy(out, p, header_len);
        memcpy(out + header_len, p + header_len + start, chunk);
        if (version == 4) {
            unsigned ip_id = (ip_id0 + (unsigned)index) & 0xFFFF;
            put_be16(out + 2, (unsigned)ip_len + transport_length);
            put_be16(out + 4, ip_id);
            put_be16(out + 10, ipv4_checksum(ip_sum0 + ip_len + transport_length + ip_id));
        }
        else
            put_be16(out + 4, (unsigned)(ip_len - 40) + transport_length);
        unsigned pseudo = pseudo0 + transport_length;
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16); /* pseudo0 is folded: one fold is enough */
        if (protocol == TCP) {
            put_be32(out + ip_len + 4, seq0 + (uint32_t)start);
            unsigned segment_flags;
            if (index == count - 1) /* FIN and PSH on the last only, CWR on the first only */
                segment_flags = count > 1 ? flags & ~TCP_FLAG_CWR : flags;
            else if (index == 0)
                segment_flags = flags & ~(TCP_FLAG_FIN | TCP_FLAG_PSH);
            else
                segment_flags = flags & ~(TCP_FLAG_FIN | TCP_FLAG_PSH | TCP_FLAG_CWR);
            out[ip_len + 13] = (unsigned char)segment_flags;
            put_be16(out + ip_len + TCP_CHECKSUM_OFFSET, pseudo);
        }
        else {
            put_be16(out + ip_len + 4, transport_length);
            put_be16(out + ip_len + UDP_CHECKSUM_OFFSET, pseudo);
        }
        PyList_SET_ITEM(segments, index, segment);
    }
    return segments;
}

static int
get_packet(PyObject *obj, Py_buffer *view)
{
    return PyObject_GetBuffer(obj, view, PyBUF_SIMPLE);
}

static const char split_doc[] =
    "split(packet, gso_type, gso_size) -> list[PartialChecksumPacket]\n\n"
    "offload.split compiled: the MSS-sized segments of a TCP super-packet\n"
    "(GSO_TCPV4 or GSO_TCPV6, with or without GSO_ECN; any other type is taken\n"
    "for IPv6), [] for what it cannot cut. ``packet`` is any bytes-like object.";

static PyObject *
offload_split(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "split() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    long long gso_type, gso_size;
    if (clamped_int(args[1], &gso_type) < 0 || clamped_int(args[2], &gso_size) < 0)
        return NULL;
    Py_buffer view;
    if (get_packet(args[0], &view) < 0)
        return NULL;
    const unsigned char *p = view.buf;
    Py_ssize_t size = view.len, ip_len;
    int version = (gso_type & ~(long long)GSO_ECN) == GSO_TCPV4 ? 4 : 6;
    PyObject *result = NULL;
    if (size <= 40 || p[0] >> 4 != version)
        goto refuse;
    if (version == 4) {
        ip_len = (p[0] & 0x0F) * 4;
        if (ip_len < 20 || p[9] != TCP)
            goto refuse;
    }
    else {
        ip_len = 40;
        unsigned protocol = p[6];
        if (protocol != TCP && (ipv6_unfragmented(p, size, &protocol, &ip_len) < 0 || protocol != TCP))
            goto refuse;
    }
    if (ip_len + 20 > size)
        goto refuse;
    Py_ssize_t tcp_len = (p[ip_len + 12] >> 4) * 4;
    if (gso_size <= 0 || ip_len + tcp_len >= size || tcp_len < 20)
        goto refuse;
    result = cut(PyModule_GetState(module), p, size, version, ip_len, ip_len + tcp_len, TCP, gso_size);
    PyBuffer_Release(&view);
    return result;
refuse:
    PyBuffer_Release(&view);
    return PyList_New(0);
}

static const char split_datagrams_doc[] =
    "split_datagrams(packet, gso_size) -> list[PartialChecksumPacket]\n\n"
    "offload.split_datagrams compiled: the datagrams of a UDP super-packet\n"
    "(GSO_UDP_L4), [] for what it cannot cut.";

static PyObject *
offload_split_datagrams(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "split_datagrams() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    long long gso_size;
    if (clamped_int(args[1], &gso_size) < 0)
        return NULL;
    Py_buffer view;
    if (get_packet(args[0], &view) < 0)
        return NULL;
    const unsigned char *p = view.buf;
    Py_ssize_t size = view.len, ip_len;
    unsigned protocol;
    int version;
    PyObject *result = NULL;
    if (size <= 28)
        goto refuse;
    version = p[0] >> 4;
    if (version == 4) {
        ip_len = (p[0] & 0x0F) * 4;
        protocol = p[9];
        if (ip_len < 20)
            goto refuse;
    }
    else if (version == 6) {
        ip_len = 40;
        protocol = p[6];
        if (protocol != UDP && ipv6_unfragmented(p, size, &protocol, &ip_len) < 0)
            goto refuse;
    }
    else
        goto refuse;
    if (protocol != UDP || gso_size <= 0 || ip_len + 8 >= size)
        goto refuse;
    result = cut(PyModule_GetState(module), p, size, version, ip_len, ip_len + 8, UDP, gso_size);
    PyBuffer_Release(&view);
    return result;
refuse:
    PyBuffer_Release(&view);
    return PyList_New(0);
}

/* ---- coalesce --------------------------------------------------------------- */

enum { NOT_MERGEABLE, TCP4, TCP6, UDP4, UDP6 };

typedef struct {
    const unsigned char *data;
    Py_ssize_t len;
    int kind;            /* what parse_segment made of it */
    uint32_t seq;        /* TCP */
    unsigned flags;      /* TCP; 0 for UDP */
    Py_ssize_t header_len, size; /* size: the payload's */
} segment;

/* offload.parse_segment: the kind of a TCP segment or UDP datagram that may
 * be merged with its neighbours, or NOT_MERGEABLE. */
static int
parse_segment(segment *s)
{
    const unsigned char *p = s->data;
    Py_ssize_t size = s->len, ip_len;
    s->kind = NOT_MERGEABLE;
    if (size < 28)
        return NOT_MERGEABLE;
    unsigned version = p[0] >> 4;
    if (version == 4) {
        if (p[9] == UDP) {
            /* options, a fragment, no payload, or a length that does not add up */
            if (p[0] != 0x45 || p[6] & 0x3F || p[7] || be16(p + 2) != size || be16(p + 24) != size - 20
                || size == 28)
                return NOT_MERGEABLE;
            s->seq = 0, s->flags = 0, s->header_len = 28, s->size = size - 28;
            return s->kind = UDP4;
        }
        if (size < 40 || p[0] != 0x45 || p[9] != TCP || p[6] & 0x3F || p[7] || be16(p + 2) != size)
            return NOT_MERGEABLE;
        ip_len = 20;
    }
    else if (version == 6) {
        if (size < 49)
            return NOT_MERGEABLE;
        if (p[6] == UDP) {
            if (be16(p + 4) + 40 != size || be16(p + 44) != be16(p + 4))
                return NOT_MERGEABLE;
            s->seq = 0, s->flags = 0, s->header_len = 48, s->size = size - 48;
            return s->kind = UDP6;
        }
        /* extension headers, not TCP, or a length that does not add up */
        if (size < 60 || p[6] != TCP || be16(p + 4) + 40 != size)
            return NOT_MERGEABLE;
        ip_len = 40;
    }
    else
        return NOT_MERGEABLE;
    Py_ssize_t header_len = ip_len + (p[ip_len + 12] >> 4) * 4;
    unsigned flags = p[ip_len + 13];
    if (header_len < ip_len + 20 || header_len >= size)
        return NOT_MERGEABLE;
    if (flags & ~MERGEABLE_FLAGS || !(flags & TCP_FLAG_ACK))
        return NOT_MERGEABLE;
    s->seq = be32(p + ip_len + 4), s->flags = flags, s->header_len = header_len, s->size = size - header_len;
    return s->kind = version == 4 ? TCP4 : TCP6;
}

/* Whether two parsed segments have equal flow keys (parse_segment's key):
 * addresses, ports, TOS or traffic class and flow label, DF, TTL or hop
 * limit, and for TCP the acknowledgement number, window and options. */
static int
same_flow(const segment *a, const segment *b)
{
    const unsigned char *p = a->data, *q = b->data;
    if (a->kind != b->kind)
        return 0;
    switch (a->kind) {
    case UDP4:
        return p[1] == q[1] && p[6] == q[6] && p[8] == q[8] && memcmp(p + 12, q + 12, 12) == 0;
    case TCP4:
        return p[1] == q[1] && p[6] == q[6] && p[8] == q[8] && memcmp(p + 12, q + 12, 12) == 0
            && memcmp(p + 28, q + 28, 4) == 0 && memcmp(p + 34, q + 34, 2) == 0 && a->header_len == b->header_len
            && memcmp(p + 40, q + 40, a->header_len - 40) == 0;
    case UDP6:
        return memcmp(p, q, 4) == 0 && p[7] == q[7] && memcmp(p + 8, q + 8, 36) == 0;
    case TCP6:
        return memcmp(p, q, 4) == 0 && p[7] == q[7] && memcmp(p + 8, q + 8, 36) == 0
            && memcmp(p + 48, q + 48, 4) == 0 && memcmp(p + 54, q + 54, 2) == 0 && a->header_len == b->header_len
            && memcmp(p + 60, q + 60, a->header_len - 60) == 0;
    }
    return 0;
}

/* One write: packets[start:start + count]. One packet goes as it is (with
 * NEEDS_CSUM if it is a PartialChecksumPacket); a run of several as one
 * packet of ``total`` bytes with the first one's header. */
typedef struct {
    Py_ssize_t start, count, header_len, total, mss;
    unsigned flags; /* the first segment's TCP flags with the last one's PSH */
} plan;

/* offload.coalesce's loop: the plans for ``segments`` (parsed here), in
 * order; returns how many. */
static Py_ssize_t
make_plans(segment *segments, Py_ssize_t count, int merge_datagrams, plan *plans)
{
    Py_ssize_t made = 0, last_size = 0;
    uint32_t next_seq = 0;
    plan run = {0};
    const segment *first = NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        segment *s = &segments[i];
        int kind = parse_segment(s);
        int datagram = kind == UDP4 || kind == UDP6;
        if (kind == NOT_MERGEABLE || (datagram && !merge_datagrams)) {
            if (run.count)
                plans[made++] = run;
            run.count = 0;
            plans[made++] = (plan){.start = i, .count = 1};
            continue;
        }
        if (run.count && same_flow(first, s) && (datagram || s->seq == next_seq) && last_size == run.mss
            && s->size <= run.mss && !(run.flags & TCP_FLAG_PSH) && run.total + s->size <= MAX_MERGED
            && run.count < MAX_SEGMENTS) {
            run.count++;
            run.flags |= s->flags & TCP_FLAG_PSH;
        }
        else {
            if (run.count)
                plans[made++] = run;
            run = (plan){.start = i, .count = 1, .header_len = s->header_len, .total = s->header_len,
                         .mss = s->size, .flags = s->flags};
            first = s;
        }
        run.total += s->size;
        last_size = s->size;
        next_seq = s->seq + (uint32_t)s->size;
    }
    if (run.count)
        plans[made++] = run;
    return made;
}

/* offload.merged_plan's headers: the virtio header and the first segment's
 * headers for a packet of ``run->total`` bytes. */
static void
merged_headers(const plan *run, const unsigned char *first, unsigned char *vnet, unsigned char *header)
{
    Py_ssize_t header_len = run->header_len, ip_len;
    unsigned total = (unsigned)run->total, protocol, gso_type, checksum_offset;
    int version;
    memcpy(header, first, header_len);
    if (header[0] >> 4 == 4) {
        ip_len = 20, version = 4, protocol = header[9];
        put_be16(header + 2, total);
        put_be16(header + 10, (unsigned)(~fold(words_sum(header, 20) - be16(header + 10)) & 0xFFFF));
    }
    else {
        ip_len = 40, version = 6, protocol = header[6];
        put_be16(header + 4, total - 40);
    }
    if (protocol == UDP) {
        gso_type = GSO_UDP_L4, checksum_offset = UDP_CHECKSUM_OFFSET;
        put_be16(header + ip_len + 4, total - (unsigned)ip_len);
    }
    else {
        gso_type = version == 4 ? GSO_TCPV4 : GSO_TCPV6, checksum_offset = TCP_CHECKSUM_OFFSET;
        header[ip_len + 13] = (unsigned char)run->flags;
    }
    put_be16(header + ip_len + checksum_offset, pseudo_header_sum(header, version, total - ip_len, protocol));
    vnet_header(vnet, F_NEEDS_CSUM, gso_type, (unsigned)header_len, (unsigned)run->mss, (unsigned)ip_len,
                checksum_offset);
}

/* offload.single_plan's virtio header: NEEDS_CSUM where the packet is a
 * PartialChecksumPacket with its checksum where inner.checksum_location finds
 * it, else none (PLAIN). Returns whether it is PLAIN. */
static int
single_header(module_state *state, PyObject *packet, const segment *s, unsigned char *vnet)
{
    Py_ssize_t start;
    unsigned offset;
    if (Py_IS_TYPE(packet, state->partial) && checksum_location(s->data, s->len, &start, &offset) == 0) {
        vnet_header(vnet, F_NEEDS_CSUM, 0, 0, 0, (unsigned)start, offset);
        return 0;
    }
    memset(vnet, 0, VNET_HEADER_LEN);
    return 1;
}

/* The packets of a batch with their buffers held, parsed and planned. */
typedef struct {
    PyObject *sequence; /* PySequence_Fast of the argument */
    Py_ssize_t count, held, plan_count;
    Py_buffer *views;
    segment *segments;
    plan *plans;
} batch;

static void
batch_release(batch *b)
{
    for (Py_ssize_t i = 0; i < b->held; i++)
        PyBuffer_Release(&b->views[i]);
    PyMem_Free(b->views);
    PyMem_Free(b->segments);
    PyMem_Free(b->plans);
    Py_XDECREF(b->sequence);
}

static int
batch_plan(batch *b, PyObject *packets, int merge_datagrams)
{
    memset(b, 0, sizeof(*b));
    b->sequence = PySequence_Fast(packets, "packets must be a sequence");
    if (b->sequence == NULL)
        return -1;
    b->count = PySequence_Fast_GET_SIZE(b->sequence);
    Py_ssize_t allocated = b->count ? b->count : 1;
    b->views = PyMem_New(Py_buffer, allocated);
    b->segments = PyMem_New(segment, allocated);
    b->plans = PyMem_New(plan, allocated);
    if (b->views == NULL || b->segments == NULL || b->plans == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(b->sequence);
    for (Py_ssize_t i = 0; i < b->count; i++) {
        if (get_packet(items[i], &b->views[i]) < 0)
            return -1;
        b->held++;
        b->segments[i].data = b->views[i].buf;
        b->segments[i].len = b->views[i].len;
    }
    b->plan_count = make_plans(b->segments, b->count, merge_datagrams, b->plans);
    return 0;
}

static const char coalesce_doc[] =
    "coalesce(packets, merge_datagrams=True) -> list[list]\n\n"
    "offload.coalesce compiled: write plans for ``packets`` (bytes-like\n"
    "objects) in their order. A merged run's plan is [virtio header (bytes),\n"
    "headers (bytearray), a memoryview of each packet's payload]; any other is\n"
    "[virtio header, the packet].";

static PyObject *
offload_coalesce(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"packets", "merge_datagrams", NULL};
    PyObject *packets;
    int merge_datagrams = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|p:coalesce", keywords, &packets, &merge_datagrams))
        return NULL;
    module_state *state = PyModule_GetState(module);
    batch b;
    PyObject *result = NULL;
    if (batch_plan(&b, packets, merge_datagrams) < 0)
        goto done;
    PyObject **items = PySequence_Fast_ITEMS(b.sequence);
    if ((result = PyList_New(b.plan_count)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < b.plan_count; i++) {
        const plan *run = &b.plans[i];
        unsigned char vnet[VNET_HEADER_LEN], header[MAX_HEADER];
        PyObject *entry = PyList_New(run->count > 1 ? 2 + run->count : 2), *part;
        if (entry == NULL)
            goto fail;
        PyList_SET_ITEM(result, i, entry);
        if (run->count == 1) {
            PyObject *packet = items[run->start];
            if (single_header(state, packet, &b.segments[run->start], vnet)) {
                part = Py_NewRef(state->plain);
            }
            else if ((part = PyBytes_FromStringAndSize((char *)vnet, VNET_HEADER_LEN)) == NULL)
                goto fail;
            PyList_SET_ITEM(entry, 0, part);
            PyList_SET_ITEM(entry, 1, Py_NewRef(packet));
            continue;
        }
        merged_headers(run, b.segments[run->start].data, vnet, header);
        if ((part = PyBytes_FromStringAndSize((char *)vnet, VNET_HEADER_LEN)) == NULL)
            goto fail;
        PyList_SET_ITEM(entry, 0, part);
        if ((part = PyByteArray_FromStringAndSize((char *)header, run->header_len)) == NULL)
            goto fail;
        PyList_SET_ITEM(entry, 1, part);
        for (Py_ssize_t k = 0; k < run->count; k++) {
            const segment *s = &b.segments[run->start + k];
            PyObject *whole = PyMemoryView_FromObject(items[run->start + k]);
            if (whole == NULL)
                goto fail;
            part = PySequence_GetSlice(whole, run->header_len, s->len);
            Py_DECREF(whole);
            if (part == NULL)
                goto fail;
            PyList_SET_ITEM(entry, 2 + k, part);
        }
    }
    goto done;
fail:
    Py_CLEAR(result);
done:
    batch_release(&b);
    return result;
}

/* ---- write_coalesced -------------------------------------------------------- */

static const char write_coalesced_doc[] =
    "write_coalesced(fd, packets, merge_datagrams) -> int\n\n"
    "LinuxTun's offload write: coalesce(packets, merge_datagrams), each plan\n"
    "handed to writev(2) on ``fd`` in order, with the GIL released around the\n"
    "writes. Returns how many packets were refused: a plan whose writev fails\n"
    "(any error, EAGAIN included) counts every packet merged into it, one for a\n"
    "single packet; a write cut short by a signal is retried after the\n"
    "signal's handler, whose exception (if any) is raised, as os.writev does.\n"
    "Raises TypeError for a packet that is not bytes-like.";

static PyObject *
offload_write_coalesced(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "write_coalesced() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0)
        return NULL;
    int merge_datagrams = PyObject_IsTrue(args[2]);
    if (merge_datagrams < 0)
        return NULL;
    module_state *state = PyModule_GetState(module);
    batch b;
    PyObject *result = NULL;
    unsigned char (*headers)[VNET_HEADER_LEN + MAX_HEADER] = NULL;
    if (batch_plan(&b, args[1], merge_datagrams) < 0)
        goto done;
    /* Every plan's headers first, so that the writes need no Python. */
    if (b.plan_count && (headers = PyMem_Malloc(b.plan_count * sizeof(*headers))) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject **items = PySequence_Fast_ITEMS(b.sequence);
    for (Py_ssize_t i = 0; i < b.plan_count; i++) {
        const plan *run = &b.plans[i];
        if (run->count == 1)
            single_header(state, items[run->start], &b.segments[run->start], headers[i]);
        else
            merged_headers(run, b.segments[run->start].data, headers[i], headers[i] + VNET_HEADER_LEN);
    }
    Py_ssize_t refused = 0, next = 0;
    while (next < b.plan_count) {
        int interrupted = 0;
        Py_BEGIN_ALLOW_THREADS
        for (; next < b.plan_count; next++) {
            const plan *run = &b.plans[next];
            struct iovec iov[2 + MAX_SEGMENTS];
            int parts;
            iov[0].iov_base = headers[next];
            iov[0].iov_len = VNET_HEADER_LEN;
            if (run->count == 1) {
                iov[1].iov_base = (void *)b.segments[run->start].data;
                iov[1].iov_len = b.segments[run->start].len;
                parts = 2;
            }
            else {
                iov[1].iov_base = headers[next] + VNET_HEADER_LEN;
                iov[1].iov_len = run->header_len;
                for (Py_ssize_t k = 0; k < run->count; k++) {
                    const segment *s = &b.segments[run->start + k];
                    iov[2 + k].iov_base = (void *)(s->data + run->header_len);
                    iov[2 + k].iov_len = s->len - run->header_len;
                }
                parts = 2 + (int)run->count;
            }
            if (writev(fd, iov, parts) < 0) {
                if (errno == EINTR) {
                    interrupted = 1;
                    break; /* retried after the signal handlers ran */
                }
                refused += run->count; /* a single packet's count is 1 */
            }
        }
        Py_END_ALLOW_THREADS
        if (interrupted && PyErr_CheckSignals() < 0)
            goto done;
    }
    result = PyLong_FromSsize_t(refused);
done:
    PyMem_Free(headers);
    batch_release(&b);
    return result;
}

/* ---- the module ------------------------------------------------------------- */

static int
module_exec(PyObject *module)
{
    module_state *state = PyModule_GetState(module);
    PyObject *inner = PyImport_ImportModule("vpncrypt.core.inner");
    if (inner == NULL)
        return -1;
    PyObject *partial = PyObject_GetAttrString(inner, "PartialChecksumPacket");
    Py_DECREF(inner);
    if (partial == NULL)
        return -1;
    /* new_partial allocates it as bytes' constructor does: it must be a
     * subclass of bytes that adds nothing to the object (__slots__ = ()). */
    if (!PyType_Check(partial) || !PyType_IsSubtype((PyTypeObject *)partial, &PyBytes_Type)
        || ((PyTypeObject *)partial)->tp_basicsize != PyBytes_Type.tp_basicsize
        || ((PyTypeObject *)partial)->tp_itemsize != PyBytes_Type.tp_itemsize) {
        Py_DECREF(partial);
        PyErr_SetString(PyExc_ImportError, "PartialChecksumPacket is not a plain subclass of bytes");
        return -1;
    }
    state->partial = (PyTypeObject *)partial;
    if ((state->plain = PyBytes_FromStringAndSize(NULL, VNET_HEADER_LEN)) == NULL)
        return -1;
    memset(PyBytes_AS_STRING(state->plain), 0, VNET_HEADER_LEN);
    return 0;
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *state = PyModule_GetState(module);
    Py_VISIT(state->partial);
    Py_VISIT(state->plain);
    return 0;
}

static int
module_clear(PyObject *module)
{
    module_state *state = PyModule_GetState(module);
    Py_CLEAR(state->partial);
    Py_CLEAR(state->plain);
    return 0;
}

static PyMethodDef module_methods[] = {
    {"split", (PyCFunction)(void (*)(void))offload_split, METH_FASTCALL, split_doc},
    {"split_datagrams", (PyCFunction)(void (*)(void))offload_split_datagrams, METH_FASTCALL, split_datagrams_doc},
    {"coalesce", (PyCFunction)(void (*)(void))offload_coalesce, METH_VARARGS | METH_KEYWORDS, coalesce_doc},
    {"write_coalesced", (PyCFunction)(void (*)(void))offload_write_coalesced, METH_FASTCALL, write_coalesced_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "vpncrypt._offload",
    .m_doc = "TUN segmentation offload (split) and write coalescing, compiled: vpncrypt/tun/offload.py's reference.",
    .m_size = sizeof(module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
};

PyMODINIT_FUNC
PyInit__offload(void)
{
    return PyModuleDef_Init(&module_def);
}
