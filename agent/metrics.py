"""The agent's Prometheus metrics, on a registry of its own (two agents in one process do not clash)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

PREFIX = "meterchain_agent_"


def _registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def _counter(registry: CollectorRegistry, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
    """``meterchain_agent_<name>``: every agent metric carries the prefix, and nothing else differs."""
    return Counter(PREFIX + name, help_text, labels, registry=registry)


def _gauge(registry: CollectorRegistry, name: str, help_text: str) -> Gauge:
    return Gauge(PREFIX + name, help_text, registry=registry)


@dataclass
class AgentMetrics:
    registry: CollectorRegistry = field(default_factory=_registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.readings_signed = _counter(r, "readings_signed", "Readings signed and stored in the outbox")
        self.readings_published = _counter(
            r, "readings_published", "Publishes of readings the broker PUBACKed (republishes included)")
        self.readings_acked = _counter(r, "readings_acked", "Readings the backend confirmed as committed")
        self.readings_quarantined = _counter(
            r, "readings_quarantined", "Readings the backend rejected for good", ("reason",))
        self.publish_refused = _counter(
            r, "publish_refused", "PUBACKs with an MQTT 5 failure reason code (e.g. Not authorized)", ("reason",))
        self.outbox_depth = _gauge(r, "outbox_depth", "Readings waiting for the backend's ack")
        self.meter_read_errors = _counter(r, "meter_read_errors", "Failed meter reads", ("meter", "kind"))
        self.broker_connects = _counter(r, "broker_connects", "Successful broker connections", ("protocol",))
        self.broker_failures = _counter(r, "broker_failures", "Lost or failed broker connections")
        self.acks_refused = _counter(
            r, "acks_refused", "Acks refused (signature, encoding, foreign-device, ahead): an alarm", ("reason",))
        self.acks_unverified = _counter(
            r, "acks_unverified", "Acks taken without a control key to verify them: an alarm")
        self.clock_skipped = _counter(
            r, "clock_skipped_cycles", "Poll cycles not signed because the gateway clock was proven ahead or behind")
        self.clock_offset = _gauge(
            r, "clock_offset_seconds", "The gateway clock minus the backend's (middle of the bound from signed acks)")
        self.disk_full = _gauge(
            r, "disk_full", "1 while the outbox's disk is full (readings cannot be stored), else 0")
        self.disk_full_cycles = _counter(
            r, "disk_full_cycles",
            "Poll cycles not stored because the disk was full (signed later as one spanning reading)")
        self.gaps_declared = _counter(
            r, "gaps_declared", "Sequence numbers declared as a gap after the outbox was lost")

        # Receipts (agent/receipts.py, issue 17).
        self.receipts_verified = _counter(
            r, "receipts_verified",
            "Receipts verified (log key, witness policy, inclusion) and consistent with the view")
        self.receipts_refused = _counter(
            r, "receipts_refused",
            "Receipts that failed verification (encoding, foreign-device, checkpoint, witnesses, "
            "inclusion, ...); the view is unchanged", ("reason",))
        self.receipts_unproven = _counter(
            r, "receipts_unproven", "Receipts not taken because no consistency proof could be had then (offline)")
        self.log_size = _gauge(r, "log_size", "Tree size of the newest cosigned checkpoint this gateway verified")
        self.log_inconsistent = _gauge(
            r, "log_inconsistent",
            "1 once the log contradicted a checkpoint this gateway verified (rollback or fork): an alarm")
        self.log_inconsistencies = _counter(
            r, "log_inconsistencies", "Receipts whose checkpoint contradicts the view (each one counted)")

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose /metrics over HTTP (a daemon thread)."""
        start_http_server(port, addr=addr, registry=self.registry)
