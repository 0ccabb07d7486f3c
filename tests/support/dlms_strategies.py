"""Hypothesis strategies for DLMS/COSEM values, frames and APDUs (shared by the dlms tests)."""

from __future__ import annotations

from hypothesis import strategies as st
from meterchain.bridge.dlms.apdu import (
    AccessSelection,
    AttributeDescriptor,
    DataAccessResult,
    GetRequestNext,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithDataBlock,
    GetResponseWithList,
)
from meterchain.bridge.dlms.axdr import BitString, Data, DateTime, Tag
from meterchain.bridge.dlms.hdlc import Control, FrameType, HdlcAddress, HdlcFrame
from meterchain.bridge.dlms.obis import Obis

INT_RANGES = {
    Tag.INT8: (-(2**7), 2**7 - 1),
    Tag.INT16: (-(2**15), 2**15 - 1),
    Tag.INT32: (-(2**31), 2**31 - 1),
    Tag.INT64: (-(2**63), 2**63 - 1),
    Tag.UINT8: (0, 255),
    Tag.UINT16: (0, 2**16 - 1),
    Tag.UINT32: (0, 2**32 - 1),
    Tag.UINT64: (0, 2**64 - 1),
    Tag.ENUM: (0, 255),
    Tag.BCD: (0, 255),
}

date_times = st.builds(
    DateTime,
    year=st.integers(0, 0xFFFF),
    month=st.integers(0, 255),
    day=st.integers(0, 255),
    weekday=st.integers(0, 255),
    hour=st.integers(0, 255),
    minute=st.integers(0, 255),
    second=st.integers(0, 255),
    hundredths=st.integers(0, 255),
    deviation=st.one_of(st.none(), st.integers(-0x8000 + 1, 0x7FFF)),
    status=st.integers(0, 255),
)


def _bit_strings() -> st.SearchStrategy[BitString]:
    return st.integers(0, 64).flatmap(
        lambda n: st.binary(min_size=(n + 7) // 8, max_size=(n + 7) // 8).map(
            lambda b: BitString(n, b)
        )
    )


scalars = st.one_of(
    st.just(Data.null()),
    st.booleans().map(lambda b: Data(Tag.BOOLEAN, b)),
    *[st.integers(lo, hi).map(lambda v, t=tag: Data(t, v)) for tag, (lo, hi) in INT_RANGES.items()],
    st.binary(max_size=300).map(Data.octets),
    st.text(alphabet=st.characters(max_codepoint=255), max_size=40).map(
        lambda s: Data(Tag.VISIBLE_STRING, s)
    ),
    st.text(max_size=20).map(lambda s: Data(Tag.UTF8_STRING, s)),
    _bit_strings().map(lambda b: Data(Tag.BIT_STRING, b)),
    st.floats(width=32, allow_nan=False).map(lambda f: Data(Tag.FLOAT32, f)),
    st.floats(allow_nan=False).map(lambda f: Data(Tag.FLOAT64, f)),
    date_times.map(lambda d: Data(Tag.DATE_TIME, d)),
    st.binary(min_size=5, max_size=5).map(lambda b: Data(Tag.DATE, b)),
    st.binary(min_size=4, max_size=4).map(lambda b: Data(Tag.TIME, b)),
)

data_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6).map(Data.array),
        st.lists(children, max_size=6).map(Data.structure),
    ),
    max_leaves=25,
)

obis_codes = st.builds(Obis, *[st.integers(0, 255) for _ in range(6)])
descriptors = st.builds(
    AttributeDescriptor, st.integers(0, 0xFFFF), obis_codes, st.integers(-128, 127)
)
accesses = st.one_of(st.none(), st.builds(AccessSelection, st.integers(0, 255), data_values))
invokes = st.integers(0, 255)
access_results = st.sampled_from(list(DataAccessResult))
get_results = st.one_of(data_values, access_results)

get_apdus = st.one_of(
    st.builds(GetRequestNormal, invokes, descriptors, accesses),
    st.builds(GetRequestNext, invokes, st.integers(0, 2**32 - 1)),
    st.builds(
        GetRequestWithList,
        invokes,
        st.lists(st.tuples(descriptors, accesses), min_size=1, max_size=5).map(tuple),
    ),
    st.builds(GetResponseNormal, invokes, get_results),
    st.builds(
        GetResponseWithDataBlock,
        invokes,
        st.booleans(),
        st.integers(0, 2**32 - 1),
        st.one_of(st.binary(max_size=400), access_results),
    ),
    st.builds(GetResponseWithList, invokes, st.lists(get_results, max_size=5).map(tuple)),
)


def _addresses(sizes: tuple[int, ...]) -> st.SearchStrategy[HdlcAddress]:
    def build(size: int) -> st.SearchStrategy[HdlcAddress]:
        if size == 1:
            return st.integers(0, 0x7F).map(lambda u: HdlcAddress(u, None, 1))
        limit = 0x7F if size == 2 else 0x3FFF
        return st.builds(HdlcAddress, st.integers(0, limit), st.integers(0, limit), st.just(size))

    return st.sampled_from(sizes).flatmap(build)


addresses = _addresses((1, 2, 4))
controls = st.one_of(
    st.builds(Control, st.just(FrameType.I), st.booleans(), st.integers(0, 7), st.integers(0, 7)),
    st.builds(
        Control,
        st.sampled_from([FrameType.RR, FrameType.RNR]),
        st.booleans(),
        st.just(0),
        st.integers(0, 7),
    ),
    st.builds(
        Control,
        st.sampled_from(
            [
                FrameType.SNRM,
                FrameType.DISC,
                FrameType.UA,
                FrameType.DM,
                FrameType.FRMR,
                FrameType.UI,
            ]
        ),
        st.booleans(),
    ),
)
frames = st.builds(
    HdlcFrame, addresses, addresses, controls, st.binary(max_size=400), st.booleans()
)
