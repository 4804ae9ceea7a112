"""Synthetic studies with ground truth: determinism, calibration, DICOM conformance, datasets,
baseline, and the ``radcloud synth`` command."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import typer
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation
from scipy import ndimage
from typer.testing import CliRunner

from imaging.synthetic import (
    LABELS_COLUMNS,
    DatasetExistsError,
    DatasetManifest,
    InvalidParameterError,
    SyntheticFinding,
    SyntheticStudy,
    SyntheticTask,
    baseline_score,
    ct_slice,
    evaluate_baseline,
    generate_study,
    intracranial_mask,
    positive_indices,
    render_ground_truth,
    roc_auc,
    write_dataset,
)
from radcloud.cli import synth

SEED = 20240


@pytest.fixture(scope="module")
def head_pair() -> tuple[SyntheticStudy, SyntheticStudy]:
    """One head CT study rendered with and without its haemorrhage."""
    return (
        generate_study("head-ct", 4, SEED, positive=True),
        generate_study("head-ct", 4, SEED, positive=False),
    )


@pytest.fixture(scope="module")
def chest() -> SyntheticStudy:
    return generate_study(SyntheticTask.CHEST_XR, 1, SEED, positive=True)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DatasetManifest]:
    """A small dataset of each task on disk."""
    root = tmp_path_factory.mktemp("synthetic")
    return {
        task.value: write_dataset(task, 3, SEED, root / task.value, positive_fraction=0.67)
        for task in SyntheticTask
    }


def _pixel_bytes(study: SyntheticStudy) -> list[bytes]:
    return [bytes(ds.PixelData) for ds in study.datasets]


def _uids(study: SyntheticStudy) -> list[tuple[str, str, str]]:
    return [(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in study.datasets]


@pytest.mark.parametrize("task", list(SyntheticTask))
def test_same_seed_gives_identical_pixels_and_uids(task: SyntheticTask) -> None:
    first, again = generate_study(task, 7, SEED), generate_study(task, 7, SEED)
    assert _pixel_bytes(first) == _pixel_bytes(again)
    assert _uids(first) == _uids(again)
    assert first.label == again.label and np.array_equal(first.mask, again.mask)
    other_seed, other_index = generate_study(task, 7, SEED + 1), generate_study(task, 8, SEED)
    for other in (other_seed, other_index):
        assert _pixel_bytes(other) != _pixel_bytes(first)
        assert not {uid for row in _uids(other) for uid in row} & {
            uid for row in _uids(first) for uid in row
        }


@pytest.mark.parametrize("task", list(SyntheticTask))
def test_label_finding_and_mask_agree(task: SyntheticTask) -> None:
    seen = set()
    for index in range(5):
        for positive in (True, False):
            study = generate_study(task, index, SEED, positive=positive)
            assert study.mask.shape == study.image.shape and study.mask.dtype == np.uint8
            assert set(np.unique(study.mask)) <= {0, 1}
            if positive:
                assert study.label == 1 and study.finding is not SyntheticFinding.NONE
                assert study.mask.sum() >= 3, f"study {index}: {study.finding} mask too small"
                seen.add(study.finding)
            else:
                assert study.label == 0 and study.finding is SyntheticFinding.NONE
                assert not study.mask.any()
    assert len(seen) >= 2, f"only {seen} in 5 positive {task} studies"


def test_the_finding_is_the_only_difference_between_renderings(
    head_pair: tuple[SyntheticStudy, SyntheticStudy],
) -> None:
    positive, negative = head_pair
    assert positive.image.shape == negative.image.shape
    change = np.abs(positive.image - negative.image)
    # blood is also painted under the inner table's partial-volume bone, which the label leaves
    # out (a radiologist does not outline bone): the change reaches a few voxels past the mask
    near = ndimage.binary_dilation(positive.mask > 0, iterations=6)
    assert float(change[near].sum()) > 0.95 * float(change.sum()) > 0


def test_head_ct_is_hu_calibrated(head_pair: tuple[SyntheticStudy, SyntheticStudy]) -> None:
    positive, negative = head_pair
    hu = negative.image
    assert hu.dtype == np.float32 and np.array_equal(hu, np.rint(hu))
    assert abs(float(np.median(hu[:, :6, :6])) + 1000) < 20, "air is not about -1000 HU"
    brain = intracranial_mask(hu) & (hu > -50) & (hu < 100)
    assert 22 < float(np.median(hu[brain])) < 42, "brain tissue is not 25-40 HU"
    assert float(hu.max()) > 1000, "no cortical bone"
    lesion = positive.mask > 0
    ring = ndimage.binary_dilation(lesion, iterations=2) & ~lesion & (hu > 0) & (hu < 60)
    assert float(positive.image[lesion].mean()) > float(positive.image[ring].mean())
    assert float(positive.image[lesion].mean()) > float(negative.image[lesion].mean()) + 5


def test_lesions_are_brighter_than_what_they_replace() -> None:
    kinds = set()
    for index in range(5):
        with_lesion = render_ground_truth("head-ct", index, SEED, positive=True)
        without = render_ground_truth("head-ct", index, SEED, positive=False)
        lesion = with_lesion.mask > 0
        gain = float(with_lesion.image[lesion].mean() - without.image[lesion].mean())
        assert gain > 3, f"{with_lesion.finding} of study {index} is only {gain:.1f} HU brighter"
        kinds.add(with_lesion.finding)
    assert len(kinds) == 3, kinds


def _dcmdump(path: Path) -> subprocess.CompletedProcess[str]:
    program = shutil.which("dcmdump")
    if program is None:
        pytest.fail("dcmdump is not installed: run `make install` (apt-get install dcmtk)")
    return subprocess.run([program, str(path)], capture_output=True, text=True, check=False)


def test_head_ct_files_are_conformant_ct_series(written: dict[str, DatasetManifest]) -> None:
    manifest = written["head-ct"]
    for study_dir in sorted(manifest.dicom_dir.iterdir()):
        files = sorted(study_dir.glob("*.dcm"))
        for path in files[:: max(1, len(files) // 4)]:
            dump = _dcmdump(path)
            assert dump.returncode == 0 and dump.stderr == "", dump.stderr
        datasets = [pydicom.dcmread(path) for path in files]
        assert {ds.SOPClassUID for ds in datasets} == {CTImageStorage}
        assert all(path.read_bytes()[:132] == bytes(128) + b"DICM" for path in files)
        assert {ds.file_meta.MediaStorageSOPInstanceUID for ds in datasets} == {
            ds.SOPInstanceUID for ds in datasets
        }
        assert len({(ds.StudyInstanceUID, ds.SeriesInstanceUID) for ds in datasets}) == 1
        assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
        assert datasets[0].StudyInstanceUID == study_dir.name
        datasets.sort(key=lambda ds: int(ds.InstanceNumber))
        z = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])
        assert 24 <= len(datasets) <= 32
        assert np.allclose(np.diff(z), float(datasets[0].SliceThickness), atol=1e-3)
        first = datasets[0]
        assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert 1.8 <= float(first.PixelSpacing[0]) <= 2.0 and (first.Rows, first.Columns) == (
            128,
            128,
        )
        assert (first.BitsAllocated, first.PixelRepresentation) == (16, 1)
        assert float(first.RescaleIntercept) == -1024 and first.Modality == "CT"
        assert (float(first.WindowCenter), float(first.WindowWidth)) == (40, 80)
        assert str(first.PatientName).startswith("SYNTHETIC^")
        assert first.StudyDescription.startswith("SYNTHETIC")
        assert first.SeriesDescription.startswith("SYNTHETIC")
        assert first.PatientID.startswith("SYNTH-head-ct-")
        hu = apply_modality_lut(first.pixel_array, first)
        assert hu.min() >= -1024 and hu.max() <= 3071


def test_chest_xr_file_is_a_12_bit_dx_for_presentation(
    written: dict[str, DatasetManifest], chest: SyntheticStudy
) -> None:
    for path in sorted(written["chest-xr"].dicom_dir.rglob("*.dcm")):
        dump = _dcmdump(path)
        assert dump.returncode == 0 and dump.stderr == "", dump.stderr
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == DigitalXRayImageStorageForPresentation and ds.Modality == "DX"
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
            16,
            12,
            11,
            0,
        )
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.PresentationLUTShape == "IDENTITY"
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert (ds.ViewPosition, ds.BodyPartExamined) == ("PA", "CHEST")
        assert 0.7 <= float(ds.PixelSpacing[0]) <= 1.4
        assert float(ds.ImagerPixelSpacing[0]) > float(ds.PixelSpacing[0])
        assert int(ds.pixel_array.min()) >= 0 and int(ds.pixel_array.max()) <= 4095
    image = chest.image
    assert image.shape == (1, 256, 256) and chest.spacing[1] == chest.spacing[2]
    assert image.min() >= 0 and image.max() <= 4095 and np.array_equal(image, np.rint(image))
    assert image.max() - image.min() > 2000, "the radiograph does not use its 12 bits"
    stored = chest.datasets[0].pixel_array
    assert np.array_equal(stored, image[0])


def test_write_dataset_layout_labels_and_masks(written: dict[str, DatasetManifest]) -> None:
    for task, manifest in written.items():
        out = manifest.out_dir
        assert manifest.studies == 3 and manifest.positives == 2 and manifest.negatives == 1
        readme = (out / "README.txt").read_text()
        assert "SYNTHETIC" in readme and "NOT FOR CLINICAL USE" in readme
        text = manifest.labels_csv.read_text()
        rows = list(csv.DictReader(io.StringIO(text)))
        assert tuple(rows[0]) == LABELS_COLUMNS and len(rows) == 3
        meta = json.loads(manifest.manifest_json.read_text())
        assert meta["synthetic"] is True and "SYNTHETIC" in meta["notice"]
        assert meta["labels_sha256"] == hashlib.sha256(text.encode()).hexdigest()
        assert (meta["task"], meta["seed"], meta["studies"]) == (task, SEED, 3)
        for index, row in enumerate(rows):
            assert (row["task"], row["seed"]) == (task, str(SEED))
            study = generate_study(task, index, SEED, positive=row["label"] == "1")
            assert row["study_instance_uid"] == study.study_instance_uid
            assert row["patient_id"] == study.patient_id == f"SYNTH-{task}-{index}"
            assert row["finding"] == study.finding.value
            assert len(list((manifest.dicom_dir / row["study_instance_uid"]).glob("*.dcm"))) == len(
                study.datasets
            )
            mask = nib.Nifti1Image.from_filename(out / row["mask"])
            data = np.asarray(mask.dataobj)
            assert data.shape == study.image.shape[::-1]  # (column, row, slice)
            assert np.array_equal(data.transpose(2, 1, 0), study.mask)
            if task == "head-ct":  # voxel (0, 0, 0) is the first slice's first pixel, in RAS
                x, y, z = (float(v) for v in study.datasets[0].ImagePositionPatient)
                assert np.allclose(mask.affine @ [0, 0, 0, 1], [-x, -y, z, 1], atol=1e-3)
                assert np.isclose(abs(mask.affine[2, 2]), study.spacing[0], atol=1e-3)


def test_write_dataset_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "something.txt").write_text("keep me")
    with pytest.raises(DatasetExistsError, match="not empty"):
        write_dataset("chest-xr", 1, SEED, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["something.txt"]


def test_bad_parameters_are_named() -> None:
    with pytest.raises(InvalidParameterError, match="'mri-knee'"):
        generate_study("mri-knee", 0, 1)
    with pytest.raises(ValueError, match="seed=-1"):
        generate_study("head-ct", 0, -1)
    with pytest.raises(InvalidParameterError, match=r"positive_fraction=1\.5"):
        positive_indices(10, 1, 1.5)


def test_positive_fraction_is_exact_and_studies_can_share_a_patient(tmp_path: Path) -> None:
    assert len(positive_indices(50, 3, 0.4)) == 20
    manifest = write_dataset(
        "chest-xr", 4, SEED, tmp_path / "out", positive_fraction=0.5, studies_per_patient=2
    )
    rows = list(csv.DictReader(manifest.labels_csv.open()))
    assert [row["patient_id"] for row in rows] == ["SYNTH-chest-xr-0"] * 2 + [
        "SYNTH-chest-xr-1"
    ] * 2
    assert sum(int(row["label"]) for row in rows) == 2


def test_roc_auc_counts_ties_as_half() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 1, 0, 1], [1, 1, 1, 1]) == 0.5
    with pytest.raises(InvalidParameterError):
        roc_auc([1, 1], [0.1, 0.2])


def _baseline_and_oracle(task: SyntheticTask, studies: int, seed: int) -> tuple[float, float]:
    abnormal = positive_indices(studies, seed, 0.4)
    scores, oracle, labels = [], [], []
    for index in range(studies):
        truth = render_ground_truth(task, index, seed, positive=index in abnormal)
        scores.append(baseline_score(task, truth.image))
        oracle.append(float(truth.mask.sum()))  # cheating: reads the ground truth
        labels.append(truth.label)
    return roc_auc(labels, scores), roc_auc(labels, oracle)


@pytest.mark.parametrize(("task", "studies"), [("head-ct", 25), ("chest-xr", 40)])
def test_the_hand_rule_is_imperfect_where_the_ground_truth_is_perfect(
    task: SyntheticTask, studies: int
) -> None:
    baseline, oracle = _baseline_and_oracle(SyntheticTask(task), studies, SEED)
    assert oracle == 1.0
    assert baseline < 0.95, f"the {task} hand rule solves the task (AUC {baseline:.3f})"


@pytest.mark.slow
@pytest.mark.parametrize("task", list(SyntheticTask))
def test_evaluate_baseline_on_100_studies_is_clearly_imperfect(task: SyntheticTask) -> None:
    report = evaluate_baseline(task, 100, SEED)
    assert report["positives"] == 40 and report["negatives"] == 60
    assert 0.5 <= report["auc"] < 0.95, report
    assert set(report["auc_by_finding"]) <= {f.value for f in SyntheticFinding}


def test_baseline_reads_nifti_ordered_arrays(
    head_pair: tuple[SyntheticStudy, SyntheticStudy],
) -> None:
    study = head_pair[0]
    nifti_order = np.ascontiguousarray(study.image.transpose(2, 1, 0))
    assert baseline_score("head-ct", nifti_order, layout="xyz") == baseline_score(
        "head-ct", study.image
    )
    with pytest.raises(InvalidParameterError, match="layout"):
        baseline_score("head-ct", study.image, layout="kji")


def test_synth_command_writes_a_dataset_and_prints_a_summary(tmp_path: Path) -> None:
    app = typer.Typer()
    synth.register(app)

    @app.callback()
    def main() -> None:
        """radcloud (test)"""

    out = tmp_path / "cxr"
    args = ["synth", "--task", "chest-xr", "--studies", "3", "--seed", "5", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--positive-fraction", "0.34"])
    assert result.exit_code == 0, result.output
    summary = " ".join(result.output.split())
    assert "SYNTHETIC chest-xr" in summary and "1 with a finding" in summary
    assert len((out / "labels.csv").read_text().splitlines()) == 4
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "not empty" in " ".join(again.output.split())


def test_ct_slice_still_makes_small_synthetic_slices() -> None:
    ds = pydicom.dcmread(io.BytesIO(ct_slice(size=8, seed=3)))
    assert str(ds.PatientName) == "SYNTHETIC^PHANTOM" and ds.pixel_array.shape == (8, 8)
