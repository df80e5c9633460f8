"""What `ferlab predict` and `ferlab demo` share: the model on its backend, the face detector, and a word on
what the model was trained on (synthetic faces) or which built-in model runs."""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig

from ferlab.config.runner import user_model
from ferlab.weights import describe

SYNTHETIC_NOTE = (
    "note: this model was trained on ferlab's synthetic faces (data={name}); its labels mean little on real "
    "photos. For real faces, train on FER2013, FER+ or a folder set, e.g. "
    "`ferlab train data=fer2013 data.source.csv_path=/path/to/fer2013.csv`"
)


def build_predictor(cfg: DictConfig) -> Any:
    """A `Predictor` from the task config: `ckpt_path`/`backend`/`model_path`/`color`/`device`/`threads`, the
    user's own `model` class if named, and `detector`: `auto` rebuilds the one the model's preprocessing record
    names (through ferlab's registry: the record is data), any other is the user's config, instantiated, with one
    line when it cuts faces otherwise than the model was trained on."""
    from hydra.utils import instantiate

    from ferlab.infer.backends import load_model
    from ferlab.infer.predictor import Predictor
    from ferlab.infer.preprocessing import choose_detector

    detector = instantiate(cfg.detector)  # a mistake in detector= answers before the model loads
    model = load_model(cfg.ckpt_path, cfg.backend, cfg.model_path, cfg.color, cfg.device, int(cfg.threads),
                       model=user_model(cfg))
    if model.trained_on == "synthetic":
        print(SYNTHETIC_NOTE.format(name=model.trained_on), file=sys.stderr)
    if cfg.backend == "torch" and (summary := describe(cfg.ckpt_path)):
        print(f"model: {cfg.ckpt_path}: {summary}", file=sys.stderr)
    detector, lines = choose_detector(detector, model.preprocessing, str(model.source))
    for line in lines:
        print(line, file=sys.stderr)
    return Predictor(model, detector)
