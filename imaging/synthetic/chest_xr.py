"""PA chest radiograph phantoms with a nodule or a pneumothorax as ground truth.

The phantom is a projection: a map of attenuation (arbitrary units: body soft tissue ~0.7,
aerated lung removing up to ~0.4, a rib adding ~0.07) drawn in body coordinates (mm, x to the
patient's left, y downwards from the lung apices), sampled through a slightly rotated (4 degrees
at most) and shifted patient onto 256 x 256 pixels of 1.27-1.4 mm, processed "for
presentation" (gain, offset and gamma varying per study, unsharp masking, quantum noise,
scaled to 80-97 % of the range) and stored in 12 bits, MONOCHROME2 (dense is bright).

Anatomy varies per patient (size, lung width, heart size, diaphragm height, sex): body outline
with neck and shoulders, two lung fields with apices and costophrenic angles, heart,
mediastinum, aortic knob, trachea, spine, hemidiaphragms and gastric bubble, 10 posterior and 6
anterior ribs per side, clavicles, breast shadows, and a vessel tree branching from each hilum
(lung markings). Confounders for a brightest-spot rule: rib crossings, hila and vessels seen
end-on, nipple shadows (40 %), exposure. Findings (60 % opacities, 40 % pneumothoraces): a
nodule (4-15 mm radius) or a ragged consolidation (15-35 mm), some of low contrast; or a
pneumothorax along the apex and lateral wall (6-25 mm wide) with a pleural line and no lung
markings beyond it. The mask marks the opacity, or the pleural air of the pneumothorax.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DigitalXRayImageStorageForPresentation
from scipy import ndimage

from imaging.synthetic.dicom import (
    RandomStream,
    StudyIdentity,
    SyntheticFinding,
    SyntheticTask,
    base_dataset,
    patient_sex,
    random_stream,
)

__all__ = ["ChestXrPhantom", "chest_xr_datasets", "render_chest_xr"]

logger = logging.getLogger(__name__)

_MATRIX = 256
_MAX_VALUE = 4095  # 12 bits stored
_MAGNIFICATION = 1.1  # source-image / source-object distance of a PA chest at 180 cm


@dataclass(frozen=True, eq=False)
class ChestXrPhantom:
    """A rendered chest radiograph: stored values, ground truth and acquisition parameters."""

    pixels: np.ndarray  # (rows, columns) float32, integer stored values 0..4095
    mask: np.ndarray  # uint8, same shape
    finding: SyntheticFinding
    pixel_spacing: float  # in the patient plane (PixelSpacing)
    kvp: float
    exposure_mas: float
    window: tuple[float, float]  # centre, width
    details: dict[str, float] = field(default_factory=dict)  # finding: size_mm, contrast
    clean: np.ndarray | None = None  # stored values without noise (``keep_clean=True`` only)


class _Body:
    """Body coordinates of every pixel and the patient's build."""

    def __init__(
        self, anatomy: np.random.Generator, pose: np.random.Generator, *, female: bool
    ) -> None:
        self.scale = float(anatomy.uniform(0.8, 0.97))
        self.female = female
        self.imager_spacing = float(pose.uniform(1.4, 1.54))
        self.pixel = self.imager_spacing / _MAGNIFICATION
        theta = math.radians(float(pose.uniform(-4, 4)))
        shift_x, shift_y = pose.uniform(-10, 10), pose.uniform(-45, -25)
        centre = (_MATRIX - 1) / 2
        grid = (np.arange(_MATRIX, dtype=np.float32) - centre) * self.pixel
        gx, gy = grid[None, :], (grid + centre * self.pixel)[:, None]
        cos, sin = np.float32(math.cos(theta)), np.float32(math.sin(theta))
        self._cos, self._sin = math.cos(theta), math.sin(theta)
        self._shift = (float(shift_x), float(shift_y))
        self.x = ((cos * gx - sin * (gy - 150) - shift_x) / self.scale).astype(np.float32)
        self.y = ((sin * gx + cos * (gy - 150) + 150 + shift_y) / self.scale).astype(np.float32)

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """(row, column) of body point (x, y)."""
        a = x * self.scale + self._shift[0]
        b = y * self.scale - 150.0 - self._shift[1]
        gx = self._cos * a + self._sin * b
        gy = -self._sin * a + self._cos * b + 150.0
        return gy / self.pixel, gx / self.pixel + (_MATRIX - 1) / 2


def _ramp(signed_mm: np.ndarray, width: float) -> np.ndarray:
    return np.clip(0.5 + signed_mm / width, 0.0, 1.0)


