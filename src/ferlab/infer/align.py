"""Face alignment: a similarity transform (rotation, uniform scale, translation) taking a face's five landmarks onto
a template, then one warp to the output size.

The template is ArcFace's 112x112 five points (insightface's `arcface_dst`; the order of every five-landmark
detector: the eye on the image's left, the eye on the image's right, the nose tip, the mouth corner on the image's
left, the one on the image's right), scaled to any output side. ArcFace's crop is tight (forehead and chin cut); a
`margin` shrinks the template towards the centre so the crop shows that fraction of its side more on every side, e.g.
0.15 for a FER-style crop with the whole face. The transform is Umeyama's closed-form least-squares estimate
(1991), the one `skimage.transform.SimilarityTransform` computes.
"""

from __future__ import annotations

import numpy as np

from ferlab.errors import FerlabError

TEMPLATE_SIDE = 112
TEMPLATES = {
    # (5, 2) [x, y] in a 112x112 crop, pixel-centre coordinates
    "arcface": np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                         [70.7299, 92.2041]], dtype=np.float64),
}


def template(size: int, margin: float = 0.0, name: str = "arcface") -> np.ndarray:
    """The five template points (5, 2) for a size x size output with `margin` (a fraction of the side added around
    the 112-px template on every side); pixel-centre coordinates, like the detectors' landmarks."""
    if name not in TEMPLATES:
        raise FerlabError(f"alignment template: expected one of {', '.join(TEMPLATES)}, got {name!r}")
    if size < 1 or margin < 0:
        raise FerlabError(f"alignment: need size >= 1 and margin >= 0, got {size} and {margin}")
    corners = TEMPLATES[name] + 0.5  # pixel-corner coordinates scale about the crop's corner
    return (corners + margin * TEMPLATE_SIDE) * (size / (TEMPLATE_SIDE * (1 + 2 * margin))) - 0.5


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity matrix M minimizing sum |M [src; 1] - dst|^2 (Umeyama 1991) for (K, 2) point sets."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)  # (2, 2)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection: flip the weakest axis
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    var = (s**2).sum() / len(src)
    scale = (sig * sign).sum() / var if var > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def alignment_matrix(landmarks: np.ndarray, size: int, margin: float = 0.0, name: str = "arcface") -> np.ndarray:
    """2x3 matrix taking a face's (5, 2) landmarks in frame pixels onto the template for a size x size crop."""
    marks = np.asarray(landmarks, np.float64)
    if marks.shape != (5, 2) or not np.isfinite(marks).all():
        raise FerlabError(f"alignment needs five finite (x, y) landmarks, got an array of shape {marks.shape}")
    return similarity(marks, template(size, margin, name))


def warp(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The size x size crop `matrix` maps out of `frame` (border pixels repeated outside it). A face much larger than
    the crop is warped at a whole multiple of `size` and shrunk by area averaging (no aliasing)."""
    import cv2

    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # output pixels per frame pixel
    k = int(min(4, max(1, np.floor(1 / max(scale, 1e-6)))))
    m = matrix * k
    m[:, 2] += (k - 1) / 2  # pixel centres: output pixel i is the centre of the k x k block that averages into it
    out = cv2.warpAffine(frame, m, (size * k, size * k), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA) if k > 1 else out


def align_face(frame: np.ndarray, landmarks: np.ndarray, size: int, margin: float = 0.0,
               name: str = "arcface") -> np.ndarray:
    """The aligned size x size crop of one face of `frame` (H, W[, C]) from its (5, 2) landmarks."""
    return warp(frame, alignment_matrix(landmarks, size, margin, name), size)
