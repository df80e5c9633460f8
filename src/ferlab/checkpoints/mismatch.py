"""A checkpoint that does not fit the network a run builds, described in one line: what the checkpoint was trained
with (model and data, from the config stored in it), what this run builds, and the overrides that would match.

Pure functions over plain config dicts: a checkpoint's stored config is data (read, compared, never instantiated).
`ferlab train` uses them when resuming (`ckpt_path=`); eval, explain, export and predict can use the same line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FOLLOWS_DATA = ("in_chans", "num_classes")  # model arguments interpolated from the data config
DATA_KEYS = ("num_classes", "in_chans", "image_size")


def model_name(config: Mapping[str, Any]) -> str:
    """The `model=` option a config was composed with: its builder's name (`conf/model/<name>.yaml`)."""
    target = str((config.get("model") or {}).get("_target_") or "")
    return target.rsplit(".", 1)[-1] or "?"


def data_name(config: Mapping[str, Any]) -> str:
    """The `data=` option a config was composed with (`data.name` equals the file name under conf/data)."""
    return str((config.get("data") or {}).get("name") or "?")


def _value(value: Any) -> str:
    """A value as a command-line override writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def _data_shape(config: Mapping[str, Any]) -> str:
    data = config.get("data") or {}
    channels = data.get("in_chans")
    return (f"{data.get('num_classes', '?')} classes, {channels} channel{'s' if channels != 1 else ''}, "
            f"{data.get('image_size', '?')} px")


def model_overrides(stored: Mapping[str, Any], current: Mapping[str, Any],
                    defaults: Mapping[str, Any] | None = None) -> list[str]:
    """Overrides that turn this run's model into the stored one.

    `model=<name>` when the family differs, then each stored argument that differs from what this run builds (same
    family) or from `defaults` (the stored family's own conf/model/<name>.yaml, when the caller has read it; without
    it every argument is listed). Arguments that follow the data config are left to the data overrides.
    """
    name, ours = model_name(stored), dict(current.get("model") or {})
    out, base = [], ours
    if name != model_name(current):
        out.append(f"model={name}")
        base = dict(defaults or {})
    for key, value in (stored.get("model") or {}).items():
        if key == "_target_" or key in FOLLOWS_DATA or (key in base and base[key] == value):
            continue
        out.append(f"model.{key}={_value(value)}")
    return out


def data_overrides(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`data=<name>` when the dataset differs, else the shape values (classes, channels, size) that differ."""
    if data_name(stored) != data_name(current):
        return [f"data={data_name(stored)}"]
    ours, theirs = current.get("data") or {}, stored.get("data") or {}
    return [f"data.{k}={_value(theirs[k])}" for k in DATA_KEYS if k in theirs and theirs[k] != ours.get(k)]


def describe(config: Mapping[str, Any]) -> str:
    """'model=resnet18_small on data=synthetic (7 classes, 1 channel, 48 px)'."""
    return f"model={model_name(config)} on data={data_name(config)} ({_data_shape(config)})"


def describe_mismatch(stored: Mapping[str, Any], current: Mapping[str, Any], ckpt: str, *, detail: str = "",
                      defaults: Mapping[str, Any] | None = None, builds: str = "this run builds") -> str:
    """One line: the checkpoint's model and data, this run's, and how to match them or start anew from the weights.

    stored: the config saved in the checkpoint; current: this run's resolved config; detail: what did not fit
    (e.g. the first mismatching weight), appended when the configs look alike; defaults: see `model_overrides`.
    """
    models, datas = model_overrides(stored, current, defaults), data_overrides(stored, current)
    head = f"checkpoint {ckpt} does not fit: it was trained with {describe(stored)}; {builds} {describe(current)}"
    if not models and not datas:
        return f"{head}{f' ({detail})' if detail else ''}"
    line = f"{head}; to continue it, use the overrides it was trained with: {' '.join(models + datas)}"
    if not models:  # same network, other data: its weights can start a new run (a new head where classes differ)
        line += f"; to train on this data from its weights, start a new run with init_from={ckpt} instead"
    return line
