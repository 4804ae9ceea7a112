"""Non-contrast head CT phantoms with acute haemorrhage as ground truth.

The phantom is drawn in head coordinates (mm, LPS axes, origin at the centre of the cranial
vault) and sampled through a rotated (yaw 12, pitch 8, roll 5 degrees at most), shifted head
onto an axial grid of 128 x 128 pixels of 1.8-2.0 mm and 24-32 slices of 4-5 mm from the
foramen magnum to the vertex. Each slice averages two sub-slices (slab partial volume); edges
are linear ramps one pixel wide (pixel partial volume). The scanner then blurs (Gaussian,
0.4-0.7 pixel), adds beam-hardening streaks between the petrous bones and correlated quantum
noise (sigma 3-8 HU, mostly 4-6), and stores int16 with RescaleIntercept -1024.

Anatomy varies per patient (head size and shape, skull and scalp thickness, atrophy, ventricle
size): scalp with a fat layer, skull with outer table, diploe and inner table, skull base with
anterior/middle/posterior fossae, petrous ridges, clinoids, sphenoid and mastoid air cells and
orbital fat; brain with a folded cortical ribbon, sulci, Sylvian fissures, basal cisterns,
interhemispheric fissure, falx, tentorium, cerebellum, brainstem, deep grey nuclei and lateral,
third and fourth ventricles. Tissues (HU): air -1000, fat -90, CSF 2-12, white matter 24-29,
grey matter 8-12 above white, bone 1500-1900 (tables), 500-900 (diploe), 1100-1900 (base).

Confounders a max-HU rule falls for: pineal (60 % of heads), choroid plexus (50 %), falx (30 %)
and basal ganglia (15 %) calcifications of 55-500 HU, with and without lesions; partial-volume
bone of the skull base and vertex; bright streaks. Lesions, 50-85 HU or (35 % of
intraparenchymal and subdural ones) only 8-18 HU above grey matter: intraparenchymal blobs of
2.5-20 mm radius (45 %), subdural crescents 4-16 mm thick along the inner table (35 %), blood in
sulci, fissures and cisterns (20 %). The mask marks what a radiologist would outline: voxels
that are at least half blood and not dominated by partial-volume bone (before blur and noise,
after the scanner's blur and before noise, a voxel whose value exceeds the blood's by more than
``BONE_MARGIN_HU`` shows as bone; such inner-table voxels of subdural crescents were in the mask
until this rule).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from pydicom import Dataset
from pydicom.uid import CTImageStorage
from scipy import ndimage

from imaging.exceptions import SyntheticError
from imaging.synthetic.dicom import (
    RandomStream,
    StudyIdentity,
    SyntheticFinding,
    SyntheticTask,
    base_dataset,
    random_stream,
)

__all__ = ["BONE_MARGIN_HU", "HeadCtPhantom", "head_ct_datasets", "render_head_ct"]

logger = logging.getLogger(__name__)

_MATRIX = 128
_SUBSLICES = 2
_RESCALE_INTERCEPT = -1024
_LESION_ATTEMPTS = 20
_KERNELS = ("H30s", "H31s", "J40s", "STANDARD", "SOFT", "FC21")
_Window = tuple[slice, slice, slice]
BONE_MARGIN_HU = 40.0


@dataclass(frozen=True, eq=False)
class HeadCtPhantom:
    """A rendered head CT: quantised HU, ground truth and acquisition geometry."""

    hu: np.ndarray  # (slices, rows, columns) float32, integer HU as stored
    mask: np.ndarray  # uint8, same shape
    finding: SyntheticFinding
    pixel_spacing: float
    slice_thickness: float
    first_pixel: tuple[float, float]  # LPS x, y of the centre of the first pixel
    slice_z: tuple[float, ...]  # LPS z of each slice centre, increasing
    kvp: float
    tube_current: int
    kernel: str
    details: dict[str, float] = field(default_factory=dict)  # lesion: blood HU, contrast, ml
    clean: np.ndarray | None = None  # HU after blur, before noise (``keep_clean=True`` only)


class _Head:
    """The sampling grid in head coordinates and the study's anatomy parameters."""

    def __init__(self, anatomy: np.random.Generator, pose: np.random.Generator) -> None:
        self.a = float(anatomy.uniform(64, 73))  # inner table semi-axis, left-right
        self.b_front = float(anatomy.uniform(78, 88))
        self.b_back = self.b_front * float(anatomy.uniform(1.0, 1.1))
        self.c_up = float(anatomy.uniform(62, 74))
        self.shape_terms = anatomy.normal(0, 0.05, size=3)  # egg, skew, flat-top terms
        self.skull = float(anatomy.uniform(5.0, 8.0))
        self.scalp = float(anatomy.uniform(4.0, 7.0))
        self.atrophy = float(anatomy.beta(2, 4))  # 0 young .. 1 atrophic
        self.ventricles = float(anatomy.uniform(0.7, 1.2) + 0.8 * self.atrophy)
        self.pixel = float(pose.uniform(1.8, 2.0))
        self.thickness = float(pose.choice([4.0, 4.5, 5.0]))
        start = float(pose.uniform(-60, -52))  # head z of the first slice: foramen magnum
        vertex = self.c_up + self.skull + self.scalp - 2.0
        self.slices = int(np.clip(round((vertex - start) / self.thickness), 24, 32))
        origin = -(_MATRIX - 1) / 2 * self.pixel
        self.first_pixel = (origin, origin)
        yaw, pitch, roll = np.radians(pose.uniform([-12, -8, -5], [12, 8, 5]))
        self.rotation = _rotation(float(yaw), float(pitch), float(roll))
        table_z = float(pose.uniform(-40, 40))
        self.centre = np.array([*pose.uniform(-8, 8, size=2), table_z])
        first = table_z + start
        self.slice_z = first + self.thickness * np.arange(self.slices)
        self.sub_step = self.thickness / _SUBSLICES
        offsets = self.sub_step * (np.arange(_SUBSLICES) - (_SUBSLICES - 1) / 2)
        sub_z = (self.slice_z[:, None] + offsets).ravel()  # centred in each slice's slab
        self.sub_z0 = float(sub_z[0])
        lps_x = (origin + self.pixel * np.arange(_MATRIX)).astype(np.float32)
        dx = (lps_x - self.centre[0])[None, None, :]
        dy = (lps_x - self.centre[1])[None, :, None]
        dz = (sub_z.astype(np.float32) - self.centre[2])[:, None, None]
        r = self.rotation.astype(np.float32)  # head = R^T (lps - centre)
        self.x = r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz
        self.y = r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz
        self.z = r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz
        self.shape = self.x.shape
        self.depth = np.zeros(self.shape, dtype=np.float32)  # set by _render_anatomy
        self.cavity = np.zeros(self.shape, dtype=np.float32)  # set by _render_anatomy
        self.radius = np.sqrt(self.x * self.x + self.y * self.y + self.z * self.z) + np.float32(
            1e-3
        )
        self.unit = (self.x / self.radius, self.y / self.radius, self.z / self.radius)
        self.petrous_distance = np.minimum(
            *(_segment_distance(self.x, self.y, start, end) for start, end in _PETROUS)
        )

    def window(self, centre: tuple[float, float, float], radius: float) -> _Window | None:
        """Index ranges of the sub-slice grid within ``radius`` mm of head point ``centre``."""
        lps = self.centre + self.rotation @ np.asarray(centre)
        ranges = []
        for value, start, step, size in (
            (lps[2], self.sub_z0, self.sub_step, self.shape[0]),
            (lps[1], self.first_pixel[1], self.pixel, _MATRIX),
            (lps[0], self.first_pixel[0], self.pixel, _MATRIX),
        ):
            low = max(0, math.floor((value - radius - start) / step))
            high = min(size, math.ceil((value + radius - start) / step) + 1)
            if low >= high:
                return None
            ranges.append(slice(low, high))
        return ranges[0], ranges[1], ranges[2]

    def lps(self, point: tuple[float, float, float]) -> np.ndarray:
        """LPS coordinates of a head point."""
        return np.asarray(self.centre + self.rotation @ np.asarray(point))


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cz, sz, cx, sx, cy, sy = (f(v) for v in (yaw, pitch, roll) for f in (math.cos, math.sin))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return np.asarray(rz @ ry @ rx)


