"""The engine's data model: frozen inputs (community, prices, fees, readings, listings) and outputs.

Units everywhere: energy in integer Wh, prices in integer micro-euro per kWh (µ€/kWh), money in integer
micro-euro (µ€), exact intermediate money in nano-euro (n€ = Wh × µ€/kWh, so no division is needed),
time in UTC integer seconds. Per-member data travels in columns (numpy int64 arrays, members sorted by
id) so an interval of 100k members is settled without 100k Python objects.

Bounds (validated on input, typed `BoundsError`): they keep every product and sum exact in int64
(max 9.22e18), with a factor of ≥ 3 to spare:

* a member's import or export per interval ≤ MAX_MEMBER_WH (10 MWh, a 40 MW site for 15 minutes);
* a community's D or S per interval ≤ MAX_COMMUNITY_WH (100 GWh); so L × share ≤ 1e18 in splits;
* |price| and each per-kWh fee ≤ MAX_PRICE (10 €/kWh; day-ahead caps are 4 €/kWh), negative prices
  allowed; so a member's n€ per interval ≤ 1e7 × 3e7 and a community's ≤ 1e11 × 1e7 = 1e18;
* a bill covers ≤ MAX_BILL_INTERVALS (9,000: a month of 5-minute intervals) so monthly n€ sums stay
  below 3e14 × 9e3 = 2.7e18.
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BoundsError, InputError, PriceError

MAX_MEMBER_WH = 10_000_000
MAX_COMMUNITY_WH = 100_000_000_000
MAX_PRICE = 10_000_000
MAX_VAT_BASIS_POINTS = 10_000
MAX_BILL_INTERVALS = 9_000
MAX_MEMBER_ID_BYTES = 128
RULE_VERSION = 1


class Quality(enum.IntEnum):
    """How an interval's energy was obtained; recorded per member and covered by the digest."""

    MEASURED = 0
    ESTIMATED = 1
    SUBSTITUTED = 2  # spread evenly over a gap by the reading that spans it
    MISSING = 3  # no reading by the deadline: settled as zero, re-settled when the reading arrives


class Rule(enum.StrEnum):
    """How the local price of a pro-rata interval is set (auctions find their own prices)."""

    MID_MARKET = "mid_market"
    SUPPLY_DEMAND_RATIO = "sdr"
    FIXED = "fixed"


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer", field=name, value=value)
    if not low <= int(value) <= high:
        raise BoundsError(f"{name} is outside [{low}, {high}]", field=name, value=int(value))
    return int(value)


def check_member_id(member_id: object) -> str:
    """Member ids are non-empty UTF-8 strings of bounded length (they enter hashes and CBOR)."""
    if not isinstance(member_id, str) or not member_id or "\x00" in member_id:
        raise InputError("member id must be a non-empty string without NUL", member_id=member_id)
    if len(member_id.encode("utf-8", "surrogatepass")) > MAX_MEMBER_ID_BYTES:
        raise BoundsError("member id is too long", member_id=member_id[:40])
    try:
        member_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError("member id is not valid UTF-8 text", member_id=repr(member_id)) from exc
    return member_id


@dataclass(frozen=True)
class PriceSchedule:
    """A step function of time: `steps[i] = (start, price)` holds from its start to the next one.

    A fixed price is one step from time 0 with no end; imported series end one resolution after
    their last row, so a missing day raises `PriceError` instead of silently reusing an old price.
    """

    steps: tuple[tuple[int, int], ...]
    end: int | None = None
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.steps:
            raise PriceError("a price schedule needs at least one step")
        last = -1
        for step in self.steps:
            if not isinstance(step, tuple) or len(step) != 2:
                raise PriceError("a schedule step is a (start, price) pair", step=step)
            start, price = step
            _check_int("step start", start, 0, 2**62)
            _check_int("price", price, -MAX_PRICE, MAX_PRICE)
            if start <= last:
                raise PriceError("schedule steps must be strictly increasing", start=start)
            last = start
        if self.end is not None and self.end <= last:
            raise PriceError("schedule end must follow its last step", end=self.end)
        object.__setattr__(self, "_starts", tuple(s for s, _ in self.steps))

    @classmethod
    def fixed(cls, price: int) -> PriceSchedule:
        return cls(((0, price),))

    def price_at(self, timestamp: int) -> int:
        starts = self._starts
        i = bisect.bisect_right(starts, timestamp) - 1
        if i < 0 or (self.end is not None and timestamp >= self.end):
            raise PriceError("no price for this time", timestamp=timestamp,
                             first=starts[0], end=self.end)
        return self.steps[i][1]


