"""AI results as DICOM Segmentation (PS3.3 A.51) with highdicom, and reading them back.

What we write follows IHE AI Results (AIR): every segment is AUTOMATIC, carries the
algorithm's identity (AlgorithmIdentificationSequence, PS3.3 C.8.20.2: name, family,
version, parameters) and a tracking ID/UID that the measurement report (see
:mod:`imaging.sr`) reuses; the SEG is a new series (new SeriesInstanceUID, Manufacturer
"radcloud") in the source's study, with the source's patient module, referencing the
source series. Content is checked strictly before it is returned: highdicom's own checks
at construction, then every value against its VR (pydicom's validators in RAISE mode).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from pydicom import Dataset, config
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage, generate_uid
from pydicom.valuerep import IS, DSdecimal, DSfloat, validate_value

from core.events import DERIVED_MANUFACTURER
from imaging.exceptions import ConformanceError, GeometryError, UnsupportedDataError
from imaging.volume import Volume, series_geometry

__all__ = [
    "AI_RESULT_NOTICE",
    "HEMORRHAGE",
    "MANUFACTURER",
    "AlgorithmIdentity",
    "SegmentSpec",
    "check_conformance",
    "read_segmentation",
    "write_segmentation",
]

logger = logging.getLogger(__name__)

MANUFACTURER = DERIVED_MANUFACTURER  # the gateway's tracker knows radcloud's own series by it
AI_RESULT_NOTICE = "AI-generated, not verified by a radiologist"
DEVICE_SERIAL_NUMBER = "radcloud-ai"
"""Software has no serial number; SEG requires one (Enhanced General Equipment, type 1)."""
CONTENT_LABEL = "AI_SEGMENTATION"
MAX_FRACTIONAL_VALUE = 255


@dataclass(frozen=True)
class AlgorithmIdentity:
    """The algorithm behind a result, as IHE AIR records it.

    Parameters
    ----------
    name
        Algorithm (model) name, e.g. ``"ich-seg"``.
    version
        Its version, e.g. ``"1.2.0"``.
    family
        Algorithm family code (CID 7162); "Artificial Intelligence" (DCM 123110).
    parameters
        Parameters worth recording (threshold, checkpoint), name → value.
    source
        Who provides the algorithm (AlgorithmSource / Algorithm Manufacturer).
    """

    name: str
    version: str
    family: Code = codes.DCM.ArtificialIntelligence
    parameters: Mapping[str, str] = field(default_factory=dict)
    source: str = MANUFACTURER

    def segmentation_identification(self) -> hd.AlgorithmIdentificationSequence:
        """The SEG's AlgorithmIdentificationSequence (PS3.3 C.8.20.2, Table 10-19)."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=self.family,
            version=self.version,
            source=self.source,
            parameters=dict(self.parameters) or None,
        )

    def sr_identification(self) -> hd.sr.AlgorithmIdentification:
        """The SR's Algorithm Identification (TID 4019)."""
        return hd.sr.AlgorithmIdentification(
            name=self.name,
            version=self.version,
            parameters=[f"{key}={value}" for key, value in self.parameters.items()] or None,
            family=self.family,
            manufacturer=self.source,
        )

    @property
    def device_observer_uid(self) -> str:
        """A UID for this algorithm version as an SR device observer (stable across runs)."""
        return str(generate_uid(entropy_srcs=[MANUFACTURER, self.name, self.version]))


@dataclass(frozen=True)
class SegmentSpec:
    """What one segment of a SEG is (PS3.3 C.8.20.2 Segment Description Macro).

    Parameters
    ----------
    label
        SegmentLabel, e.g. ``"Hemorrhage"``.
    property_category
        SegmentedPropertyCategoryCodeSequence (CID 7150).
    property_type
        SegmentedPropertyTypeCodeSequence (CID 7151 and others).
    description
        SegmentDescription, free text.
    tracking_id
        Human-readable TrackingID (defaults to the label).
    tracking_uid
        TrackingUID (a new one per SEG when ``None``).
    anatomic_region
        AnatomicRegionSequence, e.g. ``codes.SCT.Brain``.
    """

    label: str
    property_category: Code
    property_type: Code
    description: str | None = None
    tracking_id: str | None = None
    tracking_uid: str | None = None
    anatomic_region: Code | None = None

    def description_item(
        self, segment_number: int, algorithm: AlgorithmIdentity
    ) -> hd.seg.SegmentDescription:
        """This segment as highdicom's SegmentDescription (AUTOMATIC, with the algorithm)."""
        item = hd.seg.SegmentDescription(
            segment_number=segment_number,
            segment_label=self.label,
            segmented_property_category=self.property_category,
            segmented_property_type=self.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm.segmentation_identification(),
            tracking_uid=self.tracking_uid or generate_uid(),
            tracking_id=self.tracking_id or self.label,
            anatomic_regions=[self.anatomic_region] if self.anatomic_region else None,
        )
        if self.description:
            item.SegmentDescription = self.description
        return item


