"""The vpncrypt wire format: an 8-byte cleartext header, the 16-byte SIV, the ciphertext.

Sans-I/O: everything here is a pure function of its arguments; time comes in as
``now`` (seconds since the Unix epoch, float). ``docs/PROTOCOL.md`` is the
normative description; this module is the reference implementation of it.

Header (big-endian)::

    0                   1                   2                   3
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
   +-----------+-------------------+-------------------------------+
   |   kind    |  timestamp mod 1024 |          client ID          |
   +-----------+-------------------+-------------------------------+
   |                            counter                            |
   +---------------------------------------------------------------+
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from cryptography.exceptions import InvalidTag

from . import siv

HEADER_LEN = 8
TAG_LEN = 16
OVERHEAD = HEADER_LEN + TAG_LEN
MAX_PAYLOAD = 65535
MAX_DATAGRAM = OVERHEAD + MAX_PAYLOAD
KEY_LEN = 64  # AES-256-SIV: two 256-bit halves (MAC key, CTR key)

# Kind: 2 bits of version, 4 bits of type. Version 2 defines six types.
VERSION = 2
TYPE_DATA = 1
TYPE_KEEPALIVE = 2
TYPE_DATA_PARTIAL = 3  # data whose TCP/UDP checksum is left to the receiver to finish
TYPE_TIME_ANSWER = 4  # server to client: the server's time, for a client whose clock is off
TYPE_PROBE = 5  # client to server: a padded path MTU probe (docs/PROTOCOL.md section 8)
TYPE_PROBE_ACK = 6  # server to client: the acknowledgement of a probe, padded to the same size
KIND_DATA = (VERSION << 4) | TYPE_DATA  # 0x21
KIND_KEEPALIVE = (VERSION << 4) | TYPE_KEEPALIVE  # 0x22
KIND_DATA_PARTIAL = (VERSION << 4) | TYPE_DATA_PARTIAL  # 0x23
KIND_TIME_ANSWER = (VERSION << 4) | TYPE_TIME_ANSWER  # 0x24
KIND_PROBE = (VERSION << 4) | TYPE_PROBE  # 0x25
KIND_PROBE_ACK = (VERSION << 4) | TYPE_PROBE_ACK  # 0x26
# What open_datagram takes in both directions; a server also takes probes, a client their acknowledgements.
KINDS = frozenset({KIND_DATA, KIND_KEEPALIVE, KIND_DATA_PARTIAL})
VERSION_1_KINDS = frozenset({0x11, 0x12, 0x13})  # dropped as old_version: the peer must be upgraded
TIME_ANSWER_PAYLOAD = 8  # the server's time in milliseconds since the Unix epoch
PROBE = struct.Struct("!HH")  # a probe's probed datagram size, and the size the client has confirmed
PROBE_ACK = struct.Struct("!H")  # an acknowledgement's echo of the probed size
PROBE_MIN = OVERHEAD + PROBE.size  # the shortest probe datagram, 28 bytes
PROBE_ACK_MIN = OVERHEAD + PROBE_ACK.size  # the shortest acknowledgement, 26 bytes

TIMESTAMP_BITS = 10
TIMESTAMP_MOD = 1 << TIMESTAMP_BITS
TIMESTAMP_MASK = TIMESTAMP_MOD - 1
# The receiver rebuilds the full timestamp within [now - 512, now + 511], so a
# window wider than 511 s could not tell two candidate timestamps apart.
MAX_TIME_WINDOW = TIMESTAMP_MOD // 2 - 1
DEFAULT_TIME_WINDOW = 128

COUNTER_MOD = 1 << 32
COUNTER_MASK = COUNTER_MOD - 1
MAX_CLIENT_ID = 0xFFFF

# Direction byte of the associated data: a datagram sealed for one direction
# never authenticates in the other, so a reflected datagram is rejected.
TO_SERVER = 0x01
TO_CLIENT = 0x02

HEADER = struct.Struct("!HHI")
AD_SUFFIX = struct.Struct("!BIQ")  # direction, server ID, full timestamp


class Header(NamedTuple):
    """The cleartext header's fields: ``timestamp_low`` is the timestamp mod 1024."""

    kind: int
    timestamp_low: int
    client_id: int
    counter: int


def encode_header(kind: int, timestamp: int, client_id: int, counter: int) -> bytes:
    """The 8 cleartext bytes; ``timestamp`` is truncated to its low 10 bits."""
    return HEADER.pack((kind << TIMESTAMP_BITS) | (timestamp & TIMESTAMP_MASK), client_id, counter)


def decode_header(datagram: bytes) -> Header:
    """Split the cleartext header; raises ValueError if the datagram is too short."""
    if len(datagram) < HEADER_LEN:
        raise ValueError("datagram shorter than the 8-byte header")
    word0, client_id, counter = HEADER.unpack_from(datagram)
    return Header(word0 >> TIMESTAMP_BITS, word0 & TIMESTAMP_MASK, client_id, counter)


def ad_suffix(direction: int, server_id: int, timestamp: int) -> bytes:
    """The part of the associated data that does not travel in the header."""
    return AD_SUFFIX.pack(direction, server_id, timestamp)


def associated_data(header: bytes, direction: int, server_id: int, timestamp: int) -> bytes:
    """The one AD string: header || direction || server ID || full timestamp (21 bytes)."""
    return header + ad_suffix(direction, server_id, timestamp)


