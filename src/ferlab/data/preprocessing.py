"""How a model's inputs were made, recorded with its weights: `checkpoint["ferlab_preprocessing"]`, the same dict in
ONNX / TorchScript metadata (`preprocessing`), and `align.json` of a `ferlab align` folder (its `face` part).

The record (plain containers; `make_record` builds one, e.g. for a checkpoint made outside training):

    schema        1
    image_size    side of the square network input (pixels)
    in_chans      1 or 3
    color         "gray" (the faces were gray, e.g. FER2013; feed luminance) | "rgb" | null (unknown)
    mean, std     the normalization, per channel: x = (pixels / 255 - mean) / std
    face          null (unknown: the dataset's own crops, synthetic renders) or how faces were cut from photos:
        detector      "haar" | "mtcnn" | "none" | null (the dataset's own, e.g. RAF-DB's aligned images)
        settings      the detector's constructor arguments (conf/detector keys), plain values
        align         true: a similarity warp of five landmarks onto `template`; false: a square crop of the box
        template      "arcface" (ferlab.infer.align.TEMPLATES) when aligned
        align_margin  the template's margin (fraction of its side, every side) when aligned
        crop_margin   the box's margin (fraction of its side, every side) when not aligned
        source        free text: where the faces came from ("ferlab align", "dataset", "converted ...")

This module is the record alone (plain data, checked field by field; no detector, no OpenCV), so training,
restoring and the folder reader read it from below `ferlab.infer`; `ferlab.infer.preprocessing` rebuilds detectors
from it for `ferlab predict`/`demo` (`detector=auto`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ferlab.errors import FerlabError
from ferlab.runs.stored import check_plain, refused

KEY = "ferlab_preprocessing"
SCHEMA = 1
COLORS = ("gray", "rgb")
FACE_KEYS = ("detector", "settings", "align", "template", "align_margin", "crop_margin", "source")
DETECTORS = ("haar", "mtcnn", "none")  # the names a record may give: ferlab.infer.preprocessing.detector_classes
TEMPLATES = ("arcface",)  # alignment templates a record may name: ferlab.infer.align.TEMPLATES


def align_manifest(root: Any) -> dict[str, Any] | None:
    """The checked `face` record of a `ferlab align` output folder (its align.json), None for other folders."""
    import json
    from pathlib import Path

    path = Path(root) / "align.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FerlabError(f"{path}: not a readable ferlab align manifest ({e})") from None
    return check_face(doc.get("face") if isinstance(doc, dict) else None, str(path))


def face_record(detector: str | None, *, settings: Mapping[str, Any] | None = None, align: bool = False,
                template: str | None = "arcface", align_margin: float = 0.0, crop_margin: float = 0.0,
                source: str = "") -> dict[str, Any]:
    """The `face` part of a record: which detector cut the faces and how (see the module docstring)."""
    return {"detector": detector, "settings": dict(settings or {}), "align": bool(align),
            "template": template if align else None, "align_margin": float(align_margin) if align else 0.0,
            "crop_margin": 0.0 if align else float(crop_margin), "source": str(source)}


def make_record(*, image_size: int, in_chans: int, mean: list[float], std: list[float], color: str | None = None,
                face: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A whole record (plain containers), checked; e.g. for the built-in mini-Xception: Haar crops, not aligned,
    48x48 gray, `make_record(image_size=48, in_chans=1, mean=[0.0], std=[1.0], color="gray",
    face=face_record("haar", crop_margin=0.1, source="converted Keras model"))`."""
    record = {"schema": SCHEMA, "image_size": int(image_size), "in_chans": int(in_chans),
              "mean": [float(m) for m in mean], "std": [float(s) for s in std], "color": color,
              "face": None if face is None else dict(face)}
    return check_record(record, "preprocessing record")


