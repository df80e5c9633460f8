"""Procedural 48x48 grayscale faces whose expression follows FER2013's seven classes.

Real FER datasets cannot be shipped, so ferlab renders its own: each face is drawn from soft
signed-distance shapes in a canonical face frame (u right, v down, both in [-1, 1]), with the expression
carried by geometric cues (eyebrow angle and height, eye opening, mouth curvature, opening and width,
nose wrinkle) and everything else nuisance (identity, pose, lighting, noise, blur, occluders). The whole
batch is rendered at once with numpy broadcasting over (N, H, W).

`difficulty` in [0, 1] weakens the expression cues (more faces near neutral) and strengthens the nuisance.
The writers put the faces in FER2013's own CSV format, so training reads them through the real reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ferlab.labels import FER2013, FER2013_TRAIN_COUNTS

SIZE = 48

# Expression cues per class, in FER2013 label order. Columns:
# brow_tilt (+ inner ends down, angry V; - inner ends up, sad/fear), brow_raise, eye_open, mouth_curve
# (+ smile), mouth_open, mouth_width, wrinkle (nose), lip_raise (upper lip pulled up, disgust)
CUES = ("brow_tilt", "brow_raise", "eye_open", "mouth_curve", "mouth_open", "mouth_width", "wrinkle", "lip_raise")
PROTOTYPES = np.array(
    [
        [1.0, -0.6, 0.65, -0.35, 0.00, 0.80, 0.0, 0.0],  # angry
        [0.5, -0.3, 0.55, -0.70, 0.20, 0.90, 1.0, 1.0],  # disgust
        [-0.8, 0.7, 1.45, -0.40, 0.55, 1.25, 0.0, 0.0],  # fear
        [0.0, 0.1, 0.60, 1.00, 0.40, 1.25, 0.0, 0.0],  # happy
        [-1.0, 0.0, 0.75, -1.00, 0.00, 0.90, 0.0, 0.0],  # sad
        [0.0, 1.0, 1.55, 0.00, 1.00, 0.65, 0.0, 0.0],  # surprise
        [0.0, 0.0, 1.00, 0.00, 0.00, 1.00, 0.0, 0.0],  # neutral
    ],
    dtype=np.float32,
)
NEUTRAL = PROTOTYPES[FER2013.index("neutral")]
CLASS_PROBS = np.array(FER2013_TRAIN_COUNTS, dtype=np.float64) / sum(FER2013_TRAIN_COUNTS)


@dataclass(frozen=True)
class SynthSpec:
    """What to render: image count, seed, difficulty, and the Training/PublicTest/PrivateTest fractions."""

    num_images: int = 12000
    seed: int = 0
    difficulty: float = 0.5
    val_fraction: float = 0.1
    test_fraction: float = 0.1


def sample_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Labels drawn with FER2013's training-split class frequencies (disgust rare)."""
    return rng.choice(len(FER2013), size=n, p=CLASS_PROBS).astype(np.int64)


