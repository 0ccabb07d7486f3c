"""Typed errors of the netting engine: every rejection names its check and carries context."""

from __future__ import annotations

from meterchain.contract.errors import MeterchainError


class NettingError(MeterchainError):
    """Base of the netting engine's errors."""

    check = "netting"


class InputError(NettingError):
    """An interval's input is malformed: duplicate members, wrong types, inconsistent lengths."""

    check = "netting-input"


class BoundsError(InputError):
    """A value lies outside the bounds that keep every integer computation exact in int64."""

    check = "netting-bounds"


class PriceError(NettingError):
    """Prices or fees are inconsistent (feed-in above retail, no price for an interval...)."""

    check = "netting-price"


class PriceDataError(PriceError):
    """A price CSV row cannot be parsed exactly; the context names the line."""

    check = "netting-price-data"


class RegisterError(NettingError):
    """Cumulative registers would give negative or unattributable energy."""

    check = "netting-register"


class ResettlementError(NettingError):
    """A re-settlement does not continue the result it claims to supersede."""

    check = "netting-resettlement"
