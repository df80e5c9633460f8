"""Face detectors from a preprocessing record (`ferlab.data.preprocessing`, re-exported here): `detector=auto`
rebuilds the recorded detector through the registry below (never `instantiate`: the record is data) and crops or
aligns as recorded; an explicit `detector=` wins, with one line saying what changed; a checkpoint without a `face`
record gets the preset's fallback (Haar).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from ferlab.data.preprocessing import (  # noqa: F401  (the record's names, importable from here as before)
    COLORS,
    DETECTORS,
    FACE_KEYS,
    KEY,
    SCHEMA,
    TEMPLATES,
    align_manifest,
    check_face,
    check_record,
    data_differences,
    differences,
    face_record,
    label,
    make_record,
    training_record,
)
from ferlab.errors import FerlabError


def detector_classes() -> dict[str, type]:
    """The detectors a record may name (imported when needed: OpenCV stays out of training)."""
    from ferlab.infer.detect import HaarFaceDetector, WholeImage
    from ferlab.infer.mtcnn import MTCNNDetector

    return {"haar": HaarFaceDetector, "mtcnn": MTCNNDetector, "none": WholeImage}


def describe(detector: Any) -> dict[str, Any] | None:
    """The `face` record of a live detector (None for a detector of the user's own that ferlab cannot name)."""
    name = getattr(detector, "name", None)
    if name not in detector_classes():
        return None
    settings = detector.settings() if hasattr(detector, "settings") else {}
    return face_record(name, settings={k: v for k, v in settings.items() if k not in ("align", "align_margin",
                                                                                    "margin")},
                       align=bool(getattr(detector, "align", False)), template="arcface",
                       align_margin=getattr(detector, "align_margin", 0.0), crop_margin=getattr(detector, "margin", 0.0))


def build_detector(face: Mapping[str, Any], where: str) -> Any:
    """The recorded detector, rebuilt through the registry with its recorded settings and crop (plain values)."""
    cls = detector_classes()[face["detector"]]
    params = inspect.signature(cls.__init__).parameters
    kwargs = dict(face.get("settings") or {})
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise FerlabError(f"{where}: the recorded detector {face['detector']} has settings {unknown} that this "
                          f"ferlab does not know; pass detector=<preset> to choose one")
    crop = {"margin": face["crop_margin"], "align": face["align"], "align_margin": face["align_margin"]}
    kwargs.update({k: v for k, v in crop.items() if k in params and (k != "align_margin" or face["align"])})
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise FerlabError(f"{where}: cannot rebuild the recorded detector {face['detector']}: {e}") from None


class FromCheckpoint:
    """`detector=auto`: the detector and crop the model's record names, else `fallback` (a detector config of the
    user's, instantiated; the record's detector is rebuilt through the registry). Until `choose_detector` resolves
    it against a model, it behaves as the fallback."""

    name = "auto"

    def __init__(self, fallback: Any) -> None:
        from hydra.utils import instantiate

        self.fallback = instantiate(fallback) if hasattr(fallback, "keys") else fallback

    def __getattr__(self, key: str) -> Any:
        if key == "fallback":  # not set yet (unpickling): no recursion
            raise AttributeError(key)
        return getattr(self.fallback, key)

    def detect(self, frame: Any) -> Any:
        return self.fallback.detect(frame)

    def __call__(self, frame: Any) -> Any:
        return self.fallback(frame)


def choose_detector(detector: Any, record: Mapping[str, Any] | None, where: str) -> tuple[Any, list[str]]:
    """(the detector a run uses, lines to print): `detector=auto` takes the recorded one (the recorded crop of a
    dataset's own faces is approximated by MTCNN with the same alignment); an explicit detector is kept, with a
    line when it cuts faces otherwise than the model was trained on."""
    face = (record or {}).get("face")
    if isinstance(detector, FromCheckpoint):
        if not face or not (face.get("detector") or face.get("align")):
            return detector.fallback, []
        if face.get("detector"):
            return build_detector(face, where), []
        chosen = build_detector({**face, "detector": "mtcnn", "settings": {}}, where)
        return chosen, [f"note: the model was trained on faces aligned by its dataset ({face.get('source') or '?'}); "
                        f"this run aligns them with {label(describe(chosen))}"]
    return detector, differences(face, describe(detector))
