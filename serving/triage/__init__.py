"""The triage pipeline: a ready study → AI results in the archive, the database and the worklist.

Roles: :mod:`~serving.triage.outbox` (leasing study events, retries),
:mod:`~serving.triage.fetch` (the study's series from the image archive),
:mod:`~serving.triage.selection` (the series each model takes),
:mod:`~serving.triage.pipeline` (one event from claim to results),
:mod:`~serving.triage.writeback` (SEG and SR into the archive),
:mod:`~serving.triage.persist` (result rows, worklist and notification hooks, audit).
"""

from serving.exceptions import FailureReason, PlatformUnavailableError, UnprocessableStudyError
from serving.triage.outbox import TOPICS, release_claims
from serving.triage.persist import Outcome, OutcomeHook
from serving.triage.pipeline import Predict, TriagePipeline
from serving.triage.selection import SeriesData, select_series

__all__ = [
    "TOPICS",
    "FailureReason",
    "Outcome",
    "OutcomeHook",
    "PlatformUnavailableError",
    "Predict",
    "SeriesData",
    "TriagePipeline",
    "UnprocessableStudyError",
    "release_claims",
    "select_series",
]
