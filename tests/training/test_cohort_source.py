"""``radcloud train --source cohort:ID`` on a real Orthanc (alone) and a real SQLite database:
a research cohort made with ``radcloud cohorts create`` is exported de-identified by the
research de-identifier (burned-in instances withheld and counted) into a training folder that
carries no original identifier, and a tiny training run starts from it."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator

import pydicom
import pytest

from core.db.models import Study, StudyState
from core.secrets import load_secrets
from imaging.deid import Pseudonymizer, local_patient_key
from imaging.seg import HEMORRHAGE, AlgorithmIdentity, write_segmentation
from imaging.synthetic import generate_study
from radcloud.services import Supervisor, orthanc_component
from tests.audit_records import audit_records
from tests.conftest import Stack, settings_from_env, stack_env
from tests.orthanc_studies import StoredStudy, _hospital_id, add_label, identifiable, store
from training.data import read_labels_csv
from training.orthanc_source import SEG_SERIES_KEY
from training.split import Part, Split

pytestmark = pytest.mark.integration

NORTH, SOUTH = "Cohort North", "Cohort South"
READER = AlgorithmIdentity("radiologist-outline", "1")


@pytest.fixture(scope="module")
def radcloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A radcloud home whose Orthanc alone runs (no gateway, no serving)."""
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed: run `make install` (apt-get install orthanc)")
    env = stack_env(tmp_path_factory.mktemp("cohort-train"), cohort_min_cell_size=3)
    running = Stack(env, settings_from_env(env))
    supervisor = Supervisor(
        running.settings,
        [orthanc_component(running.settings, load_secrets(running.settings), as_edge=False)],
    )
    supervisor.up()
    try:
        yield running
    finally:
        supervisor.down()


def _store(
    radcloud: Stack, hospital: str, number: int, positive: bool, burned_in: bool
) -> StoredStudy:
    synthetic = generate_study("head-ct", number, 7, positive=positive)
    datasets = identifiable(synthetic, hospital, number)
    if burned_in:  # the last slice says it shows text: withheld, the volume one slice shorter
        max(datasets, key=lambda ds: int(ds.InstanceNumber)).BurnedInAnnotation = "YES"
    database = radcloud.database()
    with radcloud.archive() as orthanc:
        orthanc_id = store(orthanc, datasets)
        if positive:
            seg = write_segmentation(datasets, synthetic.mask, [HEMORRHAGE], READER)
            store(orthanc, [seg])
    with database.session() as session:
        row = Study(
            study_instance_uid=str(datasets[0].StudyInstanceUID),
            hospital_id=_hospital_id(session, hospital),
            patient_id=str(datasets[0].PatientID),
            patient_name=str(datasets[0].PatientName),
            accession_number=str(datasets[0].AccessionNumber),
            modalities="CT",
            state=StudyState.READY,
            instance_count=len(datasets),
            orthanc_id=orthanc_id,
        )
        session.add(row)
        session.flush()
        study = StoredStudy(synthetic, datasets, int(row.id), orthanc_id, hospital)
    region = {SEG_SERIES_KEY: str(seg.SeriesInstanceUID)} if positive else None
    add_label(database, study, "haemorrhage", positive, region)
    database.dispose()
    return study


def test_train_from_a_cohort_exports_deidentified_and_starts_a_run(radcloud: Stack) -> None:
    studies = [
        _store(radcloud, NORTH if n < 304 else SOUTH, n, positive=n % 2 == 0, burned_in=n == 301)
        for n in range(300, 308)
    ]
    created = radcloud.cli(
        "cohorts", "create", "--modality", "CT", "--body-part", "HEAD", "--name", "head CTs"
    )
    match = re.search(r"cohort (\d+)", created.stdout)
    assert match, created.stdout
    cohort_id = match.group(1)
    assert "Cohort North" in created.stdout and "total" in created.stdout
    for study in studies:
        for identifier in study.identifiers:
            assert identifier not in created.stdout
    # a split with both classes in every part, keyed by the pseudonyms the cohort gives
    key = load_secrets(radcloud.settings).deid_hmac_key
    research = Pseudonymizer(key, "research")
    parts = [Part.TRAIN] * 4 + [Part.VALIDATION] * 2 + [Part.TEST] * 2
    home = radcloud.settings.home
    split = Split.load_or_create(home / "training" / "head-ct" / "split.json")
    for study, part in zip(studies, parts, strict=True):
        patient = local_patient_key(study.hospital, str(study.datasets[0].PatientID))
        split.patients[research.patient_pseudonym(patient)] = part
    split.save()

    result = radcloud.cli(
        "train",
        "--task",
        "head-ct",
        "--preset",
        "tiny",
        "--source",
        f"cohort:{cohort_id}",
        "--epochs",
        "1",
        "--no-register",
    )
    assert "4 positive, 4 negative" in result.stdout, result.stdout
    folder = home / "training" / "head-ct" / f"cohort-{cohort_id}"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source"] == "cohort" and manifest["withheld_instances"] == 1
    assert manifest["deidentification"]["scope"] == "research"
    records = read_labels_csv(folder)
    assert {r.study_instance_uid for r in records} == {
        research.uid(s.study_instance_uid) for s in studies
    }
    # nothing under the task's training folder (the export, its NIfTI cache, the run)
    # carries an original identifier
    identifiers = {i for s in studies for i in s.identifiers}
    for path in (home / "training" / "head-ct").rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        leaked = [i for i in identifiers if i.encode() in data]
        assert not leaked, f"{path}: {leaked}"
    for path in (folder / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientID.startswith("ANON-")
    reports = sorted((home / "training" / "head-ct" / "runs").glob("*/report.json"))
    report = json.loads(reports[-1].read_text())
    assert report["split_counts"] == {"train": 4, "validation": 2, "test": 2}
    exports = [
        r
        for r in audit_records(home)
        if r["event_code"] == "110106" and r["resource_type"] == "cohort"
    ]
    assert len(exports) == 1 and exports[0]["detail"]["withheld_instances"] == 1
    assert exports[0]["detail"]["studies"] == 8
    assert not [i for i in identifiers if i in json.dumps(exports[0]["detail"])]
