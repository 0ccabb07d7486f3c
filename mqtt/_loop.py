"""The reconnect loop: connect, run the caller's session, and after a failure wait and retry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, Unpack

from meterchain.mqtt._backoff import Backoff
from meterchain.mqtt._client import Connection, ConnectOptions, MqttError, connect
from meterchain.mqtt._url import BrokerUrl

T = TypeVar("T")
log = logging.getLogger("meterchain.mqtt")


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a connection ended or could not be opened, and what the loop does next."""

    error: BaseException
    delay: float  # seconds until the next attempt
    attempt: int  # failures in a row, 1 for the first since the last connection
    was_connected: bool  # the session had begun (False: the connect itself failed)


def connection_error(exc: BaseException) -> MqttError | None:
    """The MQTT error behind ``exc`` (also inside a task group of MQTT errors only), or None."""
    if isinstance(exc, MqttError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        mqtt_errors, rest = exc.split(MqttError)
        if rest is None and mqtt_errors is not None:
            return connection_error(mqtt_errors.exceptions[0])
    return None


async def stay_connected(
    url: BrokerUrl,
    session: Callable[[Connection], Awaitable[T]],
    *,
    name: str,
    backoff: Backoff | None = None,
    rng: random.Random | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    on_failure: Callable[[Failure], object] | None = None,
    retry_unexpected: bool = False,
    fatal: tuple[type[Exception], ...] = (),
    log_to: logging.Logger = log,
    level: int = logging.WARNING,
    **options: Unpack[ConnectOptions],
) -> T:
    """Run ``session`` on a connection to ``url`` until it returns; reconnect after failures.

    A lost or refused connection (:class:`MqttError`) is retried after ``backoff``'s delay,
    counted from attempt 0 again after every successful connect. Other exceptions from the
    session are bugs and propagate, unless ``retry_unexpected`` (then logged with their
    traceback and retried like an outage); ``fatal`` ones always propagate. ``on_failure``
    sees each failure before the wait (for metrics); an exception it raises ends the loop.
    ``name`` labels the log lines; ``options`` go to :func:`connect`.
    """
    backoff = backoff or Backoff()
    rng = rng or random.Random()
    attempt = 0
    while True:
        connected = False
        try:
            async with connect(url, **options) as connection:
                attempt, connected = 0, True
                return await session(connection)
        except fatal:
            raise
        except Exception as exc:
            error = connection_error(exc)
            if error is None and not retry_unexpected:
                raise
            delay = backoff.delay(attempt, rng)
            attempt += 1
            failure = Failure(error or exc, delay, attempt, connected)
            if on_failure is not None:
                on_failure(failure)
            log_to.log(
                level,
                "event=mqtt_retry client=%s broker=%s error=%r retry_in=%.2f attempt=%d",
                name, url, str(failure.error), delay, attempt, exc_info=error is None,
            )
        if await _wait(url, delay, sleep, backoff.probe, rng):
            log_to.info("event=mqtt_broker_answers client=%s broker=%s: connecting now",
                        name, url)


async def _wait(url: BrokerUrl, delay: float, sleep: Callable[[float], Awaitable[object]],
                probe: float, rng: random.Random) -> bool:
    """Wait ``delay`` with ``sleep``, or less: until a broker that did not answer answers
    again. True when the wait was cut short."""
    if probe <= 0:
        await sleep(delay)
        return False
    waiting = asyncio.ensure_future(sleep(delay))
    back = asyncio.ensure_future(answers_again(url, probe, rng))
    try:
        await asyncio.wait({waiting, back}, return_when=asyncio.FIRST_COMPLETED)
        if back.done() and not back.result():  # the broker is up: wait in full
            await waiting
    finally:
        for task in (waiting, back):
            task.cancel()
        await asyncio.gather(waiting, back, return_exceptions=True)
    return back.done() and not back.cancelled() and back.exception() is None and back.result()


async def answers_again(url: BrokerUrl, every: float, rng: random.Random) -> bool:
    """Return True once the broker's port, refusing (or not answering) a TCP connection at
    first, accepts one; False at once if it accepts the first (the broker is up: the failure
    was MQTT's, and the backoff applies in full)."""
    refused = False
    while True:
        if await _tcp_answers(url.host, url.port, timeout=every):
            return refused
        refused = True
        await asyncio.sleep(rng.uniform(every / 2, every))


async def _tcp_answers(host: str, port: int, timeout: float) -> bool:
    """Does ``host:port`` accept a TCP connection (closed at once, nothing sent)?"""
    # asyncio.timeout, not wait_for: on Python 3.11 wait_for hands back the attempt's OSError
    # when a cancellation comes in the turn the attempt fails, and the caller's probing loop
    # would go on after being cancelled (a gateway stopped during an outage hung).
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