HEMORRHAGE = SegmentSpec(
    label="Hemorrhage",
    property_category=codes.SCT.MorphologicallyAbnormalStructure,
    property_type=codes.SCT.Hemorrhage,  # SCT 50960005
    description="Intracranial hemorrhage",
    tracking_id="hemorrhage",
    anatomic_region=codes.SCT.Brain,
)
"""The segment of an intracranial hemorrhage model."""


def write_segmentation(
    source_datasets: Sequence[Dataset],
    mask: np.ndarray,
    segments: Sequence[SegmentSpec],
    algorithm: AlgorithmIdentity,
    *,
    series_number: int = 901,
    fractional: bool = False,
    series_description: str | None = None,
    instance_number: int = 1,
) -> hd.seg.Segmentation:
    """Write a model's mask as a DICOM SEG referencing its source series.

    Parameters
    ----------
    source_datasets
        The source series' instances, as given to :func:`~imaging.volume.load_series`
        (headers suffice): single-frame images or one multi-frame image.
    mask
        Aligned with ``load_series(source_datasets)``: either a label map of shape
        (z, y, x) whose value ``n`` marks segment ``n`` (``segments[n - 1]``), or stacked
        segments (S, z, y, x), binary, or probabilities in [0, 1] when ``fractional``.
    segments
        One description per segment, in segment-number order.
    algorithm
        The algorithm that produced the mask.
    series_number
        SeriesNumber of the new SEG series.
    fractional
        Write a FRACTIONAL (PROBABILITY, 0..255) SEG instead of BINARY.
    series_description
        SeriesDescription; by default the algorithm, version and "AI SEG".
    instance_number
        InstanceNumber of the SEG.

    Returns
    -------
    highdicom.seg.Segmentation
        A conformant SEG; write it with ``dcmwrite(path, seg, enforce_file_format=True)``.

    Raises
    ------
    GeometryError
        If the mask's shape does not match the source volume.
    ValueError
        If the mask's values do not fit ``segments``/``fractional``.
    UnsupportedDataError
        If the source is several multi-frame instances (highdicom takes one).
    ConformanceError
        If the result breaks the standard (a bug worth reporting).
    """
    if not segments:
        raise ValueError("no segments given: expected at least one SegmentSpec")
    geometry = series_geometry(source_datasets)
    stacked = _stacked_mask(mask, geometry.shape, len(segments), fractional)
    indices = {s.dataset_index for s in geometry.slices}
    if len(geometry.slices) > 1 and len(indices) == 1:
        source_images = [source_datasets[next(iter(indices))]]
        frame_order = np.argsort([s.frame_number for s in geometry.slices])
        stacked = stacked[:, frame_order]  # highdicom wants the source's frame order
    elif len(indices) == len(geometry.slices):
        source_images = [source_datasets[s.dataset_index] for s in geometry.slices]
    else:
        raise UnsupportedDataError(
            f"source series has {len(indices)} multi-frame instances: a SEG can reference "
            "several single-frame images or one multi-frame image"
        )
    description = series_description or f"{algorithm.name} {algorithm.version} AI SEG"
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=np.moveaxis(stacked, 0, -1),  # (frames, rows, columns, segments)
        segmentation_type=(
            hd.seg.SegmentationTypeValues.FRACTIONAL
            if fractional
            else hd.seg.SegmentationTypeValues.BINARY
        ),
        segment_descriptions=[
            spec.description_item(number, algorithm)
            for number, spec in enumerate(segments, start=1)
        ],
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=MAX_FRACTIONAL_VALUE,
        content_description=AI_RESULT_NOTICE,
        content_label=CONTENT_LABEL,
        series_description=description[:64],
        omit_empty_frames=bool(np.any(stacked)),
    )
    check_conformance(seg)
    logger.info(
        "SEG %s: %d segments, %d frames for series %s",
        seg.SOPInstanceUID,
        len(segments),
        int(seg.NumberOfFrames),
        geometry.series_instance_uid,
    )
    return seg