def rebuild_timestamp(timestamp_low: int, now_seconds: int) -> int:
    """The full timestamp congruent to ``timestamp_low`` nearest to ``now_seconds``.

    The result lies in ``[now_seconds - 512, now_seconds + 511]``.
    """
    low = now_seconds - TIMESTAMP_MOD // 2
    return low + ((timestamp_low - low) & TIMESTAMP_MASK)


class CipherUnusable(Exception):
    """The installed AES-SIV cannot do what the protocol needs; the message says what to install."""


def check_cipher(aead_class=None) -> None:
    """Seal and open an empty payload once, as every keepalive does, with
    ``aead_class`` (default: the class in use, ``siv.AESSIV``): cryptography
    45 and older refuse it ("data must not be zero length"), which would only
    show when the first keepalive is sent. Raises CipherUnusable with one line
    naming the version."""
    if aead_class is None:
        aead_class = siv.AESSIV
    try:
        aead = aead_class(bytes(KEY_LEN))
        if aead.decrypt(aead.encrypt(b"", [b"vpncrypt"]), [b"vpncrypt"]) != b"":
            raise ValueError("an empty payload did not come back empty")
    except Exception as error:  # whatever the library raises, the answer is the same
        if aead_class is siv.CompiledAESSIV:
            raise CipherUnusable(f"the compiled AES-SIV ({siv.OPENSSL_VERSION}) cannot seal an empty payload "
                                 f"({error}); set VPNCRYPT_PURE_PYTHON=1 to use cryptography's") from None
        import cryptography

        raise CipherUnusable(
            f"cryptography {cryptography.__version__} cannot seal an empty payload ({error}); "
            "vpncrypt needs cryptography 46 or newer") from None


def seal_time_answer(aead, client_id: int, counter: int, timestamp: int, server_id: int, server_ms: int) -> bytes:
    """Reference time answer: it echoes the client's datagram (its counter and
    timestamp, so it fits that one datagram only) and carries the server's
    clock in milliseconds. ``aead`` holds the key of the echoed timestamp's epoch."""
    return seal_datagram(aead, KIND_TIME_ANSWER, client_id, counter, timestamp, TO_CLIENT, server_id,
                         server_ms.to_bytes(TIME_ANSWER_PAYLOAD, "big"))


def probe_payload(size: int, confirmed: int) -> bytes:
    """The plaintext of a probe whose datagram is ``size`` bytes (24 of them
    header and SIV), telling the server the datagram size ``confirmed`` to get
    through both ways so far; zero padding after the 4 bytes of fields.
    Raises ValueError for a ``size`` below 28 (no room for the fields)."""
    if size < PROBE_MIN:
        raise ValueError(f"a probe datagram has at least {PROBE_MIN} bytes")
    return PROBE.pack(size, confirmed) + bytes(size - OVERHEAD - PROBE.size)


def probe_ack_payload(size: int) -> bytes:
    """The plaintext of the acknowledgement of a ``size``-byte probe: the size
    echoed, padded with zeros so that the datagram is ``size`` bytes too."""
    return PROBE_ACK.pack(size) + bytes(size - OVERHEAD - PROBE_ACK.size)


class Rejected(Exception):
    """A datagram that ``open_datagram`` refuses; ``reason`` is a drops.* name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def seal_datagram(
    aead, kind: int, client_id: int, counter: int, timestamp: int, direction: int, server_id: int, payload: bytes
) -> bytes:
    """Reference sealing of one datagram (``aead`` is an AES-SIV object with encrypt/decrypt)."""
    header = encode_header(kind, timestamp, client_id, counter)
    return header + aead.encrypt(payload, [associated_data(header, direction, server_id, timestamp)])


def open_datagram(
    aead, datagram: bytes, *, direction: int, server_id: int, now: float, time_window: int = DEFAULT_TIME_WINDOW
) -> tuple[Header, int, bytes]:
    """Reference opening of one datagram, without replay state: (header, full timestamp, payload).

    The batch path in ``receive.py`` makes the same decisions, faster; the
    tests hold the two to each other. Raises Rejected.
    """
    if not OVERHEAD <= len(datagram) <= MAX_DATAGRAM:
        raise Rejected("bad_length")
    header = decode_header(datagram)
    probe_kind, probe_min = (KIND_PROBE, PROBE_MIN) if direction == TO_SERVER else (KIND_PROBE_ACK, PROBE_ACK_MIN)
    if header.kind not in KINDS and header.kind != probe_kind:
        raise Rejected("old_version" if header.kind in VERSION_1_KINDS else "unknown_kind")
    if header.kind == KIND_KEEPALIVE and len(datagram) != OVERHEAD or header.kind == probe_kind and len(
            datagram) < probe_min:
        raise Rejected("bad_length")
    now_seconds = int(now)
    timestamp = rebuild_timestamp(header.timestamp_low, now_seconds)
    if abs(timestamp - now_seconds) > time_window:
        raise Rejected("outside_time_window")
    ad = associated_data(datagram[:HEADER_LEN], direction, server_id, timestamp)
    try:
        payload = aead.decrypt(datagram[HEADER_LEN:], [ad])
    except (InvalidTag, ValueError) as error:  # cryptography's, pycryptodome's
        raise Rejected("auth_failed") from error
    return header, timestamp, payload
