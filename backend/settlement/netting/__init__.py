"""P2P netting and settlement for energy communities: a pure, exact, reproducible engine.

No database, no network, no clock: integers in (Wh, µ€/kWh, UTC seconds), integers out (Wh, µ€),
and a digest over each settled interval so an auditor can re-run it. See docs/netting.md.
"""

from .auction import Clearing, clear_call_auction
from .bill import Bill, BillBuilder, BillLine
from .calendar import interval_starts, local_day_bounds, local_month_bounds
from .deltas import IntervalDelta, delta_lines, resettle
from .digest import DOCUMENT_TYPE, encode_document, settlement_document
from .energy import MeterExchange, MeterTrack, RegisterReading, advance, apply_exchange, start_track
from .errors import (
    BoundsError,
    InputError,
    NettingError,
    PriceDataError,
    PriceError,
    RegisterError,
    ResettlementError,
)
from .model import (
    Community,
    CommunityTotals,
    Fees,
    IntervalInput,
    IntervalResult,
    Listing,
    MemberInterval,
    MemberRoster,
    MoneyBalance,
    PriceSchedule,
    Quality,
    Rule,
    TierClearing,
)
from .prices_csv import parse_price_csv
from .readiness import Readiness, readiness, with_missing
from .settle import settle_interval

__all__ = [
    "DOCUMENT_TYPE",
    "Bill",
    "BillBuilder",
    "BillLine",
    "BoundsError",
    "Clearing",
    "Community",
    "CommunityTotals",
    "Fees",
    "InputError",
    "IntervalDelta",
    "IntervalInput",
    "IntervalResult",
    "Listing",
    "MemberInterval",
    "MemberRoster",
    "MeterExchange",
    "MeterTrack",
    "MoneyBalance",
    "NettingError",
    "PriceDataError",
    "PriceError",
    "PriceSchedule",
    "Quality",
    "Readiness",
    "RegisterError",
    "RegisterReading",
    "ResettlementError",
    "Rule",
    "TierClearing",
    "advance",
    "apply_exchange",
    "clear_call_auction",
    "delta_lines",
    "encode_document",
    "interval_starts",
    "local_day_bounds",
    "local_month_bounds",
    "parse_price_csv",
    "readiness",
    "resettle",
    "settle_interval",
    "settlement_document",
    "start_track",
    "with_missing",
]