@dataclass(frozen=True)
class Fees:
    """Fees of a community; per-kWh fees fall on the buyer of the energy they name."""

    local_network_per_kwh: int = 0  # network tariff on energy bought locally
    grid_network_per_kwh: int = 0  # network tariff on energy bought from the grid
    platform_per_kwh: int = 0  # platform fee on energy bought locally
    monthly_fee: int = 0  # µ€ per member and bill
    vat_basis_points: int = 0  # 1900 = 19 %, on the charges of a bill

    def __post_init__(self) -> None:
        for name in ("local_network_per_kwh", "grid_network_per_kwh", "platform_per_kwh"):
            _check_int(name, getattr(self, name), 0, MAX_PRICE)
        _check_int("monthly_fee", self.monthly_fee, 0, 10**12)
        _check_int("vat_basis_points", self.vat_basis_points, 0, MAX_VAT_BASIS_POINTS)

    @property
    def local_per_kwh(self) -> int:
        return self.local_network_per_kwh + self.platform_per_kwh


@dataclass(frozen=True)
class Community:
    """Everything a community fixes in advance: prices, fees, pricing rule, CO₂ factor."""

    community_id: str
    retail: PriceSchedule  # p_g: what the grid supplier charges per kWh
    feed_in: PriceSchedule  # p_f: what the grid supplier pays per kWh
    fees: Fees = field(default_factory=Fees)
    rule: Rule = Rule.MID_MARKET
    fixed_price: int | None = None  # only for Rule.FIXED; clamped to [p_f, p_g] per interval
    co2_grams_per_kwh: int = 0  # grid emission factor avoided by each local kWh
    interval_seconds: int = 900
    settle_deadline_seconds: int = 86_400  # settle with what is in, this long after the interval

    def __post_init__(self) -> None:
        check_member_id(self.community_id)
        try:
            object.__setattr__(self, "rule", Rule(self.rule))
        except ValueError as exc:
            raise InputError("unknown pricing rule", rule=self.rule) from exc
        if self.rule is Rule.FIXED:
            if self.fixed_price is None:
                raise PriceError("the fixed rule needs a fixed_price")
            _check_int("fixed_price", self.fixed_price, -MAX_PRICE, MAX_PRICE)
        _check_int("co2_grams_per_kwh", self.co2_grams_per_kwh, 0, 10_000)
        _check_int("interval_seconds", self.interval_seconds, 60, 86_400)
        _check_int("settle_deadline_seconds", self.settle_deadline_seconds, 0, 90 * 86_400)

    def prices_at(self, interval_start: int) -> tuple[int, int]:
        """(p_g, p_f) in force at an interval's start; feed-in above retail is refused."""
        retail = self.retail.price_at(interval_start)
        feed_in = self.feed_in.price_at(interval_start)
        if feed_in > retail:
            raise PriceError("feed-in tariff above retail price", interval_start=interval_start,
                             retail=retail, feed_in=feed_in)
        return retail, feed_in


@dataclass(frozen=True)
class Listing:
    """A member's standing order; a member without one bids p_g and asks p_f.

    Limits outside [p_f, p_g] are clamped to it (nobody rationally buys locally above retail or
    sells below feed-in), so every auction price also lies in [p_f, p_g].
    `partner_group` names a neighbourhood (a building, a street) whose members trade first among
    themselves; `green_only` buyers take only energy of `green_source` sellers.
    """

    member_id: str
    buy_limit: int | None = None
    sell_ask: int | None = None
    green_source: bool = False
    green_only: bool = False
    partner_group: str | None = None

    def __post_init__(self) -> None:
        check_member_id(self.member_id)
        for name in ("buy_limit", "sell_ask"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, -MAX_PRICE, MAX_PRICE)
        if self.partner_group is not None:
            check_member_id(self.partner_group)