def _number(value: Any, key: str, where: str, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
        raise refused(where, key, f"expected a number >= {low:g}, got {value!r}"[:120])
    return float(value)


def check_face(face: Any, where: str) -> dict[str, Any] | None:
    """A stored `face` record checked (plain values, a known detector and template), or None."""
    if face is None:
        return None
    if not isinstance(face, dict):
        raise refused(where, "face", f"a {type(face).__name__} where a mapping was expected")
    check_plain(face, "face", where)
    name = face.get("detector")
    if name is not None and name not in DETECTORS:
        raise refused(where, "face.detector", f"{name!r} is not one of {', '.join(DETECTORS)}")
    if not isinstance(face.get("settings", {}), dict):
        raise refused(where, "face.settings", "not a mapping")
    align = face.get("align", False)
    if not isinstance(align, bool):
        raise refused(where, "face.align", f"expected true or false, got {align!r}")
    if align and face.get("template") not in TEMPLATES:
        raise refused(where, "face.template", f"{face.get('template')!r} is not one of {', '.join(TEMPLATES)}")
    out = face_record(name, settings=face.get("settings"), align=align, template=face.get("template"),
                      align_margin=_number(face.get("align_margin", 0.0), "face.align_margin", where),
                      crop_margin=_number(face.get("crop_margin", 0.0), "face.crop_margin", where),
                      source=str(face.get("source", "")))
    return out


def check_record(record: Any, where: str) -> dict[str, Any] | None:
    """A stored record checked field by field (data, never instantiated); None stays None."""
    if record is None:
        return None
    if not isinstance(record, dict):
        raise refused(where, KEY, f"a {type(record).__name__} where a mapping was expected")
    check_plain(record, KEY, where)
    for key in ("image_size", "in_chans"):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise refused(where, f"{KEY}.{key}", f"expected a positive integer, got {value!r}"[:120])
    for key in ("mean", "std"):
        values = record.get(key)
        if not isinstance(values, list) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise refused(where, f"{KEY}.{key}", f"expected a list of numbers, got {values!r}"[:120])
    if record.get("color") not in (*COLORS, None):
        raise refused(where, f"{KEY}.color", f"expected gray, rgb or null, got {record.get('color')!r}")
    return {**record, "face": check_face(record.get("face"), where)}


def label(face: Mapping[str, Any] | None) -> str:
    """A short name for how faces were cut: "mtcnn+align (margin 0.1)", "haar (margin 0.1)", "unrecorded"."""
    if not face:
        return "unrecorded"
    name = face.get("detector") or "the dataset's own"
    if face.get("align"):
        return f"{name}+align ({face.get('template')}, margin {face.get('align_margin', 0):g})"
    return f"{name} (margin {face.get('crop_margin', 0):g})"


def differences(recorded: Mapping[str, Any] | None, used: Mapping[str, Any] | None) -> list[str]:
    """The lines to print when a run cuts faces otherwise than the model's training data (none if it matches or
    nothing was recorded)."""
    if not recorded or not recorded.get("detector") and not recorded.get("align"):
        return []
    if used is not None and label(recorded) == label(used) and recorded.get("detector") == used.get("detector"):
        return []
    lines = [f"detector overridden: checkpoint used {label(recorded)}, this run uses {label(used)}"]
    if recorded.get("align") and not (used or {}).get("align"):
        lines.append("warning: this model was trained on aligned faces; unaligned crops lower its accuracy "
                     "(detector=auto, or detector=mtcnn detector.align=true)")
    elif not recorded.get("align") and (used or {}).get("align"):
        lines.append("warning: this model was trained on unaligned face crops; aligned faces are framed otherwise")
    return lines


def data_differences(recorded: Mapping[str, Any] | None, data: Mapping[str, Any] | None, name: str) -> list[str]:
    """Lines for an eval/explain whose data's faces were cut otherwise than the checkpoint's training data (the data's
    record comes from a `ferlab align` folder's align.json; none where nothing is known on either side)."""
    if recorded and recorded.get("align") and not (data or {}).get("align"):
        return [f"warning: the model was trained on aligned faces ({label(recorded)}) but data {name!r} records "
                f"none: unaligned crops lower its accuracy (align raw photos with `ferlab align` first)"]
    if recorded and data and label(recorded) != label(data):
        return [f"warning: the model was trained on faces cut by {label(recorded)}; data {name!r} was cut by "
                f"{label(data)}"]
    if data and data.get("align") and not recorded:
        return [f"note: data {name!r} holds aligned faces ({label(data)}); the model records no alignment"]
    return []


def training_record(dm: Any) -> dict[str, Any]:
    """The record of a training run's datamodule: its input size, channels, normalization and, where the data says
    how its faces were cut (a `ferlab align` folder's align.json, exposed as `meta["preprocessing"]`), that."""
    stored = None
    train = getattr(dm, "splits", {}).get("train")
    if train is not None and hasattr(train[0], "shape"):
        stored = train[0].shape[1]
    face = (getattr(dm, "meta", None) or {}).get("preprocessing")
    return make_record(image_size=dm.image_size, in_chans=dm.in_chans, mean=dm.mean.flatten().tolist(),
                       std=dm.std.flatten().tolist(), color=None if stored is None else COLORS[stored == 3],
                       face=face)
