"""Prometheus metrics of the gateway (served by the gateway process on /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ASSOCIATIONS_OPEN",
    "CHANGE_FEED_POSITION",
    "FORWARD_LATENCY",
    "FORWARD_RESULTS",
    "INSTANCES_FAILED",
    "INSTANCES_RECEIVED",
    "INSTANCES_UNTRACKED",
    "INSTANCE_BYTES_RECEIVED",
    "SPOOL_BYTES",
    "SPOOL_FILES",
    "STUDIES_READY",
]

INSTANCES_RECEIVED = Counter(
    "radcloud_gateway_instances_received_total",
    "Instances accepted into the spool",
    ["sender", "source"],
)
INSTANCE_BYTES_RECEIVED = Counter(
    "radcloud_gateway_bytes_received_total",
    "Bytes of instances accepted into the spool",
    ["sender", "source"],
)
INSTANCES_FAILED = Counter(
    "radcloud_gateway_instances_failed_total",
    "Instances refused, by reason",
    ["sender", "source", "reason"],
)
SPOOL_FILES = Gauge("radcloud_gateway_spool_files", "Instances waiting in the spool")
SPOOL_BYTES = Gauge("radcloud_gateway_spool_bytes", "Bytes waiting in the spool")
FORWARD_LATENCY = Histogram(
    "radcloud_gateway_forward_seconds",
    "Time from an instance's receipt to Orthanc's confirmation",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
FORWARD_RESULTS = Counter(
    "radcloud_gateway_forward_total", "Forward attempts to Orthanc, by result", ["result"]
)
ASSOCIATIONS_OPEN = Gauge("radcloud_gateway_associations_open", "DIMSE associations open")
STUDIES_READY = Counter(
    "radcloud_gateway_study_events_total", "Study completeness events written", ["topic"]
)
CHANGE_FEED_POSITION = Gauge(
    "radcloud_gateway_change_feed_position",
    "Position in the archive's change feed up to which the study tracker has committed",
)
INSTANCES_UNTRACKED = Counter(
    "radcloud_gateway_instances_untracked_total",
    "New instances in the archive that no study counts: a study no hospital claimed "
    "(unclaimed) or a series radcloud wrote itself (derived)",
    ["reason"],
)
