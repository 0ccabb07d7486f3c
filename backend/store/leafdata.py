"""Leaf data as the store keeps it: raw DEFLATE with a fixed preset dictionary, behind a tag byte.

Why: a reading's signed message was half of its bytes on disk (issue 5, docs/benchmarks.md). Most
of a message is the same CBOR keys and texts in every reading; a preset dictionary of them lets
DEFLATE code a ~280-byte message in ~170 bytes (the rest is the key id, the signature and the
values: random or nearly). The log never sees this form: the leaf hash, proofs, bundles and
``meterchain audit`` all work on the unpacked bytes.

Stored ``leaves.data``, told apart by its first byte:

- ``b""``: an erased leaf (docs/privacy.md); stays empty.
- ``0x1c`` + stream: version 1, a raw DEFLATE stream (RFC 1951, 1 KiB window) with the preset
  dictionary :data:`DICT_V1`.
- ``0x1f`` + data: the leaf data verbatim (escaped: data that itself starts with a tag byte).
- any other first byte: the leaf data verbatim (rows written before packing, and data that
  DEFLATE does not make smaller).

Leaf data is CBOR (a message starts 0x82, device and settlement leaves with a map head). CBOR
initial bytes 0x1c-0x1f are not well-formed (RFC 8949 §3: additional information 28-30 is
reserved, 31 is not allowed for unsigned integers), so a tag never meets real leaf data; any other
bytes still round-trip through the escape. 0x1d and 0x1e are kept for later versions.
"""

from __future__ import annotations

import zlib

from meterchain.contract.errors import MeterchainError

TAG_DEFLATE_V1 = 0x1C
TAG_VERBATIM = 0x1F
#: First bytes that mean "packed" (the versions after 1 are reserved, unknown to this code).
TAGS = frozenset({TAG_DEFLATE_V1, 0x1D, 0x1E, TAG_VERBATIM})
#: Nothing unpacks to more than this (a leaf is at most 8 KiB: contract/leaves.py MAX_LEAF_SIZE);
#: larger data is kept verbatim, never compressed.
MAX_UNPACKED = 64 * 1024
#: Version 1's DEFLATE parameters: raw stream (no zlib header), 2^10-byte window.
WBITS_V1 = -10

#: Version 1's preset dictionary. NEVER change it: every stored version-1 leaf needs exactly these
#: bytes to unpack (tests pin its SHA-256); a better dictionary is a new version with a new tag.
#: Common CBOR of each leaf kind (contract/reading.py, contract/leaves.py, backend/settlement/runner.py),
#: random fields left out, least used first: DEFLATE reaches the end of a dictionary cheapest.
DICT_V1 = b"".join((
    # settlement leaf: {"t", "digest", "interval": [start, 900], "revision", "community",
    # "supersedes": null | digest}
    b"\xa6atx\x18meterchain/settlement/v1fdigestX ",
    b"hinterval\x82\x1a",
    b"\x19\x03\x84hrevision",
    b"icommunity",
    b"jsupersedes\xf6",
    b"jsupersedesX ",
    # device leaf: {"t", "dev": "gw-...", "key": P-256 SubjectPublicKeyInfo, "kid", "from",
    # "time", "event"}
    b"\xa7atx\x14meterchain/device/v1cdevogw-",
    b"ckeyX[0Y0\x13\x06\x07*\x86H\xce=\x02\x01\x06\x08*\x86H\xce=\x03\x01\x07\x03B\x00\x04",
    b"ckidX ",
    b"dfrom",
    b"dtime\x1a",
    b"eeventeenrol",
    b"frotate",
    b"frevoke",
    # a reading's rarer texts: qualities, clock states, units, OBIS codes
    b"iestimatedksubstitutedgdriftedhunsyncedgunknowndvarhcVAh",
    b"i1-0:3.8.0i1-0:4.8.0",
    # the message [reading bytes, DER signature] with its reading map in key order (t, dev, end,
    # kid, seq, regs, clock, meter, start, status, quality), then the signature's DER heads
    b"\x82X",
    b"\xabatumeterchain/reading/v1cdevogw-",
    b"cend\x1a",
    b"ckidX ",
    b"cseq\x19",
    b"dregs\xa2i1-0:1.8.0\x82\x1a",
    b"bWhi1-0:2.8.0\x82",
    b"bWheclockfsyncedemeter",
    b"estart\x1a",
    b"fstatus\x00gqualityhmeasuredXF0D\x02 ",
    b"XG0E\x02!\x00",
    b"\x02 ",
))


class LeafDataError(MeterchainError):
    """A stored leaf's data cannot be unpacked (corrupt, truncated, too large, unknown version)."""

    check = "leaf-data"


#: Version 1's compressor with the dictionary already loaded, copied per message: priming one
#: (``deflateSetDictionary`` hashes all of DICT_V1) cost more than the message itself (issue 20's
#: profile: packing 14 % of a worker's samples). A copy gives byte-identical output (tested).
_PRIMED_V1 = zlib.compressobj(9, zlib.DEFLATED, WBITS_V1, 2, zlib.Z_DEFAULT_STRATEGY, zdict=DICT_V1)


def pack_leaf_data(data: bytes) -> bytes:
    """The form of ``data`` to store: DEFLATE v1 when that is smaller, else ``data`` itself
    (escaped if it starts with a tag byte). ``unpack_leaf_data`` gives ``data`` back exactly."""
    if not data:
        return b""
    if len(data) <= MAX_UNPACKED:
        deflate = _PRIMED_V1.copy()
        packed = bytes((TAG_DEFLATE_V1,)) + deflate.compress(data) + deflate.flush()
        if len(packed) < len(data):
            return packed
    if data[0] in TAGS:
        return bytes((TAG_VERBATIM,)) + data
    return data


def unpack_leaf_data(stored: bytes, leaf_id: int | None = None) -> bytes:
    """The leaf data of a stored ``leaves.data`` value; raises :class:`LeafDataError` (naming
    ``leaf_id``) if it is corrupt. Output is bounded by :data:`MAX_UNPACKED`."""
    stored = bytes(stored)
    if not stored or stored[0] not in TAGS:
        return stored
    if stored[0] == TAG_VERBATIM:
        return stored[1:]
    if stored[0] != TAG_DEFLATE_V1:
        raise LeafDataError(f"stored leaf data has unknown packing version 0x{stored[0]:02x}; "
                            "upgrade meterchain", leaf_id=leaf_id)
    inflate = zlib.decompressobj(WBITS_V1, zdict=DICT_V1)
    try:
        data = inflate.decompress(stored[1:], MAX_UNPACKED)
    except zlib.error as exc:
        raise LeafDataError(f"stored leaf data is not a valid DEFLATE stream: {exc}",
                            leaf_id=leaf_id) from None
    if inflate.unconsumed_tail:
        raise LeafDataError(f"stored leaf data unpacks to more than {MAX_UNPACKED} bytes",
                            leaf_id=leaf_id)
    if not inflate.eof or inflate.unused_data:
        raise LeafDataError("stored leaf data is truncated or has bytes after its DEFLATE stream",
                            leaf_id=leaf_id)
    return data
