"""Prometheus metrics of the gateway (served by the gateway process on /metrics).

With ``RADCLOUD_GATEWAY_EDGE=orthanc`` the DIMSE counters (instances and bytes received, refusals
by reason, source ``dimse``) are counted in Orthanc's process, by the edge's plugin, which serves
them at ``GET /radcloud/edge/metrics`` on Orthanc's REST API. The gateway's ``/metrics`` adds them
to its own (:func:`exposition`), so that one scrape of the gateway sees every counter in either
mode; ``radcloud_gateway_edge_metrics_up`` says whether the edge's were read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "ASSOCIATIONS_OPEN",
    "CHANGE_FEED_POSITION",
    "EDGE_METRICS_UP",
    "FORWARD_LATENCY",
    "FORWARD_RESULTS",
    "INSTANCES_FAILED",
    "INSTANCES_RECEIVED",
    "INSTANCES_UNTRACKED",
    "INSTANCE_BYTES_RECEIVED",
    "SPOOL_BYTES",
    "SPOOL_FILES",
    "STUDIES_READY",
    "exposition",
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
_EDGE_UP = "radcloud_gateway_edge_metrics_up"
EDGE_METRICS_UP = Gauge(
    _EDGE_UP,
    "1 when this scrape includes the Orthanc edge's counters (gateway_edge=orthanc), 0 when "
    "Orthanc did not answer; absent with the pynetdicom edge",
)

_PREFIX = "radcloud_gateway_"


def exposition(edge_text: str | None = None, *, edge: bool = False) -> bytes:
    """This process's metrics in Prometheus text, with the Orthanc edge's counters added in.

    Parameters
    ----------
    edge_text
        What ``GET /radcloud/edge/metrics`` answered (Prometheus text from Orthanc's process),
        or ``None`` when it could not be read.
    edge
        Orthanc is the DICOM edge (``edge_text`` is expected; ``radcloud_gateway_edge_metrics_up``
        reports whether it came).

    Returns
    -------
    bytes
        One exposition: each of the edge's ``radcloud_gateway_*`` counters is summed with this
        process's counter of the same name and labels (the two processes count different
        sources: the edge ``dimse``, this process ``stow``), as Prometheus' multi-process mode
        does; gauges and histograms are this process's (the edge sets none of them).
    """
    theirs: list[Metric] = []
    if edge:
        EDGE_METRICS_UP.set(edge_text is not None)
        if edge_text:
            theirs = [
                family
                for family in text_string_to_metric_families(edge_text)
                if family.type == "counter" and family.name.startswith(_PREFIX)
            ]
    return generate_latest(_Merged(theirs, edge=edge))


class _Merged:
    """A collector view of :data:`REGISTRY` with ``edge_counters`` added in."""

    def __init__(self, edge_counters: Iterable[Metric], *, edge: bool) -> None:
        self._edge = {family.name: family for family in edge_counters}
        self._edge_mode = edge

    def collect(self) -> Iterator[Metric]:
        edge = dict(self._edge)
        for family in REGISTRY.collect():
            if family.name == _EDGE_UP and not self._edge_mode:
                continue
            theirs = edge.pop(family.name, None)
            yield family if theirs is None else _summed(family, theirs)
        yield from edge.values()  # counters this process never registered


def _summed(ours: Metric, theirs: Metric) -> Metric:
    merged = Metric(ours.name, ours.documentation, ours.type, ours.unit)
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for sample in [*ours.samples, *theirs.samples]:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        if key not in values:
            values[key] = sample.value
        elif sample.name.endswith("_created"):  # the earlier of the two starts
            values[key] = min(values[key], sample.value)
        else:
            values[key] += sample.value
    for (name, labels), value in values.items():
        merged.add_sample(name, dict(labels), value)
    return merged
