"""What triage writes back for a head CT: the outline only for a study the model flags.

A unit test of :func:`serving.triage.writeback.write_back` with an in-memory archive (the whole
path against a real Orthanc is ``tests/serving/test_triage_e2e.py``, and with the shipped model
in the browser ``tests/web/test_shipped_model.py``).
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from core.archive import StoredInstance
from imaging.synthetic import generate_study
from models.card import ModelCard
from models.shipping import SHIPPED_DIR, shipped_bundles
from serving.inference import ModelOutput
from serving.triage.selection import SeriesData
from serving.triage.writeback import write_back

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


class _Archive:
    """Keeps what is stored (the one archive call write_back makes)."""

    def __init__(self) -> None:
        self.stored: list[pydicom.Dataset] = []

    def store_instance(self, data: bytes) -> StoredInstance:
        dataset = pydicom.dcmread(io.BytesIO(data))
        self.stored.append(dataset)
        key = str(len(self.stored))
        return StoredInstance(archive_id=key, series_archive_id=key, study_archive_id=key)


@pytest.mark.parametrize("critical", [True, False])
def test_the_outline_is_stored_only_for_a_flagged_study(critical: bool) -> None:
    study = generate_study("head-ct", 0, seed=31, positive=True)
    card = ModelCard.model_validate_json(
        (shipped_bundles(SHIPPED_DIR)["head-ct-haemorrhage"] / "card.json").read_text()
    )
    mask = study.mask.astype(np.uint8)
    output = ModelOutput(
        score=0.9 if critical else 0.1,
        critical=critical,
        threshold=0.5,
        mask=mask,
        lesion_volume_ml=float(mask.sum()) * 0.015,
        lesion_voxels=int(mask.sum()),
    )
    archive = _Archive()
    series = SeriesData(study.series_instance_uid, "CT", list(study.datasets))

    findings = write_back(archive, series, output, name="head", version="1", card=card)  # type: ignore[arg-type]

    classes = [str(dataset.SOPClassUID) for dataset in archive.stored]
    assert ("seg_sop_instance_uid" in findings) is critical
    assert (SEG_CLASS in classes) is critical
    assert "sr_sop_instance_uid" in findings  # the score is reported either way
    if critical:
        assert findings["lesion_slices"] == [int(s) for s in np.flatnonzero(mask.any(axis=(1, 2)))]
