"""Class names and label order of every dataset: the only place they are defined.

Configs interpolate `num_classes` and `class_names` from here through the `ferlab.labels` resolver
(`${ferlab.labels:fer2013}`), so models, metrics and plots never type a class count twice.
"""

from __future__ import annotations

# FER2013 label ids 0..6 (Kaggle `emotion` column).
FER2013 = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# FER+ vote columns in `fer2013new.csv` order; `unknown` and `NF` are not classes.
FERPLUS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
FERPLUS_EXTRA_COLUMNS = ("unknown", "NF")

# Report 000's five-class folder dataset.
FER5 = ("Angry", "Happy", "Neutral", "Sad", "Surprise")

# RAF-DB basic: ids 1..7 in list_patition_label.txt (and the DATASET/{train,test}/1..7 folders), shifted to 0..6.
RAFDB = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")

# AffectNet (manually annotated) expression ids 0..7; 8, 9 and 10 are not classes (their rows are dropped).
AFFECTNET = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
AFFECTNET_NOT_CLASSES = {8: "none", 9: "uncertain", 10: "non_face"}

DATASETS: dict[str, tuple[str, ...]] = {
    "fer2013": FER2013,
    "ferplus": FERPLUS,
    "fer5": FER5,
    "rafdb": RAFDB,
    "affectnet8": AFFECTNET,
    "affectnet7": AFFECTNET[:7],  # data.source.classes=7: without contempt, as most 7-class papers report
}

# Other spellings of the same expression across datasets (and common variants), lower case -> the name
# `canonical` returns: what cross-dataset evaluation matches classes by ("angry" in FER2013 is "anger" in RAF-DB).
SYNONYMS = {
    "angry": "anger", "happy": "happiness", "sad": "sadness", "surprised": "surprise", "fearful": "fear",
    "afraid": "fear", "disgusted": "disgust", "contemptuous": "contempt", "neutrality": "neutral",
}

# Training-split class frequencies of FER2013 (28,709 images); the synthetic renderer follows them.
FER2013_TRAIN_COUNTS = (3995, 436, 4097, 7215, 4830, 3171, 4965)


def class_names(dataset: str) -> list[str]:
    """Class names of a known dataset, in label-id order."""
    if dataset not in DATASETS:
        from ferlab.errors import FerlabError

        raise FerlabError(f"unknown label set {dataset!r}; known: {', '.join(DATASETS)}")
    return list(DATASETS[dataset])


def canonical(name: str) -> str:
    """One spelling per expression: lower case, synonyms mapped (`Angry`, `angry`, `anger` -> `anger`)."""
    key = name.strip().lower()
    return SYNONYMS.get(key, key)