@dataclass(frozen=True)
class MemberInterval:
    """One member's energy in one interval, with the leaf hashes of the readings behind it."""

    member_id: str
    import_wh: int
    export_wh: int
    quality: Quality = Quality.MEASURED
    leaf_hashes: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class MemberRoster:
    """A validated, sorted, duplicate-free set of member ids, built once and reused.

    Columns given with a roster are taken in roster order without re-checking or re-sorting ids,
    which is what makes a month of 10k-member intervals cheap; the same tuple object in every
    interval also lets a BillBuilder map members once.
    """

    ids: tuple[str, ...]

    @classmethod
    def of(cls, member_ids: Iterable[str]) -> MemberRoster:
        ids = sorted(check_member_id(m) for m in member_ids)
        for a, b in itertools.pairwise(ids):
            if a == b:
                raise InputError("member appears twice in the roster", member_id=a)
        return cls(tuple(ids))


def _quality(value: Any) -> int:  # anything a caller passes: Quality() decides
    try:
        return int(Quality(value))
    except (ValueError, TypeError) as exc:
        raise InputError("unknown quality flag", quality=value) from exc


def _as_int64(name: str, values: Sequence[int] | np.ndarray, n: int, high: int) -> np.ndarray:
    try:
        array = np.asarray(values)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"{name} is not a sequence of integers", field=name) from exc
    if array.shape != (n,):
        raise InputError(f"{name} must have one value per member", field=name,
                         shape=array.shape, members=n)
    if n and array.dtype.kind not in "iu":
        raise InputError(f"{name} must hold integers", field=name, dtype=str(array.dtype))
    if n and (int(array.min()) < 0 or int(array.max()) > high):
        raise BoundsError(f"{name} outside [0, {high}]", field=name,
                          min=int(array.min()), max=int(array.max()))
    return array.astype(np.int64, copy=True)


@dataclass(frozen=True, eq=False)
class IntervalInput:
    """The metered energy of one interval: member ids sorted, columns aligned with them."""

    interval_start: int
    member_ids: tuple[str, ...]
    import_wh: np.ndarray
    export_wh: np.ndarray
    quality: np.ndarray
    leaf_hashes: tuple[bytes, ...]  # sorted, each 32 bytes

    @classmethod
    def from_columns(
        cls,
        interval_start: int,
        member_ids: Sequence[str] | MemberRoster,
        import_wh: Sequence[int] | np.ndarray,
        export_wh: Sequence[int] | np.ndarray,
        quality: Sequence[int] | np.ndarray | None = None,
        leaf_hashes: Iterable[bytes] = (),
    ) -> IntervalInput:
        """Validate and canonicalise: members sorted by id, hashes sorted, bounds checked."""
        _check_int("interval_start", interval_start, 0, 2**62)
        roster: MemberRoster | None = None
        if isinstance(member_ids, MemberRoster):
            roster, ids = member_ids, list(member_ids.ids)
        else:
            ids = [check_member_id(m) for m in member_ids]
        n = len(ids)
        imp = _as_int64("import_wh", import_wh, n, MAX_MEMBER_WH)
        exp = _as_int64("export_wh", export_wh, n, MAX_MEMBER_WH)
        qual = _as_int64("quality", np.zeros(n, np.int64) if quality is None else quality, n,
                         max(Quality))
        if roster is None:
            order = sorted(range(n), key=ids.__getitem__)
            if order != list(range(n)):
                index = np.asarray(order, dtype=np.int64)
                ids = [ids[i] for i in order]
                imp, exp, qual = imp[index], exp[index], qual[index]
            for a, b in itertools.pairwise(ids):
                if a == b:
                    raise InputError("member appears twice in one interval", member_id=a,
                                     interval_start=interval_start)
        if int(imp.sum()) > MAX_COMMUNITY_WH or int(exp.sum()) > MAX_COMMUNITY_WH:
            raise BoundsError("community energy per interval above bound",
                              demand=int(imp.sum()), supply=int(exp.sum()))
        hashes = []
        for leaf in leaf_hashes:
            if not isinstance(leaf, bytes) or len(leaf) != 32:
                raise InputError("leaf hashes are 32-byte SHA-256 values", leaf=repr(leaf)[:80])
            hashes.append(leaf)
        for arr in (imp, exp, qual):
            arr.flags.writeable = False
        member_tuple = roster.ids if roster else tuple(ids)
        return cls(int(interval_start), member_tuple, imp, exp, qual, tuple(sorted(set(hashes))))

    @classmethod
    def from_members(cls, interval_start: int, members: Iterable[MemberInterval]) -> IntervalInput:
        rows = list(members)
        return cls.from_columns(
            interval_start,
            [r.member_id for r in rows],
            [r.import_wh for r in rows],
            [r.export_wh for r in rows],
            [_quality(r.quality) for r in rows],
            [leaf for r in rows for leaf in r.leaf_hashes],
        )

    @property
    def demand_wh(self) -> int:
        return int(self.import_wh.sum())

    @property
    def supply_wh(self) -> int:
        return int(self.export_wh.sum())


