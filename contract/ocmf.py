"""OCMF records: a reading restated in the Open Charge Metering Format, signed by the device key.

S.A.F.E. e.V.'s OCMF (revision 1.2, github.com/SAFE-eV/OCMF-Open-Charge-Metering-Format) is the
text ``OCMF|<payload JSON>|<signature JSON>``; transparency software and other tools already read
and verify it. Beside each reading the gateway signs one such record (fiscal context, no
transaction) with the same device key. Both signed forms are told apart by their first byte: a
reading starts ``0xab 0x61 0x74`` (a CBOR map), an OCMF payload ``{"FV":`` (``0x7b``); see
docs/format.md §12. A gateway-signed OCMF record is *not* a calibration-law-certified meter
signature: the gateway, not the meter's legally controlled signing module, signs it.

The payload has one deterministic form (fixed key order, no whitespace, kWh written from integer
Wh by string formatting, never through a float); :func:`parse_ocmf` accepts exactly that form.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

from meterchain.contract.errors import EncodingError, FieldError
from meterchain.contract.reading import (
    DEVICE_ID_RE,
    MAX_REGISTERS,
    MAX_SAFE_INT,
    METER_SERIAL_RE,
    OBIS_RE,
    ClockSync,
    Quality,
    Reading,
    StatusFlag,
)
from meterchain.contract.signing import Signer, parse_signature, verify_signature

OCMF_HEADER = "OCMF"
SEPARATOR = "|"
#: We only write fields of OCMF 1.0; tools that know 1.0 to 1.2 read it.
FORMAT_VERSION = "1.0"
SIGNATURE_ALGORITHM = "ECDSA-secp256r1-SHA256"
SIGNATURE_ENCODING = "hex"
SIGNATURE_MIME_TYPE = "application/x-der"
#: Every payload starts with these bytes; no reading (first byte 0xab) does.
PAYLOAD_PREFIX = b'{"FV":'
ENERGY_UNIT = "kWh"
#: A record of 16 registers is ≈ 1.5 KB; larger input is refused before it is parsed.
MAX_RECORD_SIZE = 4096
#: Gateway identification and version: printable ASCII without "|" (OCMF's section separator).
GATEWAY_TEXT_RE = re.compile(r"[\x20-\x7b\x7d\x7e]{1,64}")

PAYLOAD_KEYS = ("FV", "GI", "GS", "GV", "PG", "MS", "IS", "IT", "RD")
READING_KEYS = ("TM", "RV", "RI", "RU", "EF", "ST")
SIGNATURE_KEYS = ("SA", "SE", "SM", "SD")

#: OCMF time status (table 19): U unknown/unsynchronised, I informative, S synchronised,
#: R relative to an informative start. "U" covers both our unsynced and unknown.
TIME_STATUS = {
    ClockSync.SYNCED: "S",
    ClockSync.DRIFTED: "I",
    ClockSync.UNSYNCED: "U",
    ClockSync.UNKNOWN: "U",
}
TIME_STATUS_LETTERS = frozenset("UISR")
#: OCMF meter status (table 10), one letter; the reading's full flags stay in the reading.
METER_STATUS_LETTERS = frozenset("NGTDRMXIOSEF")
ERROR_FLAGS = ("", "E", "t", "Et")

_TIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2}),000\+0000 ([A-Z])", re.ASCII)
_KWH_RE = re.compile(r"(0|[1-9][0-9]{0,15})\.([0-9]{3})")
_PAGE_RE = re.compile(r"F([1-9][0-9]{0,15})")
_SIGNATURE_HEX_RE = re.compile(r"[0-9A-F]{16,144}")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class OcmfReading:
    """One entry of RD: a cumulative energy register at one time."""

    time: int  # UTC seconds
    time_status: str  # U, I, S or R
    obis: str
    value_wh: int
    error_flags: str  # "", "E" (energy unusable), "t", "Et"
    status: str  # meter status letter, "G" = good


@dataclass(frozen=True, slots=True)
class OcmfPayload:
    """The signed part of a record, in meterchain's profile of OCMF (fiscal, no user)."""

    gateway_id: str
    gateway_serial: str
    gateway_version: str
    fiscal_page: int
    meter_serial: str
    readings: tuple[OcmfReading, ...]

    def to_json(self) -> str:
        """The payload's one text form: what the device signs, byte for byte."""
        rd = ",".join(
            "{"
            + ",".join(
                (
                    f'"TM":{_json_text(_format_time(r.time, r.time_status))}',
                    f'"RV":{_format_kwh(r.value_wh)}',
                    f'"RI":{_json_text(r.obis)}',
                    f'"RU":"{ENERGY_UNIT}"',
                    f'"EF":{_json_text(r.error_flags)}',
                    f'"ST":{_json_text(r.status)}',
                )
            )
            + "}"
            for r in self.readings
        )
        return (
            f'{{"FV":"{FORMAT_VERSION}","GI":{_json_text(self.gateway_id)},'
            f'"GS":{_json_text(self.gateway_serial)},"GV":{_json_text(self.gateway_version)},'
            f'"PG":"F{self.fiscal_page}","MS":{_json_text(self.meter_serial)},'
            f'"IS":false,"IT":"NONE","RD":[{rd}]}}'
        )