def _ramp(signed_mm: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume occupancy of a boundary: 1 inside (positive), 0 outside."""
    return np.clip(0.5 + signed_mm / width, 0.0, 1.0)


def _paint(hu: np.ndarray, occupancy: np.ndarray, value: float | np.ndarray) -> None:
    hu += occupancy * (value - hu)


def _ellipsoid(
    head: _Head,
    window: _Window,
    centre: tuple[float, float, float],
    axes: tuple[float, float, float],
    width: float,
    *,
    orientation: np.ndarray | None = None,
) -> np.ndarray:
    """Occupancy of an ellipsoid (head coordinates) inside ``window``."""
    u = [head.x[window] - centre[0], head.y[window] - centre[1], head.z[window] - centre[2]]
    if orientation is not None:
        u = [
            orientation[i, 0] * u[0] + orientation[i, 1] * u[1] + orientation[i, 2] * u[2]
            for i in range(3)
        ]
    rho = np.sqrt((u[0] / axes[0]) ** 2 + (u[1] / axes[1]) ** 2 + (u[2] / axes[2]) ** 2)
    return _ramp((1.0 - rho) * min(axes), width)


def _paint_ellipsoid(
    head: _Head,
    hu: np.ndarray,
    centre: tuple[float, float, float],
    axes: tuple[float, float, float],
    value: float,
    *,
    orientation: np.ndarray | None = None,
) -> None:
    window = head.window(centre, max(axes) + head.pixel)
    if window is not None:
        occupancy = _ellipsoid(head, window, centre, axes, head.pixel, orientation=orientation)
        _paint(hu[window], occupancy, value)


def _smooth_field(rng: np.random.Generator, head: _Head, correlation_mm: float) -> np.ndarray:
    """A Gaussian random field of unit variance on the sub-slice grid.

    Drawn per slice on a grid of half the in-plane resolution, upsampled linearly in-plane and
    repeated over the sub-slices of a slice (fast; the slab average hides the steps).
    """
    shape = (head.slices, _MATRIX // 2, _MATRIX // 2)
    sigma = (correlation_mm / head.thickness, *(2 * [correlation_mm / (2 * head.pixel)]))
    coarse = ndimage.gaussian_filter(
        rng.standard_normal(shape, dtype=np.float32), sigma, truncate=2.5
    )
    coarse /= max(float(coarse.std()), 1e-6)
    fine = np.empty((head.slices, _MATRIX, _MATRIX), dtype=np.float32)
    rows = np.empty((head.slices, _MATRIX, _MATRIX // 2), dtype=np.float32)
    rows[:, 0::2] = coarse
    rows[:, 1:-1:2] = 0.5 * (coarse[:, :-1] + coarse[:, 1:])
    rows[:, -1] = coarse[:, -1]
    fine[:, :, 0::2] = rows
    fine[:, :, 1:-1:2] = 0.5 * (rows[:, :, :-1] + rows[:, :, 1:])
    fine[:, :, -1] = rows[:, :, -1]
    return np.repeat(fine, _SUBSLICES, axis=0)


def _segment_distance(
    x: np.ndarray, y: np.ndarray, start: tuple[float, float], end: tuple[float, float]
) -> np.ndarray:
    """In-plane distance (mm) of points to a segment."""
    ex, ey = end[0] - start[0], end[1] - start[1]
    t = np.clip(((x - start[0]) * ex + (y - start[1]) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    return np.asarray(np.hypot(x - start[0] - t * ex, y - start[1] - t * ey))


_PETROUS = (((58.0, 20.0), (14.0, -6.0)), ((-58.0, 20.0), (-14.0, -6.0)))
_PETROUS_CREST = -32.0


def _skull_base(head: _Head) -> tuple[np.ndarray, np.ndarray]:
    """Height (head z, mm) of the floor of the cranial cavity and its bone's thickness."""
    x, y = head.x, head.y
    posterior = _ramp(y - 8.0, 12.0)
    anterior = _ramp(-30.0 - y, 12.0)
    middle = -48.0 + 13.0 * np.exp(-((x / 14.0) ** 2))
    base = -62.0 + 0.004 * x * x
    floor = anterior * -24.0 + posterior * base + (1.0 - anterior - posterior) * middle
    petrous = head.petrous_distance
    ridge = _PETROUS_CREST - 4.0 + 6.0 * np.exp(-((petrous / 7.0) ** 2))
    floor = np.maximum(floor, np.where(petrous < 9.0, ridge, np.float32(-99.0)))
    for bump_x, bump_y, top, size in ((12, -14, -29, 4.0), (-12, -14, -29, 4.0), (0, -4, -28, 3.0)):
        bump = top - 20.0 * ((x - bump_x) ** 2 + (y - bump_y) ** 2) / (size * size * 4)
        floor = np.maximum(floor, bump)
    plate = 2.5 * anterior + 6.0 * posterior + 4.0 * (1.0 - anterior - posterior)
    return np.asarray(floor, dtype=np.float32), np.asarray(plate, dtype=np.float32)


def _vault_depth(head: _Head) -> np.ndarray:
    """Radial depth (mm) inside the inner table of the vault; negative outside it."""
    x, y, z = head.x, head.y, head.z
    b = np.where(y > 0, np.float32(head.b_back), np.float32(head.b_front))
    c = np.where(z > 0, np.float32(head.c_up), np.float32(140.0))
    radius = head.radius
    ux, uy, uz = head.unit
    terms = head.shape_terms
    shape = 1.0 + terms[0] * ux * ux + terms[1] * ux * uy + terms[2] * uz
    scaled = np.sqrt((x / head.a) ** 2 + (y / b) ** 2 + (z / c) ** 2) * shape + 1e-6
    return np.asarray(radius / scaled - radius, dtype=np.float32)


def _render_anatomy(
    head: _Head, anatomy: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The normal head on the sub-slice grid: HU outside and inside the cranial cavity.

    Returns the shell (scalp, skull, skull base), the contents of the cavity (brain, CSF), the
    CSF occupancy of the contents outside the brain parenchyma and the grey-matter HU; the
    cavity occupancy is left in ``head.cavity``. Keeping the two apart lets a lesion replace
    brain and CSF without eroding the partial-volume bone of the voxels it shares.
    """
    w = head.pixel
    white = float(anatomy.uniform(24, 29))
    grey = white + float(anatomy.uniform(8, 12))
    csf = float(anatomy.uniform(2, 12))
    table, diploe = float(anatomy.uniform(1500, 1900)), float(anatomy.uniform(500, 900))
    depth = head.depth = _vault_depth(head)
    floor, plate = _skull_base(head)
    x, y, z = head.x, head.y, head.z
    skull = head.skull * (1.0 - 0.3 * head.unit[0] ** 2 + 0.15 * np.clip(head.unit[1], 0, 1))
    outer = depth + skull  # depth below the outer table surface
    hu = np.full(head.shape, -1000.0, dtype=np.float32)
    _paint(hu, _ramp(outer + head.scalp, w), 45.0)  # skin and galea
    _paint(hu, _ramp(outer + head.scalp * 0.6, w) * _ramp(-outer - head.scalp * 0.25, w), -90.0)
    _paint(hu, _ramp(outer, w), table)
    _paint(hu, _ramp(outer - 0.3 * skull, w), diploe)
    _paint(hu, _ramp(depth + 0.3 * skull, w), table)
    above_floor = z - floor
    _paint_skull_base(head, hu, above_floor, plate, depth=depth, rng=anatomy)
    head.cavity = _ramp(depth, w) * _ramp(above_floor, w)
    soft = np.full(head.shape, csf, dtype=np.float32)
    extra_axial = 0.7 + 2.5 * head.atrophy
    brain_depth = np.minimum(depth - extra_axial, above_floor - 2.0 - 3.0 * head.atrophy)
    brain = _ramp(brain_depth, w)
    tissue = np.full(head.shape, white, dtype=np.float32)
    # cortex folded around sulci: zero crossings of a random field
    folds = _smooth_field(anatomy, head, 6.0) * 6.0 / 1.3  # ~ distance in mm
    ribbon = float(anatomy.uniform(2.5, 3.5))
    sulcal_depth = 14.0 + 6.0 * _smooth_field(anatomy, head, 8.0)
    _paint(tissue, _ramp(ribbon - brain_depth, w), grey)
    _paint(
        tissue,
        _ramp(ribbon + 0.6 - np.abs(folds), w) * _ramp(sulcal_depth + ribbon - brain_depth, w),
        grey,
    )
    sulci = _ramp(0.4 + 1.2 * head.atrophy - np.abs(folds), w) * _ramp(
        sulcal_depth - brain_depth, w
    )
    _paint(soft, brain, tissue)
    _paint_deep_structures(head, soft, (grey, white, csf), anatomy)
    tentorium = -22.0 - 0.25 * np.clip(y - 10.0, 0, None)
    _paint(soft, brain * _ramp(y - 5.0, w) * _ramp(tentorium - z, w), grey - 3.0)  # cerebellum
    sylvian = _ramp(1.0 + 1.5 * head.atrophy - np.abs(y + 8.0 - 0.3 * z), w)
    sylvian *= _ramp(np.abs(x) - 38.0, w) * _ramp(10.0 - np.abs(z + 5.0), w)
    cistern = _ramp(3.0 - np.abs(np.hypot(x, y + 2.0) - 14.0), w) * _ramp(6.0 - np.abs(z + 22.0), w)
    csf_spaces = np.maximum(np.maximum(sulci, sylvian), cistern) * brain
    _paint(soft, csf_spaces, csf)
    fissure = _ramp(1.0 + 2.0 * head.atrophy - np.abs(x), w) * _ramp(35.0 - brain_depth, w) * brain
    _paint(soft, fissure, csf)
    falx = _ramp(0.3 - np.abs(x), w) * _ramp(z - tentorium, w) * _ramp(depth - 1.0, w)
    _paint(soft, falx, 50.0)
    _paint(soft, brain * _ramp(0.6 - np.abs(z - tentorium), w) * _ramp(y - 5.0, w), 45.0)
    extra = np.maximum(1.0 - brain, np.maximum(csf_spaces, fissure))
    soft += (1.5 * _smooth_field(anatomy, head, 20.0)) * brain
    return hu, soft, extra, grey


def _paint_skull_base(
    head: _Head,
    hu: np.ndarray,
    above_floor: np.ndarray,
    plate: np.ndarray,
    *,
    depth: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Bone of the floor, petrous pyramids, orbits, mastoid and sphenoid air cells."""
    x, y, w = head.x, head.y, head.pixel
    inside = _ramp(depth + head.skull + 2.0, w)
    below = _ramp(-above_floor, w) * inside
    _paint(hu, below, 40.0)  # soft tissue and marrow of the skull base
    plate_bone = float(rng.uniform(1100, 1500))
    _paint(hu, _ramp(-above_floor, w) * _ramp(above_floor + plate, w) * inside, plate_bone)
    _paint(hu, _ramp(9.0 - head.petrous_distance, w) * below, 1900.0)
    cells = _smooth_field(rng, head, 3.0)
    mastoid = _ramp(np.abs(x) - 42.0, w) * _ramp(12.0 - np.abs(y - 22.0), w) * below
    _paint(hu, mastoid * _ramp(cells, 0.6), -700.0)
    sphenoid = _ramp(16.0 - np.abs(x), w) * _ramp(12.0 - np.abs(y + 16.0), w)
    _paint(hu, sphenoid * _ramp(-above_floor - 4.0, w) * _ramp(cells + 1.2, 0.6) * inside, -950.0)
    orbit = _ramp(-above_floor - 3.0, w) * _ramp(-y - 50.0, w) * inside
    _paint(hu, orbit * _ramp(np.abs(x) - 12.0, w), -90.0)


def _paint_deep_structures(
    head: _Head, hu: np.ndarray, tissues: tuple[float, float, float], rng: np.random.Generator
) -> None:
    """Basal ganglia, thalami, ventricles and physiological calcifications."""
    grey, white, csf = tissues
    for side in (-1.0, 1.0):
        _paint_ellipsoid(head, hu, (side * 12, -18, 8), (5, 10, 9), grey - 2.0)
        _paint_ellipsoid(head, hu, (side * 22, -5, 0), (6, 15, 9), grey - 2.0)
        _paint_ellipsoid(head, hu, (side * 10, 8, 2), (9, 13, 9), grey - 3.0)
    _paint_ellipsoid(head, hu, (0, 12, -40), (13, 14, 22), white + 4.0)  # brainstem
    v = head.ventricles
    for side in (-1.0, 1.0):
        gap = 2.0 + 1.5 * v
        _paint_ellipsoid(head, hu, (side * (gap + 3 * v), -5, 16), (4 * v, 26, 5 * v), csf)
        _paint_ellipsoid(head, hu, (side * (gap + 3 * v), -26, 10), (4 * v, 9, 7 * v), csf)
        _paint_ellipsoid(head, hu, (side * (gap + 10), 22, 6), (5 * v, 12, 7 * v), csf)
        _paint_ellipsoid(head, hu, (side * 28, 0, -14), (2 * v, 12, 3 * v), csf)
    _paint_ellipsoid(head, hu, (0, 0, -4), (1.2 * v, 12, 7), csf)
    _paint_ellipsoid(head, hu, (0, 28, -46), (5, 3.5, 6), csf)
    calcifications: list[tuple[tuple[float, float, float], float, float]] = []
    if rng.random() < 0.6:  # pineal gland
        calcifications.append(((0.0, 12.0, -2.0), rng.uniform(1.5, 4.0), rng.uniform(100, 450)))
    if rng.random() < 0.5:  # choroid plexus glomus
        size, value = rng.uniform(1.5, 3.5), rng.uniform(80, 300)
        calcifications += [((side * 15.0, 22.0, 6.0), size, value) for side in (-1, 1)]
    if rng.random() < 0.15:  # globus pallidus
        size, value = rng.uniform(1.5, 3.5), rng.uniform(55, 140)
        calcifications += [((side * 18.0, -2.0, 0.0), size, value) for side in (-1, 1)]
    for _ in range(int(rng.random() < 0.3) * int(rng.integers(1, 4))):  # falx plaques
        where = (0.0, float(rng.uniform(-55, 50)), float(rng.uniform(10, 50)))
        _paint_ellipsoid(
            head, hu, where, (1.0, rng.uniform(3, 8), rng.uniform(3, 6)), rng.uniform(150, 500)
        )
    for centre, size, value in calcifications:
        _paint_ellipsoid(head, hu, centre, (size, size, size), float(value))


def _render_lesion(
    head: _Head, hu: np.ndarray, extra_axial: np.ndarray, grey: float, rng: np.random.Generator
) -> tuple[SyntheticFinding, np.ndarray, dict[str, float]]:
    """Paint one acute bleed into the cavity contents ``hu``; return its kind, occupancy and
    details (blood HU, contrast above grey matter, whether it is a low-contrast bleed)."""
    kind = SyntheticFinding(
        rng.choice(
            [
                SyntheticFinding.HAEMORRHAGE,
                SyntheticFinding.SUBDURAL,
                SyntheticFinding.SUBARACHNOID,
            ],
            p=[0.45, 0.35, 0.2],
        )
    )
    low_contrast = rng.random() < 0.35 and kind is not SyntheticFinding.SUBARACHNOID
    blood = grey + float(rng.uniform(8, 18)) if low_contrast else float(rng.uniform(55, 85))
    occupancy = np.zeros(head.shape, dtype=np.float32)
    z_low = float(head.slice_z[1]) - float(head.centre[2])
    z_high = float(head.slice_z[-2]) - float(head.centre[2])
    w = head.pixel
    if kind is SyntheticFinding.HAEMORRHAGE:
        radius = float(np.exp(rng.uniform(math.log(2.5), math.log(20.0))))
        centre = (
            float(rng.uniform(-1, 1) * (head.a - radius - 18) * 0.8),
            float(rng.uniform(-0.7, 0.6) * (head.b_front - radius - 15)),
            float(rng.uniform(max(z_low, -25.0), min(z_high, head.c_up - radius - 20))),
        )
        ax, ay, az = (radius * float(s) for s in rng.uniform(0.7, 1.3, size=3))
        axes = (ax, ay, az)
        window = head.window(centre, max(axes) * 1.6 + w)
        if window is not None:
            q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
            if radius > 8:
                _paint(
                    hu[window],
                    _ellipsoid(
                        head, window, centre, (ax * 1.5, ay * 1.5, az * 1.5), w, orientation=q
                    ),
                    grey - 12.0,
                )
            ragged = 1.0 + 0.15 * rng.standard_normal(3)
            occupancy[window] = _ellipsoid(
                head,
                window,
                centre,
                (ax * float(ragged[0]), ay * float(ragged[1]), az * float(ragged[2])),
                w,
                orientation=q,
            )
    elif kind is SyntheticFinding.SUBDURAL:
        side = float(rng.choice([-1.0, 1.0]))
        centre_angle = (0.0 if side > 0 else math.pi) + float(rng.uniform(-1.0, 1.0))
        spread = float(rng.uniform(0.6, 1.2))
        centre_z = float(rng.uniform(max(z_low, -10.0), min(z_high, 45.0)))
        half_height = float(rng.uniform(20, 45))
        thickness = float(np.exp(rng.uniform(math.log(4.0), math.log(16.0))))
        depth = head.depth
        angle = np.mod(np.arctan2(head.y, head.x) - centre_angle + math.pi, 2 * math.pi) - math.pi
        profile = np.clip(1.0 - (angle / spread) ** 4, 0, None) * np.clip(
            1.0 - ((head.z - centre_z) / half_height) ** 4, 0, None
        )
        occupancy = _ramp(np.minimum(depth, thickness * profile - depth), w) * (profile > 0)
    else:
        centre = (
            float(rng.uniform(-1, 1) * 45.0),
            float(rng.uniform(-50, 30)),
            float(rng.uniform(max(z_low, -25.0), min(z_high, 40.0))),
        )
        reach = float(rng.uniform(20, 35))
        window = head.window(centre, reach + w)
        if window is not None:
            region = _ellipsoid(head, window, centre, (reach, reach, reach), 4.0)
            occupancy[window] = np.clip(region * extra_axial[window] * 1.6, 0, 1)
    _paint(hu, occupancy, blood)
    logger.debug("head CT lesion %s, %.0f HU", kind.value, blood)
    details = {
        "blood_hu": blood,
        "contrast_hu": blood - grey,  # above grey matter
        "low_contrast": float(low_contrast),
    }
    return kind, occupancy, details


def _streaks(head: _Head, hu: np.ndarray, rng: np.random.Generator) -> None:
    """Beam hardening: a dark band between the petrous bones and thin bright/dark rays."""
    lps_x = head.first_pixel[0] + head.pixel * np.arange(_MATRIX)
    gx, gy = np.meshgrid(lps_x, lps_x, indexing="xy")
    ends = [
        head.lps((start[0] * 0.7 + end[0] * 0.3, start[1] * 0.7 + end[1] * 0.3, _PETROUS_CREST - 8))
        for start, end in _PETROUS
    ]
    strength = float(rng.uniform(15, 40))
    for k, slice_z in enumerate(head.slice_z):
        weight = float(np.clip(1.0 - abs(slice_z - (ends[0][2] + ends[1][2]) / 2) / 14.0, 0, 1))
        if weight <= 0:
            continue
        band = np.exp(
            -((_segment_distance(gx, gy, tuple(ends[0][:2]), tuple(ends[1][:2])) / 4.0) ** 2)
        )
        pattern = -strength * band
        for _ in range(int(rng.integers(3, 7))):
            origin = ends[int(rng.integers(0, 2))]
            theta = float(rng.uniform(0, 2 * math.pi))
            tip = (origin[0] + 150 * math.cos(theta), origin[1] + 150 * math.sin(theta))
            ray = np.exp(-((_segment_distance(gx, gy, (origin[0], origin[1]), tip) / 1.0) ** 2))
            pattern += (
                float(rng.choice([-1.0, 1.0])) * strength * float(rng.uniform(0.3, 0.8)) * ray
            )
        head_region = hu[k] > -300
        hu[k] += (weight * pattern * head_region).astype(np.float32)


def render_head_ct(
    seed: int, index: int, patient_index: int, positive: bool, *, keep_clean: bool = False
) -> HeadCtPhantom:
    """Render head CT study ``index`` (of patient ``patient_index``) of dataset ``seed``.

    The anatomy depends on the patient only; positioning, noise and the lesion on the study;
    so the normal and the abnormal rendering of a study differ by the lesion alone.
    ``keep_clean`` also returns the image before noise (for the oracle of
    :mod:`training.oracle`); it changes nothing else.
    """
    task = SyntheticTask.HEAD_CT
    anatomy = random_stream(task, seed, patient_index, RandomStream.ANATOMY)
    pose = random_stream(task, seed, index, RandomStream.POSE)
    findings = random_stream(task, seed, index, RandomStream.FINDING)
    noise = random_stream(task, seed, index, RandomStream.NOISE)
    head = _Head(anatomy, pose)
    shell, contents, extra_axial, grey = _render_anatomy(head, anatomy)
    slab = (head.slices, _SUBSLICES, _MATRIX, _MATRIX)
    finding, mask = SyntheticFinding.NONE, np.zeros((head.slices, _MATRIX, _MATRIX), dtype=bool)
    details: dict[str, float] = {}
    for _ in range(_LESION_ATTEMPTS if positive else 0):  # until the bleed is in the scan
        bleeding = contents.copy()
        finding, occupancy, details = _render_lesion(head, bleeding, extra_axial, grey, findings)
        blood = (occupancy * head.cavity).reshape(slab).mean(axis=1)  # blood fraction of voxels
        unblurred = (shell + head.cavity * (bleeding - shell)).reshape(slab).mean(axis=1)
        # what a radiologist outlines: mostly blood, and not partial-volume bone
        mask = (blood >= 0.5) & (unblurred <= details["blood_hu"] + BONE_MARGIN_HU)
        if mask.sum() >= 3:
            contents = bleeding
            break
    else:
        if positive:
            raise SyntheticError(f"no lesion fits head CT study {index} of seed {seed}")
    hu = (shell + head.cavity * (contents - shell)).reshape(slab).mean(axis=1)
    _streaks(head, hu, pose)
    hu = ndimage.gaussian_filter(hu, (0, *(2 * [float(pose.uniform(0.4, 0.7))])))
    if finding is not SyntheticFinding.NONE:
        # after the scanner's blur, bone spills into the crescent's outer voxels: out of the mask
        visible = mask & (hu <= details["blood_hu"] + BONE_MARGIN_HU)
        mask = visible if visible.sum() >= 3 else mask
    clean = hu.copy() if keep_clean else None
    sigma = 3.0 + 5.0 * float(noise.beta(1.5, 2.5))
    grain = ndimage.gaussian_filter(
        noise.standard_normal(hu.shape, dtype=np.float32), (0, 0.6, 0.6)
    )
    hu += grain * (sigma / float(grain.std())) * (hu > -900)
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.float32)
    if finding is not SyntheticFinding.NONE:
        voxel_ml = head.thickness * head.pixel * head.pixel / 1000.0
        details |= {"volume_ml": float(mask.sum()) * voxel_ml, "noise_hu": sigma}
    return HeadCtPhantom(
        hu=hu,
        mask=mask.astype(np.uint8),
        finding=finding,
        pixel_spacing=head.pixel,
        slice_thickness=head.thickness,
        first_pixel=head.first_pixel,
        slice_z=tuple(float(z) for z in head.slice_z),
        kvp=float(pose.choice([100.0, 120.0])),
        tube_current=int(pose.integers(180, 350)),
        kernel=str(pose.choice(_KERNELS)),
        details=details,
        clean=clean,
    )


def head_ct_datasets(phantom: HeadCtPhantom, identity: StudyIdentity) -> list[Dataset]:
    """One CT Image Storage instance per slice (PS3.3 A.3), ordered along +z.

    Stored as int16 with RescaleIntercept -1024 (PS3.3 C.8.2.1), axial ImageOrientationPatient
    ``[1, 0, 0, 0, 1, 0]`` and ImagePositionPatient of each slice's first pixel (C.7.6.2).
    """
    stored = (phantom.hu - _RESCALE_INTERCEPT).astype("<i2")
    datasets = []
    for k, slice_z in enumerate(phantom.slice_z):
        ds = base_dataset(
            identity,
            sop_class_uid=CTImageStorage,
            instance_number=k + 1,
            modality="CT",
            study_description="CT HEAD WO CONTRAST",
            series_description=f"HEAD AXIAL {phantom.slice_thickness:g}mm",
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BodyPartExamined = "HEAD"
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = identity.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = [
            round(phantom.first_pixel[0], 4),
            round(phantom.first_pixel[1], 4),
            round(slice_z, 4),
        ]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [round(phantom.pixel_spacing, 6)] * 2
        ds.SliceThickness = phantom.slice_thickness
        ds.SliceLocation = round(slice_z, 4)
        ds.KVP = phantom.kvp
        ds.XRayTubeCurrent = phantom.tube_current
        ds.ConvolutionKernel = phantom.kernel
        ds.ReconstructionDiameter = round(phantom.pixel_spacing * _MATRIX, 3)
        ds.GantryDetectorTilt = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = _MATRIX
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _RESCALE_INTERCEPT, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 80
        ds.WindowCenterWidthExplanation = "BRAIN"
        ds.PixelData = stored[k].tobytes()
        datasets.append(ds)
    return datasets