def _band(body: _Body, curve_x: np.ndarray, curve_y: np.ndarray, half_width: float) -> np.ndarray:
    """Chord length profile (0..1) of a tube of ``half_width`` mm along a curve y = f(x)."""
    order = np.argsort(curve_x)
    cx, cy = curve_x[order], curve_y[order]
    inside = (body.x >= cx[0]) & (body.x <= cx[-1])
    fy = np.interp(body.x, cx, cy)
    slope = np.gradient(cy, cx)
    cos = 1.0 / np.sqrt(1.0 + np.interp(body.x, cx, slope) ** 2)
    distance = np.abs(body.y - fy) * cos
    chord = np.sqrt(np.clip(1.0 - (distance / half_width) ** 2, 0.0, None))
    return np.asarray(chord * inside, dtype=np.float32)


def _segment(
    body: _Body, start: tuple[float, float], end: tuple[float, float], radius: float
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Chord-length profile of a vessel segment inside its bounding box of pixels."""
    margin = radius + 2 * body.pixel
    rows, cols = [], []
    for px, py in (start, end):
        row, col = body.to_pixel(px, py)
        rows.append(row)
        cols.append(col)
    pad = margin / body.pixel * 1.5 + 2
    r0, r1 = max(0, int(min(rows) - pad)), min(_MATRIX, int(max(rows) + pad) + 1)
    c0, c1 = max(0, int(min(cols) - pad)), min(_MATRIX, int(max(cols) + pad) + 1)
    if r0 >= r1 or c0 >= c1:
        return None
    box = (slice(r0, r1), slice(c0, c1))
    x, y = body.x[box], body.y[box]
    ex, ey = end[0] - start[0], end[1] - start[1]
    t = np.clip(((x - start[0]) * ex + (y - start[1]) * ey) / max(ex * ex + ey * ey, 1e-6), 0, 1)
    distance = np.hypot(x - start[0] - t * ex, y - start[1] - t * ey)
    return box, np.sqrt(np.clip(1.0 - (distance / radius) ** 2, 0.0, None))


def _lungs(body: _Body, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lung occupancy, heart occupancy and the chest-wall distance field (mm)."""
    x, y, w = body.x, body.y, body.pixel
    width = float(rng.uniform(0.92, 1.06))
    lateral = width * (98.0 + 46.0 * np.sqrt(np.clip(y / 190.0, 0, 1)))
    apex = (
        0.0055 * np.clip(np.abs(x) - 58.0, 0, None) ** 2
        + 0.01 * np.clip(58.0 - np.abs(x), 0, None) ** 2
    )
    dome = np.where(x < 0, 222.0, 236.0) + float(rng.uniform(-12, 12))
    hemi = dome + 0.0032 * (np.abs(x) - 55.0) ** 2 * (np.abs(x) > 55.0)
    heart_size = float(rng.uniform(0.85, 1.15))
    hx, hy = x - 22.0, y - 222.0
    rot = math.radians(-28.0)
    u = (math.cos(rot) * hx + math.sin(rot) * hy) / (82.0 * heart_size)
    v = (-math.sin(rot) * hx + math.cos(rot) * hy) / (62.0 * heart_size)
    heart = _ramp((1.0 - np.sqrt(u * u + v * v)) * 60.0, 3 * w)
    medial = 22.0 + 8.0 * np.clip((y - 40.0) / 80.0, 0, 1)
    shape = np.minimum.reduce([lateral - np.abs(x), np.abs(x) - medial, hemi - y, y - apex])
    lung = _ramp(shape, 2 * w) * (1.0 - heart)
    wall = np.minimum(lateral - np.abs(x), y - apex)  # distance to apex / lateral chest wall
    return lung.astype(np.float32), heart.astype(np.float32), wall.astype(np.float32)


def _ribs(body: _Body, rng: np.random.Generator) -> np.ndarray:
    """Posterior and anterior ribs and clavicles (attenuation)."""
    density = np.zeros_like(body.x)
    spacing = float(rng.uniform(23, 27))
    xi = np.linspace(0, 1.15, 40)
    for side in (-1.0, 1.0):
        for i in range(10):
            y0 = -8.0 + i * spacing + float(rng.normal(0, 1.5))
            lateral = 25.0 + 125.0 * xi
            curve = y0 - 14.0 * xi + 52.0 * xi**4
            half = 4.5 + 0.2 * i
            tube = _band(body, side * lateral, curve, half)
            marrow = _band(body, side * lateral, curve, half * 0.7)
            density += 0.075 * tube - 0.04 * marrow
        for j in range(6):
            y_lat = 12.0 + j * spacing * 1.15 + float(rng.normal(0, 2))
            lateral = np.linspace(45.0, 150.0, 30)
            curve = y_lat + 0.55 * (150.0 - lateral) - 0.0012 * (150.0 - lateral) ** 2
            density += 0.035 * _band(body, side * lateral, curve, 7.0)
        t = np.linspace(0, 1, 30)
        lateral = 12.0 + 150.0 * t
        curve = -12.0 - 28.0 * t + 8.0 * np.sin(2 * math.pi * t) + float(rng.normal(0, 4))
        density += 0.16 * _band(body, side * lateral, curve, 7.5)
    return density


def _vessels(body: _Body, rng: np.random.Generator) -> np.ndarray:
    """Pulmonary vessel tree from each hilum (lung markings)."""
    density = np.zeros_like(body.x)
    for side, hilum_y in ((-1.0, 150.0), (1.0, 140.0)):
        # angle 0 points laterally, positive angles downwards
        stack = [((side * 48.0, hilum_y), float(a), 3.2, 0) for a in (-1.1, -0.3, 0.5, 1.2)]
        while stack:
            (sx, sy), angle, radius, depth = stack.pop()
            angle += float(rng.normal(0, 0.15))
            length = float(rng.uniform(22, 38)) * 0.82**depth
            ex, ey = sx + side * length * math.cos(angle), sy + length * math.sin(angle)
            drawn = _segment(body, (sx, sy), (ex, ey), radius)
            if drawn is not None:
                box, chord = drawn
                density[box] += 0.045 * radius / 3.6 * chord
            if depth < 4:
                for turn in (-1.0, 1.0):
                    stack.append(
                        (
                            (ex, ey),
                            angle + turn * float(rng.uniform(0.2, 0.55)),
                            radius * 0.75,
                            depth + 1,
                        )
                    )
    return density


def render_chest_xr(
    seed: int, index: int, patient_index: int, positive: bool, *, keep_clean: bool = False
) -> ChestXrPhantom:
    """Render chest radiograph ``index`` (of patient ``patient_index``) of dataset ``seed``.

    The anatomy depends on the patient only; positioning, exposure, noise and the finding on the
    study, so the normal and the abnormal rendering of a study differ by the finding alone.
    ``keep_clean`` also returns the image without noise (the oracle of :mod:`training.oracle`).
    """
    task = SyntheticTask.CHEST_XR
    anatomy = random_stream(task, seed, patient_index, RandomStream.ANATOMY)
    pose = random_stream(task, seed, index, RandomStream.POSE)
    findings = random_stream(task, seed, index, RandomStream.FINDING)
    noise = random_stream(task, seed, index, RandomStream.NOISE)
    body = _Body(anatomy, pose, female=patient_sex(task, seed, patient_index) == "F")
    x, y, w = body.x, body.y, body.pixel
    neck = 58.0 + 120.0 * np.clip((y + 20.0) / 45.0, 0, 1) ** 0.7
    outline = np.minimum(neck, 165.0 + 10.0 * np.clip((y - 100.0) / 150.0, 0, 1))
    body_mask = _ramp(outline - np.abs(x), 3 * w)
    soft = 0.55 * np.sqrt(np.clip(1.0 - (np.abs(x) / (outline + 1.0)) ** 2, 0, 1)) * body_mask
    soft += 0.15 * body_mask
    lung, _, wall = _lungs(body, anatomy)
    lung_depth = ndimage.gaussian_filter(lung, 12.0 / w)
    density = soft - 0.42 * lung * (0.55 + 0.45 * np.clip(lung_depth / 0.8, 0, 1))
    mediastinum = _ramp(26.0 + 0.08 * np.clip(y - 60.0, 0, None) - np.abs(x - 4.0), 2 * w)
    density += 0.03 * mediastinum * _ramp(y + 40.0, w)
    density += 0.04 * _ramp(18.0 - np.hypot(x - 34.0, y - 82.0), 2 * w)  # aortic knob
    density += 0.045 * _ramp(19.0 - np.abs(x), w) * (1.0 + 0.2 * np.cos(2 * math.pi * y / 27.0))
    trachea = _ramp(9.0 - np.abs(x - 0.05 * (y - 40.0)), w) * _ramp(112.0 - y, w)
    density -= 0.09 * trachea * body_mask
    if anatomy.random() < 0.6:  # gastric bubble under the left hemidiaphragm
        bubble = (np.hypot((x - 75.0) / 30.0, (y - 262.0) / 14.0) < 1.0).astype(np.float32)
        density -= 0.1 * ndimage.gaussian_filter(bubble, 1.0)
    if body.female:
        for side in (-1.0, 1.0):
            breast = np.hypot((x - side * 85.0) / 75.0, (y - 245.0) / 55.0)
            density += 0.07 * np.sqrt(np.clip(1.0 - breast**2, 0, 1))
    if anatomy.random() < 0.4:  # nipple shadows, one or both
        for side in [-1.0, 1.0] if anatomy.random() < 0.6 else [float(anatomy.choice([-1.0, 1.0]))]:
            nipple = np.hypot(
                x - side * float(anatomy.uniform(70, 95)), y - float(anatomy.uniform(195, 240))
            )
            density += float(anatomy.uniform(0.03, 0.07)) * _ramp(
                float(anatomy.uniform(3.5, 6.0)) - nipple, w
            )
    markings = _vessels(body, anatomy) * lung
    markings += 0.012 * ndimage.gaussian_filter(anatomy.standard_normal(lung.shape), 1.5) * lung
    finding, mask = SyntheticFinding.NONE, np.zeros(lung.shape, dtype=bool)
    details: dict[str, float] = {}
    if positive:
        finding, mask, change, markings, details = _render_finding(
            body, lung, wall, markings, findings
        )
        density += change
    density += markings + _ribs(body, anatomy)
    phantom = _present(body, density, mask, finding, pose=pose, noise=noise, keep_clean=keep_clean)
    phantom.details.update(details)
    return phantom


def _render_finding(
    body: _Body, lung: np.ndarray, wall: np.ndarray, markings: np.ndarray, rng: np.random.Generator
) -> tuple[SyntheticFinding, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """A nodule/consolidation or a pneumothorax: its mask, attenuation change, new markings and
    details (``size_mm``: radius or pleural gap; ``contrast``: attenuation of the opacity or of
    the pleural line)."""
    x, y, w = body.x, body.y, body.pixel
    if rng.random() < 0.6:
        consolidation = rng.random() < 0.35
        low, high = (15.0, 35.0) if consolidation else (4.0, 15.0)
        radius = float(np.exp(rng.uniform(math.log(low), math.log(high))))
        inner = ndimage.distance_transform_edt(lung > 0.95) * w
        candidates = np.argwhere(inner > min(radius * 0.6, 25.0))
        if candidates.size == 0:
            candidates = np.argwhere(lung > 0.5)
        row, col = candidates[int(rng.integers(len(candidates)))]
        cx, cy = float(x[row, col]), float(y[row, col])
        stretch = rng.uniform(0.75, 1.3, size=2)
        rho = np.hypot((x - cx) / (radius * stretch[0]), (y - cy) / (radius * stretch[1]))
        if consolidation:  # airspace filling: ragged outline, flat profile
            ragged = ndimage.gaussian_filter(rng.standard_normal(rho.shape), 5.0 / w)
            rho = rho + 0.25 * ragged / float(ragged.std())
            profile = np.clip((1.0 - rho) * 3.0, 0, 1)
            contrast = float(rng.uniform(0.1, 0.22))
        else:
            profile = np.sqrt(np.clip(1.0 - rho**2, 0, 1))
            contrast = float(rng.uniform(0.07, 0.18))
        change = contrast * profile * (lung > 0.2)
        logger.debug("chest nodule r=%.1f mm contrast %.3f", radius, contrast)
        return (
            SyntheticFinding.NODULE,
            (rho <= 1.0) & (lung > 0.2),
            change.astype(np.float32),
            markings,
            {"size_mm": radius, "contrast": contrast, "consolidation": float(consolidation)},
        )
    side = float(rng.choice([-1.0, 1.0]))
    gap = float(rng.uniform(6.0, 25.0))
    lowest = float(rng.uniform(100.0, 230.0))
    taper = gap * np.clip(1.0 - ((y - 20.0) / (lowest - 20.0)) ** 4, 0, None)
    pocket = (side * x > 0) & (wall < taper) & (lung > 0.5)
    soft_pocket = ndimage.gaussian_filter(pocket.astype(np.float32), 0.7)
    edge = ndimage.binary_dilation(pocket) & ~pocket & (lung > 0.5)
    line = float(rng.uniform(0.015, 0.035))
    change = -0.05 * soft_pocket * lung + line * edge
    logger.debug("chest pneumothorax gap %.0f mm to y=%.0f", gap, lowest)
    return (
        SyntheticFinding.PNEUMOTHORAX,
        pocket,
        change.astype(np.float32),
        markings * (1 - soft_pocket),
        {"size_mm": gap, "contrast": line},
    )


def _present(
    body: _Body,
    density: np.ndarray,
    mask: np.ndarray,
    finding: SyntheticFinding,
    *,
    pose: np.random.Generator,
    noise: np.random.Generator,
    keep_clean: bool = False,
) -> ChestXrPhantom:
    """Processing "for presentation": exposure, unsharp masking, noise, 12-bit quantisation."""
    density = ndimage.gaussian_filter(density, 0.6)
    gain, offset, gamma = (
        pose.uniform(0.85, 1.15),
        pose.uniform(0.02, 0.1),
        pose.uniform(0.8, 1.25),
    )
    level = np.clip(offset + gain * density, 0.0, 1.2) ** gamma
    level = level + float(pose.uniform(0.2, 0.6)) * (level - ndimage.gaussian_filter(level, 10.0))
    clean = level.copy() if keep_clean else None
    sigma = float(noise.uniform(0.006, 0.02))
    grain = ndimage.gaussian_filter(noise.standard_normal(level.shape).astype(np.float32), 0.5)
    level += grain * (sigma / float(grain.std())) * (0.6 + 0.8 * np.clip(level, 0, 1))
    top = float(pose.uniform(0.8, 0.97)) * _MAX_VALUE  # processing leaves headroom
    scale = top / max(float(np.percentile(level, 99.9)), 1e-6)
    level = level * scale
    pixels = np.clip(np.rint(level), 0, _MAX_VALUE).astype(np.float32)
    centre = float(np.percentile(pixels, 50))
    width = float(np.percentile(pixels, 99.5) - np.percentile(pixels, 0.5))
    return ChestXrPhantom(
        pixels=pixels,
        mask=mask.astype(np.uint8),
        finding=finding,
        pixel_spacing=body.pixel,
        kvp=float(pose.choice([110.0, 120.0, 125.0])),
        exposure_mas=round(float(pose.uniform(1.2, 4.0)), 2),
        window=(round(centre), round(max(width, 1.0))),
        clean=None if clean is None else (clean * scale).astype(np.float32),
    )


def chest_xr_datasets(phantom: ChestXrPhantom, identity: StudyIdentity) -> list[Dataset]:
    """One Digital X-Ray Image Storage - For Presentation instance (PS3.3 A.26).

    12 bits stored in 16 allocated, MONOCHROME2 with an IDENTITY presentation LUT (C.8.11.3),
    PA view, PatientOrientation ``L\\F`` (column direction to the patient's left, rows toward the
    feet), ImagerPixelSpacing at the detector and PixelSpacing in the patient plane (C.8.11.4).
    """
    ds = base_dataset(
        identity,
        sop_class_uid=DigitalXRayImageStorageForPresentation,
        instance_number=1,
        modality="DX",
        study_description="XR CHEST PA",
        series_description="CHEST PA",
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "43799004", "SCT", "Chest"
    ds.AnatomicRegionSequence = Sequence([region])
    view = Dataset()
    view.CodeValue, view.CodingSchemeDesignator = "399348003", "SCT"
    view.CodeMeaning = "postero-anterior"
    ds.ViewCodeSequence = Sequence([view])
    ds.AcquisitionContextSequence = Sequence([])
    ds.DetectorType = "SCINTILLATOR"
    ds.ImagerPixelSpacing = [round(phantom.pixel_spacing * _MAGNIFICATION, 6)] * 2
    ds.PixelSpacing = [round(phantom.pixel_spacing, 6)] * 2
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "estimated radiographic magnification"
    ds.EstimatedRadiographicMagnificationFactor = _MAGNIFICATION
    ds.DistanceSourceToDetector = 1800.0
    ds.DistanceSourceToPatient = round(1800.0 / _MAGNIFICATION, 1)
    ds.KVP = phantom.kvp
    ds.ExposureInuAs = int(phantom.exposure_mas * 1000)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PresentationLUTShape = "IDENTITY"
    ds.Rows, ds.Columns = phantom.pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1  # higher values: less X-ray intensity (PS3.3 C.8.11.3)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = phantom.window
    ds.PixelData = phantom.pixels.astype("<u2").tobytes()
    return [ds]
