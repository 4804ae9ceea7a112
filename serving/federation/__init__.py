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
from serving.federation.service import FederatedSearch, SearchRequest

__all__ = [
    "FederatedAnswer",
    "FederatedSearch",
    "FederatedStudy",
    "NodeAnswer",
    "NodeKind",
    "NodeState",
    "SearchRequest",
    "StudyNode",
    "StudyQuery",
    "classify_failure",
    "endpoint_id",
    "fan_out",
    "imaging_study_bundle",
    "merge_studies",
]
