"""Cross-hospital lookup: one search fanned out to every hospital's node, merged, with every
node's state (:mod:`~serving.federation.fanout`), as JSON or as FHIR ImagingStudy
(:mod:`~serving.federation.fhir`)."""

from serving.federation.fanout import StudyNode, classify_failure, fan_out, merge_studies
from serving.federation.fhir import endpoint_id, imaging_study_bundle
from serving.federation.model import (
    FederatedAnswer,
    FederatedStudy,
    NodeAnswer,
    NodeKind,
    NodeState,
    StudyQuery,
)

__all__ = [
    "FederatedAnswer",
    "FederatedStudy",
    "NodeAnswer",
    "NodeKind",
    "NodeState",
    "StudyNode",
    "StudyQuery",
    "classify_failure",
    "endpoint_id",
    "fan_out",
    "imaging_study_bundle",
    "merge_studies",
]