ENERGY_COLUMNS = ("import_wh", "export_wh", "bought_local_wh", "bought_grid_wh", "sold_local_wh",
                  "sold_grid_wh", "quality")
# Money kinds with the sign a member sees: +1 the member pays, -1 the member receives.
MONEY_KINDS: tuple[tuple[str, int], ...] = (
    ("local_energy_bought", 1),
    ("local_energy_sold", -1),
    ("grid_energy", 1),
    ("feed_in", -1),
    ("local_network_fee", 1),
    ("grid_network_fee", 1),
    ("platform_fee", 1),
)


@dataclass(frozen=True, eq=False)
class MemberColumns:
    """Per-member outputs of one interval, aligned with `member_ids`.

    `energy[name]` in Wh; `money[kind]` in µ€ (each rounded half-even from the exact value);
    `exact[kind]` in n€ (exact, what bills sum before rounding once a month). All unsigned: the
    sign of a money kind is in MONEY_KINDS.
    """

    energy: dict[str, np.ndarray]
    money: dict[str, np.ndarray]
    exact: dict[str, np.ndarray]


@dataclass(frozen=True)
class TierClearing:
    """One clearing of local energy: the pro-rata split, or one tier's call auction."""

    name: str  # "prorata", "partners:<group>", "green", "rest"
    price: int  # µ€/kWh
    volume_wh: int
    pairs: tuple[tuple[str, str, int], ...] = ()  # auction (buyer, seller, Wh), at most b + s - 1


@dataclass(frozen=True)
class MoneyBalance:
    """One money kind of one interval: members' side = counterparty + rounding line, exactly.

    `members` is the signed sum of the members' rounded lines (+ they pay), `counterparty` what the
    supplier, network operator or platform books for the whole interval (rounded once from the exact
    total; 0 for local energy, which only moves between members), and `rounding` the one rounding
    line the community account carries.
    """

    kind: str
    members: int
    counterparty: int
    rounding: int


@dataclass(frozen=True)
class CommunityTotals:
    # pylint: disable=duplicate-code  # tables.SettlementRow stores these flat, one column each
    demand_wh: int  # D = Σ imports
    supply_wh: int  # S = Σ exports
    local_wh: int  # energy matched locally (= min(D, S) in pro-rata mode)
    grid_import_wh: int
    grid_export_wh: int
    self_sufficiency_ppm: int | None  # L / D, rounded half-even; None when D = 0
    self_consumption_ppm: int | None  # L / S; None when S = 0
    co2_avoided_g: int
    # pylint: enable=duplicate-code


@dataclass(frozen=True, eq=False)
class IntervalResult:
    """A settled interval: inputs, prices, rule, outputs, and the digest binding them."""

    community_id: str
    interval_start: int
    interval_seconds: int
    revision: int
    supersedes: bytes | None
    mode: str  # "prorata" or "auction"
    rule: str
    rule_version: int
    retail_price: int
    feed_in_price: int
    fees: Fees
    co2_grams_per_kwh: int
    member_ids: tuple[str, ...]
    leaf_hashes: tuple[bytes, ...]
    columns: MemberColumns
    tiers: tuple[TierClearing, ...]
    balances: tuple[MoneyBalance, ...]
    totals: CommunityTotals
    digest: bytes

    def seller_mix(self) -> tuple[tuple[str, int], ...]:
        """Pro-rata origin: each seller's export (its share of S), stored once per interval."""
        export = self.columns.energy["export_wh"]
        return tuple((self.member_ids[i], int(export[i])) for i in np.flatnonzero(export))

    def member_row(self, member_id: str) -> dict[str, int]:
        """All lines of one member as plain ints (for an API or a test); KeyError if absent."""
        i = bisect.bisect_left(self.member_ids, member_id)
        if i == len(self.member_ids) or self.member_ids[i] != member_id:
            raise KeyError(member_id)
        row = {k: int(v[i]) for k, v in self.columns.energy.items()}
        row.update({k: int(v[i]) for k, v in self.columns.money.items()})
        return row