def _u(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return rng.uniform(lo, hi, size=(n, 1, 1)).astype(np.float32)


def _soft(d: np.ndarray, width: float = 0.04) -> np.ndarray:
    """Anti-aliased inside mask of a signed distance (negative inside): 1 inside, 0 outside."""
    m = 0.5 - d * (1.0 / width)
    return np.clip(m, 0.0, 1.0, out=m)


def _cues(labels: np.ndarray, difficulty: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-face cue values: neutral + intensity * (prototype - neutral) + personal jitter, each (N,1,1)."""
    n = len(labels)
    lo = 0.85 - 0.55 * difficulty  # weakest expression intensity
    intensity = rng.uniform(lo, 1.15, size=(n, 1)).astype(np.float32)
    jitter = rng.normal(0.0, 0.04 + 0.10 * difficulty, size=(n, len(CUES))).astype(np.float32)
    values = NEUTRAL + intensity * (PROTOTYPES[labels] - NEUTRAL) + jitter
    return {name: values[:, i, None, None] for i, name in enumerate(CUES)}


def _pose(n: int, difficulty: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Random in-plane rotation (radians), scale and shift of each face, each (N,1,1)."""
    pose = 0.75 + 1.5 * difficulty  # 1.5 at the default difficulty
    angle = _u(rng, -0.2, 0.2, n) * pose
    scale = 1 + _u(rng, -0.1, 0.1, n) * pose
    tx, ty = _u(rng, -0.1, 0.1, n) * pose, _u(rng, -0.1, 0.1, n) * pose
    return angle, scale, tx, ty


def _canonical_grid(n: int, difficulty: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Face-frame coordinates (u, v), each (N,H,W), of every pixel under a random pose (shift, scale, roll)."""
    axis = (np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")  # (H, W)
    angle, scale, tx, ty = _pose(n, difficulty, rng)
    cos, sin = np.cos(angle), np.sin(angle)
    xs, ys = (x - tx) / scale, (y - ty) / scale
    return cos * xs + sin * ys, -sin * xs + cos * ys


def _identity(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Who the face belongs to: face shape, feature spacing, tones; each (N,1,1)."""
    return {
        "face_w": _u(rng, 0.68, 0.82, n),
        "face_h": _u(rng, 0.88, 1.0, n),
        "eye_dx": _u(rng, 0.28, 0.36, n),
        "eye_y": _u(rng, -0.22, -0.12, n),
        "mouth_y": _u(rng, 0.46, 0.56, n),
        "skin": _u(rng, 0.45, 0.8, n),
        "background": _u(rng, 0.05, 0.95, n),
        "hair": _u(rng, 0.05, 0.35, n),
        "hairline": _u(rng, -0.75, -0.55, n),
    }


def _ellipse(u: np.ndarray, v: np.ndarray, cu, cv, au, av) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (negative inside)."""
    a = (u - cu) * (1.0 / au)
    a *= a
    b = (v - cv) * (1.0 / av)
    b *= b
    a += b
    np.sqrt(a, out=a)
    a -= 1.0
    a *= np.minimum(au, av)
    return a


def _segment(u: np.ndarray, v: np.ndarray, u0, v0, u1, v1) -> np.ndarray:
    """Distance from each pixel to the segment (u0, v0)-(u1, v1)."""
    du, dv = u1 - u0, v1 - v0
    t = np.clip(((u - u0) * du + (v - v0) * dv) / (du * du + dv * dv), 0, 1)
    return np.sqrt((u - u0 - t * du) ** 2 + (v - v0 - t * dv) ** 2)


def _draw_face(u, v, ident, n, rng) -> np.ndarray:
    """Background, head, hair and nose: the expression-free canvas, (N,H,W) in [0, 1]."""
    face = _soft(_ellipse(u, v, 0, 0.02, ident["face_w"], ident["face_h"]))
    img = ident["background"] + (ident["skin"] - ident["background"]) * face
    head = _soft(_ellipse(u, v, 0, -0.05, ident["face_w"] * 1.08, ident["face_h"] * 1.08))
    hair = head * _soft(v - ident["hairline"], 0.08)
    img = img + (ident["hair"] - img) * hair * (rng.random((n, 1, 1)) < 0.85)
    nose = _soft(_ellipse(u, v, 0.0, 0.08, 0.035, 0.15))
    return img - 0.08 * nose


def _draw_eyes_brows(img, u, v, ident, cue) -> np.ndarray:
    """Eyes (opening) and eyebrows (tilt and height), mirrored about u = 0."""
    au = np.abs(u)  # the two sides share one mirrored drawing
    ex, ey = ident["eye_dx"], ident["eye_y"]
    eye = _soft(_ellipse(au, v, ex, ey, 0.13, 0.055 * cue["eye_open"]), 0.05)
    pupil = _soft(_ellipse(au, v, ex, ey, 0.05, 0.045 * np.minimum(cue["eye_open"], 1.0)), 0.05)
    img = img - 0.28 * eye - 0.25 * pupil
    brow_v = ey - 0.19 - 0.09 * cue["brow_raise"]
    tilt = 0.08 * cue["brow_tilt"]  # + moves the inner end down
    brow = _soft(_segment(au, v, ex - 0.16, brow_v + tilt, ex + 0.15, brow_v - 0.3 * tilt) - 0.035, 0.05)
    return img - 0.35 * brow


def _draw_mouth(img, u, v, ident, cue) -> np.ndarray:
    """Lips on a curve whose corners rise with `mouth_curve`, an opening, a wrinkle and a raised lip."""
    half = 0.26 * cue["mouth_width"]
    t = np.clip(u / half, -1.0, 1.0)
    inside = _soft(np.abs(u) - half, 0.06)
    curve = ident["mouth_y"] + 0.1 * cue["mouth_curve"] * (0.5 - t * t) - 0.04 * cue["lip_raise"]
    gap = 0.16 * np.maximum(cue["mouth_open"], 0) * np.sqrt(1.0 - t * t)
    hole = inside * _soft(np.abs(v - curve - 0.3 * gap) - 0.5 * gap, 0.05) * (gap > 0.02)
    lips = inside * _soft(np.abs(v - curve - 0.3 * gap) - 0.5 * gap - 0.035, 0.05)
    img = img - 0.25 * lips - 0.3 * hole
    idx = np.flatnonzero(cue["wrinkle"].ravel() > 0.15)  # only faces that wrinkle pay for the lines
    if len(idx):
        au, vi = np.abs(u[idx]), v[idx]
        lines = sum(_soft(_segment(au, vi, 0.03, y, 0.12, y - 0.02) - 0.02) for y in (-0.02, 0.05, 0.12))
        img[idx] -= 0.2 * cue["wrinkle"][idx] * np.clip(lines, 0, 1)
    return img


def _nuisance(img, n, difficulty, rng) -> np.ndarray:
    """Lighting gradient, occluders, blur and sensor noise, all drawn per image."""
    axis = np.linspace(-1, 1, SIZE, dtype=np.float32)
    gx, gy = _u(rng, -0.3, 0.3, n) * (0.5 + difficulty), _u(rng, -0.3, 0.3, n) * (0.5 + difficulty)
    img = img * (1 + gx * axis[None, None, :] + gy * axis[:, None][None])
    occluded = rng.random((n, 1, 1)) < 0.1 + 0.3 * difficulty
    cx, cy = _u(rng, -1, 1, n), _u(rng, -1, 1, n)
    half = _u(rng, 0.1, 0.25, n)
    box = (np.abs(axis[None, None, :] - cx) < half) & (np.abs(axis[:, None][None] - cy) < half)
    img = np.where(box & occluded, _u(rng, 0, 1, n), img)
    # 3-tap [1, 2, 1] / 4 binomial blur, separable, blended in by a per-image amount
    blurred = img.copy()
    blurred[:, 1:-1, :] += 0.5 * (img[:, :-2, :] + img[:, 2:, :] - 2 * img[:, 1:-1, :]) * 0.5
    tmp = blurred.copy()
    blurred[:, :, 1:-1] += 0.5 * (tmp[:, :, :-2] + tmp[:, :, 2:] - 2 * tmp[:, :, 1:-1]) * 0.5
    blurred -= img
    blurred *= _u(rng, 0, 1, n)
    img += blurred
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= _u(rng, 0.01, 0.03 + 0.05 * difficulty, n)
    img += noise
    return img


def render(labels: np.ndarray, *, seed: int = 0, difficulty: float = 0.5, chunk: int = 256) -> np.ndarray:
    """Render one face per label: uint8 (N, 48, 48), deterministic in (labels, seed, difficulty)."""
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    out = np.empty((len(labels), SIZE, SIZE), dtype=np.uint8)
    for start in range(0, len(labels), chunk):  # chunks keep the (N,H,W) temporaries in cache
        rng = np.random.default_rng([seed, start])
        part = labels[start : start + chunk]
        n = len(part)
        u, v = _canonical_grid(n, difficulty, rng)
        ident = _identity(n, rng)
        cue = _cues(part, difficulty, rng)
        img = _draw_face(u, v, ident, n, rng)
        img = _draw_eyes_brows(img, u, v, ident, cue)
        img = _draw_mouth(img, u, v, ident, cue)
        img = _nuisance(img, n, difficulty, rng)
        out[start : start + n] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


def landmarks(labels: np.ndarray, *, seed: int = 0, difficulty: float = 0.5, chunk: int = 256) -> np.ndarray:
    """The five landmarks of the faces `render` draws for the same arguments: float64 (N, 5, 2) [x, y] in the 48x48
    image's pixel coordinates, in the template order (eye on the image's left, the other eye, nose tip, mouth corner
    on the image's left, the other). The same random draws as `render`, without the pixels."""
    out = np.empty((len(labels), 5, 2))
    for start in range(0, len(labels), chunk):
        rng = np.random.default_rng([seed, start])
        part = labels[start : start + chunk]
        n = len(part)
        angle, scale, tx, ty = (a[:, 0, 0].astype(np.float64) for a in _pose(n, difficulty, rng))
        ident = {k: v[:, 0, 0].astype(np.float64) for k, v in _identity(n, rng).items()}
        cue = {k: v[:, 0, 0].astype(np.float64) for k, v in _cues(part, difficulty, rng).items()}
        half = 0.26 * cue["mouth_width"]
        corner_v = ident["mouth_y"] - 0.05 * cue["mouth_curve"] - 0.04 * cue["lip_raise"]  # the lips' curve at |t| = 1
        u = np.stack([-ident["eye_dx"], ident["eye_dx"], np.zeros(n), -half, half], 1)  # (n, 5) face frame
        v = np.stack([ident["eye_y"], ident["eye_y"], np.full(n, 0.2), corner_v, corner_v], 1)
        cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
        x = tx[:, None] + scale[:, None] * (cos * u - sin * v)  # inverse of _canonical_grid's rotation and scale
        y = ty[:, None] + scale[:, None] * (sin * u + cos * v)
        out[start : start + n] = np.stack([(x + 1) * SIZE / 2 - 0.5, (y + 1) * SIZE / 2 - 0.5], 2)
    return out


def make_dataset(spec: SynthSpec, cover_classes: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images uint8 (N,48,48), labels int64 (N,) and FER2013 Usage strings (N,) for a spec.

    cover_classes: the first rows of every Usage block are one of each class, so even a tiny set has every
    class in every split (folder layouts need a folder per class).
    """
    rng = np.random.default_rng([spec.seed, 2013])
    labels = sample_labels(spec.num_images, rng)
    n_val = round(spec.num_images * spec.val_fraction)
    n_test = round(spec.num_images * spec.test_fraction)
    usage = np.array(["Training"] * (spec.num_images - n_val - n_test) + ["PublicTest"] * n_val + ["PrivateTest"] * n_test)
    if cover_classes:
        for start in (0, spec.num_images - n_val - n_test, spec.num_images - n_test):
            k = min(len(FER2013), spec.num_images - start)
            labels[start : start + k] = np.arange(k)
    images = render(labels, seed=spec.seed, difficulty=spec.difficulty)
    return images, labels, usage


def write_fer2013_csv(path: str | Path, images: np.ndarray, labels: np.ndarray, usage: np.ndarray) -> Path:
    """Write Kaggle's `emotion,pixels,Usage` CSV atomically (temp file, then rename)."""
    from ferlab.data.pixels import format_pixel_rows
    from ferlab.runs.io import atomic_write_text

    rows = format_pixel_rows(images)
    lines = ["emotion,pixels,Usage"] + [f"{y},{p},{u}" for y, p, u in zip(labels.tolist(), rows, usage.tolist(), strict=False)]
    return atomic_write_text(path, "\n".join(lines) + "\n")
