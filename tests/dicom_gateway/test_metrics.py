"""The gateway's ``/metrics`` exposition with the Orthanc edge's counters added in
(:func:`dicom_gateway.metrics.exposition`): one valid exposition, counters summed by name and
labels, the edge's gauges and the interpreter's own metrics left out. End to end (a real
Orthanc edge, the gateway's ``/metrics``): ``test_gateway_e2e.py`` on both edges."""

from __future__ import annotations

import uuid

from prometheus_client.parser import text_string_to_metric_families

from dicom_gateway import metrics


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    names: list[str] = []
    for family in text_string_to_metric_families(text.decode()):
        names.append(family.name)
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert len(names) == len(set(names)), "a metric family appears twice"
    return found


def test_the_edges_counters_are_summed_into_the_gateways() -> None:
    sender = f"M{uuid.uuid4().hex[:8]}"
    metrics.INSTANCES_RECEIVED.labels(sender, "stow").inc(2)
    edge = f"""# HELP radcloud_gateway_instances_received_total Instances accepted
# TYPE radcloud_gateway_instances_received_total counter
radcloud_gateway_instances_received_total{{sender="{sender}",source="dimse"}} 5.0
radcloud_gateway_instances_received_total{{sender="{sender}",source="stow"}} 1.0
# HELP radcloud_gateway_instances_failed_total Instances refused, by reason
# TYPE radcloud_gateway_instances_failed_total counter
radcloud_gateway_instances_failed_total{{reason="too_large",sender="{sender}",source="dimse"}} 1.0
# HELP radcloud_gateway_change_feed_position Position
# TYPE radcloud_gateway_change_feed_position gauge
radcloud_gateway_change_feed_position 987654321.0
# HELP python_gc_collections_total Collections
# TYPE python_gc_collections_total counter
python_gc_collections_total{{generation="0"}} 987654321.0
"""
    merged = _samples(metrics.exposition(edge, edge=True))
    received = "radcloud_gateway_instances_received_total"
    assert merged[(received, (("sender", sender), ("source", "stow")))] == 3.0
    assert merged[(received, (("sender", sender), ("source", "dimse")))] == 5.0
    failed = (("reason", "too_large"), ("sender", sender), ("source", "dimse"))
    assert merged[("radcloud_gateway_instances_failed_total", failed)] == 1.0
    assert merged[("radcloud_gateway_edge_metrics_up", ())] == 1.0
    assert merged[("python_gc_collections_total", (("generation", "0"),))] != 987654321.0
    assert merged[("radcloud_gateway_change_feed_position", ())] != 987654321.0  # ours only


def test_an_unreachable_edge_is_reported_and_the_gateways_own_metrics_still_served() -> None:
    sender = f"M{uuid.uuid4().hex[:8]}"
    metrics.INSTANCES_RECEIVED.labels(sender, "stow").inc()
    down = _samples(metrics.exposition(None, edge=True))
    assert down[("radcloud_gateway_edge_metrics_up", ())] == 0.0
    key = ("radcloud_gateway_instances_received_total", (("sender", sender), ("source", "stow")))
    assert down[key] == 1.0
    alone = _samples(metrics.exposition())  # the pynetdicom edge: no edge to read
    assert ("radcloud_gateway_edge_metrics_up", ()) not in alone
    assert alone[key] == 1.0
