"""The agent as one service: outbox, poller and publisher wired together from a config."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from meterchain.agent.acks import AckGuard, recent_alarms, record_alarm
from meterchain.agent.clock import Clock, ClockJudge, SystemClock, kernel_clock_sync
from meterchain.agent.config import AgentConfig, ConfigError
from meterchain.agent.exchange import MeterSerials
from meterchain.agent.homeassistant import (
    HomeAssistantPublisher,
    MeterDevice,
    MeterState,
    MonotonicGuard,
)
from meterchain.agent.meters import MeterSnapshot, MeterSource, modbus_sources
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.ocmf import OcmfCompanion
from meterchain.agent.outbox import Outbox, OutboxUnavailable, StorageFull
from meterchain.agent.profile_poller import ProfilePoller, dlms_pollers
from meterchain.agent.publisher import Publisher
from meterchain.agent.receipts import ConsistencySource, ReceiptKeeper
from meterchain.agent.recovery import open_outbox
from meterchain.agent.scheduler import Poller
from meterchain.agent.status import StatusReporter
from meterchain.agent.systemd import Notifier, run_watchdog
from meterchain.agent.telemetry import TelemetryPublisher
from meterchain.contract.errors import MeterchainError
from meterchain.contract.note import NoteVerifier
from meterchain.contract.reading import ClockSync
from meterchain.contract.signing import Signer, key_id, load_signer
from meterchain.contract.tlog_policy import parse_policy
from meterchain.mqtt import Backoff

log = logging.getLogger(__name__)


def load_device_key(path: Path) -> Signer:
    """The device's signer from its PEM file; warns when others may read the key."""
    try:
        pem = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(
            f"cannot read device key {path} ({exc.strerror}); create one with"
            " `meterchain agent keygen --out PATH`",
            key="key_path",
            path=str(path),
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("event=key_permissions path=%s mode=%o advice=chmod_600", path, mode & 0o777)
    return load_signer(pem)


class Agent:
    """Everything ``meterchain agent run`` does; tests run it as a task and cancel it to 'crash'."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        signer: Signer | None = None,
        sources: Sequence[MeterSource] | None = None,
        clock: Clock | None = None,
        metrics: AgentMetrics | None = None,
        clock_sync: Callable[[], ClockSync] = kernel_clock_sync,
        backoff: Backoff | None = None,
        status_interval: float = 60.0,
    ) -> None:
        self.config = config
        self.status_interval = status_interval
        self.signer = signer or load_device_key(config.key_path)
        # Modbus clients need a running event loop: built in run() unless given.
        self.sources: list[MeterSource] = list(sources) if sources is not None else []
        self._build_sources = sources is None
        self.clock = clock or SystemClock()
        # One judge of the gateway clock for the publisher (acks) and the poller (docs/agent.md);
        # a test clock may bring its own monotonic time, so its jumps are seen as steps; other
        # clocks (the demo's time lapse) leave it blind.
        monotonic = time.monotonic if isinstance(self.clock, SystemClock) else None
        self.judge = ClockJudge(monotonic=getattr(self.clock, "monotonic", monotonic))
        self.metrics = metrics or AgentMetrics()
        self.clock_sync = clock_sync
        self.backoff = backoff or Backoff()
        self.outbox: Outbox | None = None
        self.poller: Poller | None = None
        self.publisher: Publisher | None = None
        self.profile_pollers: list[ProfilePoller] = []
        self.started = asyncio.Event()
        self.homeassistant: HomeAssistantPublisher | None = None
        self.telemetry: TelemetryPublisher | None = None
        self.receipts: ReceiptKeeper | None = None
        self._models = {meter.name: meter.model for meter in config.meters}

    def _homeassistant(self) -> HomeAssistantPublisher | None:
        ha = self.config.homeassistant
        if ha is None:
            return None
        guard_path = ha.guard_path or self.config.outbox_path.parent / "homeassistant-guard.json"
        return HomeAssistantPublisher(
            ha.url,
            gateway_id=self.config.device_id,
            guard=MonotonicGuard.load(guard_path),
            discovery_prefix=ha.discovery_prefix,
        )

    def progress(self) -> dict[str, int]:
        """Each poller's completed work, for the systemd watchdog: every one must keep moving.

        The interval poller runs even without Modbus meters (it proves the event loop turns);
        each DLMS meter's profile poller has its own counter, so one hung port is seen.
        """
        counters = {"modbus": self.poller.cycles} if self.poller is not None else {}
        for poller in self.profile_pollers:
            counters[f"dlms {poller.source.name}"] = poller.progress
        return counters

    def _on_gap(self, first: int, last: int, why: str) -> None:
        """A lost outbox's sequences were declared a gap: counted and kept as an alarm."""
        self.metrics.gaps_declared.inc(last - first + 1)
        record_alarm(self.config.outbox_path, "gap", f"{why}: sequences {first}..{last} "
                     "declared a gap (their readings, if any, were lost with the outbox)")

    async def _open_outbox(self) -> Outbox:
        """The outbox; on a full disk the agent waits for space (once a minute it says so)
        instead of crash-looping under systemd."""
        config = self.config
        while True:
            try:
                return await open_outbox(
                    config.outbox_path, config.device_id, self.signer, config.key_path,
                    companion=OcmfCompanion(self.signer), on_gap=self._on_gap,
                )
            except StorageFull as exc:
                self.metrics.disk_full.set(1)
                log.error("event=disk_full device=%s outbox=%s detail=%r fix='free space there "
                          "(journalctl --vacuum-size=100M, old logs); the agent starts once it "
                          "can' retry_in=60", config.device_id, config.outbox_path, str(exc))
                await self.clock.sleep_until(self.clock.now() + 60)
            except OutboxUnavailable as exc:
                log.error("event=outbox_unavailable device=%s outbox=%s detail=%r fix='another process "
                          "may hold it (stop a second agent, or meterchain agent check), or the agent's user "
                          "may not read and write it and its folder; it is kept as it is' retry_in=10",
                          config.device_id, config.outbox_path, str(exc))
                await self.clock.sleep_until(self.clock.now() + 10)

    def _alarms(self) -> tuple[str, ...]:
        """The status message's alarm codes: those kept on disk, and a full disk, which cannot
        be kept there."""
        kept = set(recent_alarms(self.config.outbox_path))
        if self.poller is not None and self.poller.disk_full_since is not None:
            kept.add("disk-full")
        if self.receipts is not None and self.receipts.alarm is not None:
            kept.add("log-inconsistent")  # until someone looks: not only for a day
        return tuple(sorted(kept))

    def _meter_drift(self) -> dict[str, float]:
        """The DLMS meters' last measured clock drift, by serial (Modbus meters have no clock)."""
        return {serial: drift for p in self.profile_pollers for serial, drift in p.drift.items()}

    def _on_snapshot(self, source: MeterSource, snapshot: MeterSnapshot) -> None:
        """Live views of a meter read: telemetry and Home Assistant, when on (never blocks)."""
        if self.telemetry is not None:
            self.telemetry.update(source, snapshot)
        if self.homeassistant is not None:
            model = self._models.get(source.name, "")
            self.homeassistant.update(
                MeterDevice.for_model(model, snapshot.serial, source.name),
                MeterState(
                    snapshot.import_wh,
                    snapshot.export_wh,
                    power_w=snapshot.power_w,
                    voltage_dv=snapshot.voltage_dv,
                ),
            )

    def _receipt_keeper(self) -> ReceiptKeeper | None:
        """Receipts are taken with the provisioned log key (and witness policy), else not at all."""
        config = self.config
        if config.log_key is None:
            log.warning("event=no_log_key device=%s: receipts are not taken, so this gateway "
                        "would not notice a log that rolls back or forks; provision the gateway "
                        "again (docs/agent.md, \"Receipts\")", config.device_id)
            return None
        log_key = NoteVerifier.parse(config.log_key)
        try:
            return ReceiptKeeper(
                device=config.device_id, log_key=log_key,
                policy=parse_policy(config.witness_policy) if config.witness_policy else None,
                outbox_path=config.outbox_path, proofs=ConsistencySource(config.backend_url, log_key),
                metrics=self.metrics,
                on_alarm=lambda kind, detail: record_alarm(config.outbox_path, kind, detail),
            )
        except (sqlite3.Error, MeterchainError) as exc:  # the readings matter more: run without
            log.error("event=log_view_unreadable device=%s error=%r: receipts are not taken; move "
                      "the file aside (keep it: it may be evidence) and restart", config.device_id,
                      str(exc))
            record_alarm(config.outbox_path, "log-view-unreadable", str(exc))
            return None

    async def run(self) -> None:
        """Run until cancelled; the outbox is closed on the way out, whatever the reason."""
        config = self.config
        if self._build_sources:
            self.sources = list(modbus_sources([m for m in config.meters if m.dlms is None]))
        # Each reading gets its OCMF record signed in the same transaction (docs/format.md §12).
        # Beside the durable sequence reservation: a lost or corrupt outbox resumes above it
        # with a signed gap declaration (agent/recovery.py, docs/agent.md).
        outbox = await self._open_outbox()
        try:
            kid = key_id(self.signer.public_key_der)
            previous = await outbox.set_key_id(kid)
            if previous is not None and previous != kid:
                log.warning(
                    "event=key_changed device=%s old_key_id=%s new_key_id=%s"
                    " advice=rotate_enrolment_at_backend",
                    config.device_id,
                    previous.hex(),
                    kid.hex(),
                )
            self.outbox = outbox
            self.receipts = self._receipt_keeper()
            self.publisher = Publisher(
                device=config.device_id,
                broker=config.broker,
                outbox=outbox,
                clock=self.clock,
                metrics=self.metrics,
                ack_timeout=config.ack_timeout_seconds,
                backoff=self.backoff,
                status=StatusReporter(
                    device=config.device_id,
                    outbox=outbox,
                    clock=self.clock,
                    drift=self._meter_drift,
                    alarms=self._alarms,
                ),
                status_interval=self.status_interval,
                guard=AckGuard(config.device_id, config.control_key, config.key_path),
                on_alarm=lambda kind, detail: record_alarm(config.outbox_path, kind, detail),
                judge=self.judge,
                on_receipt=self.receipts.submit if self.receipts is not None else None,
            )
            if config.control_key is None:
                log.warning("event=no_control_key device=%s: acks are taken unverified, each "
                            "with an alarm; provision the gateway again to get the backend's "
                            "control key (docs/installer-guide.md)", config.device_id)
            self.poller = Poller(
                device=config.device_id,
                signer=self.signer,
                sources=self.sources,
                outbox=outbox,
                clock=self.clock,
                interval=config.interval_seconds,
                metrics=self.metrics,
                clock_sync=self.clock_sync,
                on_cycle=self.publisher.wake,
                on_snapshot=self._on_snapshot,
                serials=MeterSerials.beside(config.outbox_path),
                judge=self.judge,
                on_alarm=lambda kind, detail: record_alarm(config.outbox_path, kind, detail),
            )
            self.profile_pollers = dlms_pollers(
                config.meters,
                device=config.device_id,
                signer=self.signer,
                outbox=outbox,
                clock=self.clock,
                interval=config.interval_seconds,
                metrics=self.metrics,
                clock_sync=self.clock_sync,
                on_cycle=self.publisher.wake,
            )
            for profile_poller in self.profile_pollers:  # a meter's clock judges ours too
                profile_poller.judge = self.judge
            self.homeassistant = self._homeassistant()
            if config.telemetry_seconds and self.sources:
                self.telemetry = TelemetryPublisher(
                    device=config.device_id, broker=config.broker, sources=self.sources,
                    every=config.telemetry_seconds, clock=self.clock)
            self.metrics.outbox_depth.set(await outbox.depth())
            log.info(
                "event=agent_start device=%s key_id=%s meters=%d interval=%d outbox=%s"
                " next_seq=%d depth=%d",
                config.device_id,
                kid.hex(),
                len(self.sources),
                config.interval_seconds,
                config.outbox_path,
                await outbox.next_seq(),
                await outbox.depth(),
            )
            self.started.set()
            notifier = Notifier.from_environment()
            notifier.ready(status=f"device {config.device_id}, {len(self.sources)} meter(s)")
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self.publisher.run())
                    group.create_task(self.poller.run())
                    for profile_poller in self.profile_pollers:  # DLMS meters, one task each
                        group.create_task(profile_poller.run())
                    # systemd restarts the service if any poller stops completing cycles
                    # (stalled serial port or event loop); a no-op outside systemd.
                    group.create_task(
                        run_watchdog(
                            notifier, self.progress, max_stall=2 * config.interval_seconds + 120
                        )
                    )
                    if self.homeassistant is not None:
                        group.create_task(self.homeassistant.run())
                    if self.telemetry is not None:
                        group.create_task(self.telemetry.run())
                    if self.receipts is not None:
                        group.create_task(self.receipts.run())
            finally:
                notifier.stopping()
        finally:
            for source in self.sources:
                source.close()
            if self.receipts is not None:
                self.receipts.close()
                await self.receipts.proofs.close()
            await outbox.close()


def run_agent(config: AgentConfig, metrics_port: int | None = None) -> None:
    """Blocking entry point of ``meterchain agent run``."""
    metrics = AgentMetrics()
    if metrics_port is not None:
        metrics.serve(metrics_port)
    agent = Agent(config, metrics=metrics)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await agent.run()
        except asyncio.CancelledError:
            log.info("event=agent_stop reason=signal")

    asyncio.run(main())
