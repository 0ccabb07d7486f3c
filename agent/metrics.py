"""The agent's Prometheus metrics, on a registry of its own (two agents in one process do not clash)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


def _registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


@dataclass
class AgentMetrics:
    registry: CollectorRegistry = field(default_factory=_registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.readings_signed = Counter(
            "meterchain_agent_readings_signed",
            "Readings signed and stored in the outbox",
            registry=r,
        )
        self.readings_published = Counter(
            "meterchain_agent_readings_published",
            "Publishes of readings the broker PUBACKed (republishes included)",
            registry=r,
        )
        self.readings_acked = Counter(
            "meterchain_agent_readings_acked",
            "Readings the backend confirmed as committed",
            registry=r,
        )
        self.readings_quarantined = Counter(
            "meterchain_agent_readings_quarantined",
            "Readings the backend rejected for good",
            ["reason"],
            registry=r,
        )
        self.publish_refused = Counter(
            "meterchain_agent_publish_refused",
            "PUBACKs with an MQTT 5 failure reason code (e.g. Not authorized)",
            ["reason"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "meterchain_agent_outbox_depth", "Readings waiting for the backend's ack", registry=r
        )
        self.meter_read_errors = Counter(
            "meterchain_agent_meter_read_errors",
            "Failed meter reads",
            ["meter", "kind"],
            registry=r,
        )
        self.broker_connects = Counter(
            "meterchain_agent_broker_connects",
            "Successful broker connections",
            ["protocol"],
            registry=r,
        )
        self.broker_failures = Counter(
            "meterchain_agent_broker_failures", "Lost or failed broker connections", registry=r
        )
        self.acks_refused = Counter(
            "meterchain_agent_acks_refused",
            "Acks refused (signature, encoding, foreign-device, ahead): an alarm",
            ["reason"],
            registry=r,
        )
        self.acks_unverified = Counter(
            "meterchain_agent_acks_unverified",
            "Acks taken without a control key to verify them: an alarm",
            registry=r,
        )
        self.clock_skipped = Counter(
            "meterchain_agent_clock_skipped_cycles",
            "Poll cycles not signed because the gateway clock was proven ahead or behind",
            registry=r,
        )
        self.clock_offset = Gauge(
            "meterchain_agent_clock_offset_seconds",
            "The gateway clock minus the backend's (middle of the bound from signed acks)",
            registry=r,
        )
        self.disk_full = Gauge(
            "meterchain_agent_disk_full",
            "1 while the outbox's disk is full (readings cannot be stored), else 0",
            registry=r,
        )
        self.disk_full_cycles = Counter(
            "meterchain_agent_disk_full_cycles",
            "Poll cycles not stored because the disk was full (signed later as one spanning reading)",
            registry=r,
        )
        self.gaps_declared = Counter(
            "meterchain_agent_gaps_declared",
            "Sequence numbers declared as a gap after the outbox was lost",
            registry=r,
        )

        # Receipts (agent/receipts.py, issue 17).
        self.receipts_verified = Counter(
            "meterchain_agent_receipts_verified",
            "Receipts verified (log key, witness policy, inclusion) and consistent with the view",
            registry=r,
        )
        self.receipts_refused = Counter(
            "meterchain_agent_receipts_refused",
            "Receipts that failed verification (encoding, foreign-device, checkpoint, witnesses, "
            "inclusion, ...); the view is unchanged",
            ["reason"],
            registry=r,
        )
        self.receipts_unproven = Counter(
            "meterchain_agent_receipts_unproven",
            "Receipts not taken because no consistency proof could be had then (offline)",
            registry=r,
        )
        self.log_size = Gauge(
            "meterchain_agent_log_size",
            "Tree size of the newest cosigned checkpoint this gateway verified",
            registry=r,
        )
        self.log_inconsistent = Gauge(
            "meterchain_agent_log_inconsistent",
            "1 once the log contradicted a checkpoint this gateway verified (rollback or fork): an alarm",
            registry=r,
        )
        self.log_inconsistencies = Counter(
            "meterchain_agent_log_inconsistencies",
            "Receipts whose checkpoint contradicts the view (each one counted)",
            registry=r,
        )

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose /metrics over HTTP (a daemon thread)."""
        start_http_server(port, addr=addr, registry=self.registry)