@dataclass(frozen=True, slots=True)
class OcmfRecord:
    """A parsed record: its payload fields, the payload text exactly as signed, the signature."""

    payload: OcmfPayload
    payload_json: str
    signature: bytes

    @property
    def text(self) -> str:
        """The whole record, ``OCMF|payload|signature``, as it was parsed."""
        return _join(self.payload_json, self.signature)

    def verify(self, public_key_der: bytes) -> None:
        """Check the signature over the payload bytes with the device's public key."""
        verify_signature(public_key_der, self.payload_json.encode("ascii"), self.signature)


def build_ocmf(
    reading: Reading,
    *,
    gateway_id: str,
    gateway_version: str,
    fiscal_page: int | None = None,
) -> str:
    """The OCMF payload JSON for ``reading``.

    ``fiscal_page`` (PG ``F<n>``) defaults to the reading's ``seq``: one record per reading and
    seq counts up by one per reading of the device, exactly OCMF's pagination rule. GS is the
    device id, which names the key to verify with; MS the meter serial. RD holds every register
    in Wh (OCMF has no varh/VAh unit), by OBIS code, each at the interval's end.
    """
    if not isinstance(reading, Reading):
        raise FieldError("ocmf: expected a Reading", field="reading")
    _gateway_text(gateway_id, "GI")
    _gateway_text(gateway_version, "GV")
    page = reading.seq if fiscal_page is None else fiscal_page
    if not isinstance(page, int) or isinstance(page, bool) or not 1 <= page <= MAX_SAFE_INT:
        raise FieldError(f"ocmf: fiscal page {page!r} must be an integer ≥ 1", field="PG")
    if SEPARATOR in reading.meter:
        raise FieldError(
            "ocmf: meter serial contains '|', which OCMF forbids inside a section",
            field="MS",
            meter=reading.meter,
        )
    time_status = TIME_STATUS[reading.clock]
    status, error_flags = meter_status(reading)
    _format_time(reading.end, time_status)  # refuse times OCMF cannot write before building
    readings = tuple(
        OcmfReading(reading.end, time_status, obis, reg.value, error_flags, status)
        for obis, reg in sorted(reading.registers.items(), key=lambda item: _obis_key(item[0]))
        if reg.unit == "Wh"
    )
    payload = OcmfPayload(
        gateway_id=gateway_id,
        gateway_serial=reading.device,
        gateway_version=gateway_version,
        fiscal_page=page,
        meter_serial=reading.meter,
        readings=readings,
    )
    return payload.to_json()


def meter_status(reading: Reading) -> tuple[str, str]:
    """OCMF's one status letter (ST) and error flags (EF) for a reading.

    Worst first: tamper M, meter exchanged X, meter error E, substituted or estimated values S,
    else G. EF is "E" (energy not usable for billing) on tamper or meter error. Power failure
    and backfill have no OCMF letter; they remain in the reading's signed status bits.
    """
    flags = reading.status
    if flags & StatusFlag.TAMPER:
        status = "M"
    elif flags & StatusFlag.METER_EXCHANGED:
        status = "X"
    elif flags & StatusFlag.METER_ERROR:
        status = "E"
    elif reading.quality is not Quality.MEASURED:
        status = "S"
    else:
        status = "G"
    unusable = flags & (StatusFlag.TAMPER | StatusFlag.METER_ERROR)
    return status, "E" if unusable else ""


def sign_ocmf(payload: str, signer: Signer) -> str:
    """Sign a payload from :func:`build_ocmf`; the record is ``OCMF|payload|signature``.

    The payload is parsed first, so only meterchain's own OCMF form is ever signed.
    """
    _parse_payload(payload)
    signature = signer.sign(payload.encode("ascii"))
    parse_signature(signature)  # a signer that is not low-S DER must not produce records
    return _join(payload, signature)