def read_segmentation(
    seg_dataset: Dataset, source_volume: Volume, *, label_map: bool = False
) -> np.ndarray:
    """Put a SEG's frames back onto the slices of its source volume.

    Each frame goes to the slice whose SOP instance (and frame) its
    DerivationImageSequence/SourceImageSequence references; a frame without a usable
    reference is placed by its PlanePositionSequence on the volume's grid.

    Parameters
    ----------
    seg_dataset
        A Segmentation instance (a pydicom dataset or highdicom object).
    source_volume
        The volume the SEG was derived from (e.g. ``load_series`` of the source, or a
        NIfTI copy of it: then positions are used).
    label_map
        Return a (z, y, x) label map of segment numbers instead of stacked segments.

    Returns
    -------
    numpy.ndarray
        (S, z, y, x) with index ``s`` for segment ``s + 1``: uint8 0/1 for BINARY,
        float32 probabilities in [0, 1] for FRACTIONAL; or the (z, y, x) label map.

    Raises
    ------
    UnsupportedDataError
        Not a SEG; or ``label_map`` asked of overlapping or fractional segments.
    GeometryError
        Frames of another size, or a frame that lies on none of the volume's slices.
    """
    if seg_dataset.get("SOPClassUID") != SegmentationStorage:
        raise UnsupportedDataError(
            f"SOPClassUID {seg_dataset.get('SOPClassUID')}: expected Segmentation Storage "
            f"({SegmentationStorage})"
        )
    _, rows, columns = source_volume.shape
    if (int(seg_dataset.Rows), int(seg_dataset.Columns)) != (rows, columns):
        raise GeometryError(
            f"SEG frames are {seg_dataset.Rows}x{seg_dataset.Columns}: expected the source "
            f"volume's {rows}x{columns}"
        )
    fractional = seg_dataset.SegmentationType == "FRACTIONAL"
    segment_count = max(int(item.SegmentNumber) for item in seg_dataset.SegmentSequence)
    pixels = seg_dataset.pixel_array
    pixels = pixels.reshape(-1, rows, columns)
    out = np.zeros(
        (segment_count, *source_volume.shape), dtype=np.float32 if fractional else np.uint8
    )
    scale = 1.0 / float(seg_dataset.get("MaximumFractionalValue", 1)) if fractional else 1.0
    locate = _SliceLocator(seg_dataset, source_volume)
    for index, item in enumerate(seg_dataset.PerFrameFunctionalGroupsSequence):
        identification = locate.group(item, "SegmentIdentificationSequence")
        number = int(identification.ReferencedSegmentNumber) if identification else 1
        k = locate(item, index + 1)
        frame = pixels[index] * scale if fractional else pixels[index]
        out[number - 1, k] = np.maximum(out[number - 1, k], frame)
    if not label_map:
        return out
    if fractional:
        raise UnsupportedDataError("a FRACTIONAL SEG has no label map: read stacked segments")
    if np.any(out.sum(axis=0, dtype=np.int32) > 1):
        raise UnsupportedDataError("segments overlap: they cannot form one label map")
    labels = np.arange(1, segment_count + 1, dtype=np.uint16)[:, None, None, None]
    combined: np.ndarray = (out * labels).sum(axis=0)
    return combined.astype(np.uint8 if segment_count < 256 else np.uint16)


class _SliceLocator:
    """Finds the source volume slice of a SEG frame: by reference, else by position."""

    def __init__(self, seg_dataset: Dataset, volume: Volume) -> None:
        frame_numbers = volume.frame_numbers or (1,) * len(volume.sop_instance_uids)
        self.by_reference = {
            (uid, number): k
            for k, (uid, number) in enumerate(
                zip(volume.sop_instance_uids, frame_numbers, strict=True)
            )
        }
        self.volume = volume
        self.inverse = np.linalg.inv(volume.affine_lps())
        self.shared = (seg_dataset.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
        orientation = self.group(Dataset(), "PlaneOrientationSequence")
        if orientation is not None and "ImageOrientationPatient" in orientation:
            iop = np.array(orientation.ImageOrientationPatient, dtype=np.float64)
            expected = np.concatenate([volume.direction[:, 0], volume.direction[:, 1]])
            if not np.allclose(iop, expected, atol=1e-3) and not volume.is_2d:
                raise GeometryError(
                    f"SEG ImageOrientationPatient {iop.round(4).tolist()}: expected the "
                    f"source volume's {expected.round(4).tolist()}"
                )

    def group(self, item: Dataset, keyword: str) -> Dataset | None:
        """First item of a functional group macro, per-frame before shared (C.7.6.16)."""
        for group in (item, self.shared):
            sequence = group.get(keyword)
            if sequence:
                found: Dataset = sequence[0]
                return found
        return None

    def __call__(self, item: Dataset, frame_number: int) -> int:
        for derivation in item.get("DerivationImageSequence") or []:
            for source in derivation.get("SourceImageSequence") or []:
                key = (
                    str(source.ReferencedSOPInstanceUID),
                    int(source.get("ReferencedFrameNumber", 1) or 1),
                )
                if key in self.by_reference:
                    return self.by_reference[key]
        position = self.group(item, "PlanePositionSequence")
        if position is None or "ImagePositionPatient" not in position:
            raise GeometryError(
                f"SEG frame {frame_number} references no instance of the source volume and "
                "has no ImagePositionPatient to place it"
            )
        point = np.array([*position.ImagePositionPatient, 1.0], dtype=np.float64)
        k, j, i = (float(v) for v in (self.inverse @ point)[:3])
        slice_index = round(k)
        if (
            max(abs(j), abs(i)) > 0.01
            or abs(k - slice_index) > 0.05
            or not 0 <= slice_index < self.volume.shape[0]
        ):
            raise GeometryError(
                f"SEG frame {frame_number} at {point[:3].round(3).tolist()} lies at voxel "
                f"(k, j, i) = ({k:.3f}, {j:.3f}, {i:.3f}): expected a slice origin "
                f"(integer k in [0, {self.volume.shape[0]}), j = i = 0)"
            )
        return slice_index


def _stacked_mask(
    mask: np.ndarray, shape: tuple[int, int, int], segment_count: int, fractional: bool
) -> np.ndarray:
    """Validate ``mask`` and return it as (S, z, y, x): uint8 0/1 or float32 in [0, 1]."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape == shape:
        if np.issubdtype(mask.dtype, np.floating) and fractional:
            if segment_count != 1:
                raise ValueError(
                    f"a (z, y, x) probability mask describes one segment, not {segment_count}: "
                    "stack several as (S, z, y, x)"
                )
            stacked = mask[np.newaxis]
        else:
            fractions = _may_hold_fractions(mask) and not np.array_equal(mask, np.rint(mask))
            if fractions or mask.min() < 0:
                raise ValueError(
                    f"label map of dtype {mask.dtype} holds non-integer or negative values: "
                    "expected segment numbers (use fractional=True for probabilities)"
                )
            if mask.max() > segment_count:
                raise ValueError(
                    f"label map holds segment number {int(mask.max())}: expected at most "
                    f"{segment_count} (one SegmentSpec per number)"
                )
            numbers = np.arange(1, segment_count + 1)[:, None, None, None]
            stacked = (mask[np.newaxis] == numbers).astype(np.uint8)
    elif mask.ndim == 4 and mask.shape == (segment_count, *shape):
        stacked = mask
    else:
        raise GeometryError(
            f"mask has shape {mask.shape}: expected the source volume's {shape} (label map) "
            f"or {(segment_count, *shape)} (stacked segments)"
        )
    if fractional:
        values = stacked.astype(np.float32)
        if values.min() < 0 or values.max() > 1:
            raise ValueError(f"probabilities range {values.min()}..{values.max()}: expected [0, 1]")
        return values
    if not ((stacked == 0) | (stacked == 1)).all():  # np.isin's answer, a tenth of its time
        raise ValueError("binary segments hold values other than 0 and 1")
    return stacked.astype(np.uint8)


def _may_hold_fractions(mask: np.ndarray) -> bool:
    """Whether ``mask``'s dtype can hold non-integer values that ``np.rint`` would change.

    Booleans and integers of up to 32 bits cannot (``np.rint`` turns them into a float type
    that holds every value exactly), so the rounding check is skipped for them: it cost more
    than the rest of the SEG's mask handling.
    """
    integral = mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)
    return not (integral and mask.dtype.itemsize <= 4)


def check_conformance(dataset: Dataset) -> None:
    """Check every value of a dataset (nested sequences too) against its VR (PS3.5 6.2).

    Parameters
    ----------
    dataset
        The dataset about to be written.

    Raises
    ------
    ConformanceError
        Naming the first invalid attribute and why.
    """
    for element in dataset.iterall():
        _check_element(element)
    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is not None:
        for element in file_meta.iterall():
            _check_element(element)


def _check_element(element: DataElement) -> None:
    if element.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN") or element.value is None:
        return
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    for value in values:
        # IS/DS objects validate as the text they are encoded as
        text = str(value) if isinstance(value, (IS, DSfloat, DSdecimal)) else value
        try:
            validate_value(element.VR, text, config.RAISE)
        except ValueError as exc:
            raise ConformanceError(element.keyword or str(element.tag), str(exc)) from exc