def parse_ocmf(record: str | bytes) -> OcmfRecord:
    """Parse a record in meterchain's OCMF form; structural checks only, no verification."""
    text = _ascii(record, "record")
    if len(text) > MAX_RECORD_SIZE:
        raise EncodingError(
            f"ocmf: {len(text)} characters is over the limit of {MAX_RECORD_SIZE}",
            what="ocmf",
            size=len(text),
        )
    parts = text.split(SEPARATOR)
    if len(parts) != 3 or parts[0] != OCMF_HEADER:
        raise EncodingError(
            "ocmf: a record is 'OCMF|<payload>|<signature>' (three sections, no fourth)",
            what="ocmf",
            sections=len(parts),
        )
    payload = _parse_payload(parts[1])
    signature = _parse_signature_section(parts[2])
    return OcmfRecord(payload=payload, payload_json=parts[1], signature=signature)


def verify_ocmf(record: str | bytes, public_key_der: bytes) -> OcmfRecord:
    """Parse a record and verify its signature with the device's public key (SPKI DER)."""
    parsed = parse_ocmf(record)
    parsed.verify(public_key_der)
    return parsed


# --- encoding --------------------------------------------------------------------------------


def _join(payload_json: str, signature: bytes) -> str:
    section = (
        f'{{"SA":"{SIGNATURE_ALGORITHM}","SE":"{SIGNATURE_ENCODING}",'
        f'"SM":"{SIGNATURE_MIME_TYPE}","SD":"{signature.hex().upper()}"}}'
    )
    return SEPARATOR.join((OCMF_HEADER, payload_json, section))


def _json_text(value: str) -> str:
    return json.dumps(value, ensure_ascii=True)


def _format_kwh(wh: int) -> str:
    # Exact: kWh with three decimals is whole Wh, written from integers.
    return f"{wh // 1000}.{wh % 1000:03d}"


def _format_time(seconds: int, time_status: str) -> str:
    """ISO 8601 with milliseconds and a four-digit offset, then the time status letter."""
    try:
        moment = _EPOCH + dt.timedelta(seconds=seconds)
    except OverflowError:
        moment = None
    if moment is None or moment.year > 9999:
        raise FieldError(f"ocmf: time {seconds} is after the year 9999", field="TM", time=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f",000+0000 {time_status}"


def _obis_key(obis: str) -> tuple[int, ...]:
    match = OBIS_RE.fullmatch(obis)
    assert match is not None  # the Reading validated every OBIS code
    return tuple(int(group) for group in match.groups())


def _gateway_text(value: object, field: str) -> None:
    if not isinstance(value, str) or not GATEWAY_TEXT_RE.fullmatch(value):
        raise FieldError(
            f"ocmf: {field} must be 1-64 printable ASCII characters without '|'",
            field=field,
            value=value,
        )


# --- parsing ---------------------------------------------------------------------------------


class _Number(str):
    """A JSON number kept as its literal text, so no float ever holds a value."""


class _Object(tuple[Any, ...]):
    """A JSON object as its (key, value) pairs in order, duplicates included."""


def _ascii(value: object, what: str) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise EncodingError(f"ocmf: {what} is not ASCII", what="ocmf") from None
    if not isinstance(value, str):
        raise EncodingError(f"ocmf: {what} must be text, got {type(value).__name__}", what="ocmf")
    if not value.isascii():
        raise EncodingError(f"ocmf: {what} is not ASCII", what="ocmf")
    return value


def _load(text: str, section: str) -> Any:
    try:
        return json.loads(
            text,
            object_pairs_hook=_Object,
            parse_float=_Number,
            parse_int=_Number,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError) as exc:
        raise EncodingError(f"ocmf: {section} is not JSON ({exc})", what="ocmf") from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _fields(obj: object, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(obj, _Object):
        raise FieldError(f"ocmf: {where} must be a JSON object", field=where)
    names = tuple(key for key, _ in obj)
    if names != keys:
        raise FieldError(
            f"ocmf: {where} has keys {list(names)}; meterchain's OCMF has exactly {list(keys)}",
            field=where,
        )
    return dict(obj)


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or isinstance(value, _Number):
        raise FieldError(f"ocmf: {field} must be a JSON string", field=field)
    return value


def _parse_payload(payload: object) -> OcmfPayload:
    text = _ascii(payload, "payload")
    if not text.encode("ascii").startswith(PAYLOAD_PREFIX):
        raise EncodingError(f"ocmf: a payload starts with {PAYLOAD_PREFIX.decode()}", what="ocmf")
    fields = _fields(_load(text, "payload"), PAYLOAD_KEYS, "payload")
    if _text(fields["FV"], "FV") != FORMAT_VERSION:
        raise FieldError(f"ocmf: FV must be {FORMAT_VERSION!r}", field="FV")
    gateway_id, gateway_version = _text(fields["GI"], "GI"), _text(fields["GV"], "GV")
    _gateway_text(gateway_id, "GI")
    _gateway_text(gateway_version, "GV")
    page = _PAGE_RE.fullmatch(_text(fields["PG"], "PG"))
    if page is None or int(page.group(1)) > MAX_SAFE_INT:
        raise FieldError("ocmf: PG must be F<n>, n from 1 without leading zeros", field="PG")
    if fields["IS"] is not False or fields["IT"] != "NONE":
        raise FieldError('ocmf: a fiscal record has IS false and IT "NONE"', field="IS")
    rd = fields["RD"]
    if not isinstance(rd, list) or not 1 <= len(rd) <= MAX_REGISTERS:
        raise FieldError(f"ocmf: RD must be an array of 1 to {MAX_REGISTERS} readings", field="RD")
    gateway_serial, meter_serial = _text(fields["GS"], "GS"), _text(fields["MS"], "MS")
    if not DEVICE_ID_RE.fullmatch(gateway_serial):
        raise FieldError("ocmf: GS must be a meterchain device id", field="GS")
    if not METER_SERIAL_RE.fullmatch(meter_serial) or SEPARATOR in meter_serial:
        raise FieldError("ocmf: MS must be 1-64 printable ASCII characters without '|'", field="MS")
    result = OcmfPayload(
        gateway_id=gateway_id,
        gateway_serial=gateway_serial,
        gateway_version=gateway_version,
        fiscal_page=int(page.group(1)),
        meter_serial=meter_serial,
        readings=tuple(_parse_reading(entry) for entry in rd),
    )
    if result.to_json() != text:
        raise EncodingError(
            "ocmf: payload is not in meterchain's one OCMF form (escapes, order or spacing differ)",
            what="ocmf",
        )
    return result


def _parse_reading(entry: object) -> OcmfReading:
    fields = _fields(entry, READING_KEYS, "RD entry")
    time = _TIME_RE.fullmatch(_text(fields["TM"], "TM"))
    if time is None or time.group(7) not in TIME_STATUS_LETTERS:
        raise FieldError(
            "ocmf: TM must be YYYY-MM-DDThh:mm:ss,000+0000 and a status letter U, I, S or R",
            field="TM",
        )
    try:
        year, month, day, hour, minute, second = (int(g) for g in time.groups()[:6])
        moment = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
    except ValueError:
        raise FieldError("ocmf: TM is not a calendar date and time", field="TM") from None
    if moment < _EPOCH:
        raise FieldError("ocmf: TM is before 1970", field="TM")
    value = fields["RV"]
    kwh = _KWH_RE.fullmatch(value) if isinstance(value, _Number) else None
    if kwh is None:
        raise FieldError("ocmf: RV must be a JSON number in kWh with three decimals", field="RV")
    value_wh = int(kwh.group(1)) * 1000 + int(kwh.group(2))
    if value_wh > MAX_SAFE_INT:
        raise FieldError("ocmf: RV is above 2^53 - 1 Wh", field="RV")
    obis = _text(fields["RI"], "RI")
    if OBIS_RE.fullmatch(obis) is None or max(_obis_key(obis)) > 255:
        raise FieldError(f"ocmf: RI {obis!r} is not an OBIS code like 1-0:1.8.0", field="RI")
    if fields["RU"] != ENERGY_UNIT:
        raise FieldError(f"ocmf: RU must be {ENERGY_UNIT!r}", field="RU")
    error_flags, status = _text(fields["EF"], "EF"), _text(fields["ST"], "ST")
    if error_flags not in ERROR_FLAGS:
        raise FieldError("ocmf: EF must be '', 'E', 't' or 'Et'", field="EF")
    if len(status) != 1 or status not in METER_STATUS_LETTERS:
        raise FieldError(f"ocmf: ST {status!r} is not an OCMF meter status", field="ST")
    return OcmfReading(
        time=int((moment - _EPOCH).total_seconds()),
        time_status=time.group(7),
        obis=obis,
        value_wh=value_wh,
        error_flags=error_flags,
        status=status,
    )


def _parse_signature_section(section: str) -> bytes:
    fields = _fields(_load(section, "signature section"), SIGNATURE_KEYS, "signature section")
    expected = {"SA": SIGNATURE_ALGORITHM, "SE": SIGNATURE_ENCODING, "SM": SIGNATURE_MIME_TYPE}
    for key, want in expected.items():
        if fields[key] != want:
            raise FieldError(f"ocmf: {key} must be {want!r}", field=key)
    data = _text(fields["SD"], "SD")
    if not _SIGNATURE_HEX_RE.fullmatch(data) or len(data) % 2:
        raise FieldError("ocmf: SD must be upper-case hex of a DER signature", field="SD")
    signature = bytes.fromhex(data)
    parse_signature(signature)
    if _join("", signature).split(SEPARATOR)[2] != section:
        raise EncodingError("ocmf: signature section is not in meterchain's one form", what="ocmf")
    return signature
