"""`ferlab synth --format ...` writes every official layout, each readable by its reader; bad data files end
`ferlab train` with one line naming the file and row."""

from __future__ import annotations

import numpy as np
import pytest

from ferlab.data.sources.affectnet import AffectNet
from ferlab.data.sources.fer2013 import Fer2013Csv
from ferlab.data.sources.ferplus import FerPlus
from ferlab.data.sources.folders import ImageFolders
from ferlab.data.sources.rafdb import RafDb
from ferlab.labels import FER5, FER2013
from ferlab.tasks.synth import FORMATS
from ferlab.tasks.synth import main as synth


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "all"
    synth([str(out), "--format", "all", "--num-images", "150", "--seed", "3", "--size", "40"])
    return out


def test_all_writes_one_folder_per_format(written):
    assert sorted(p.name for p in written.iterdir()) == sorted(f for f in FORMATS if f != "all")
    head = (written / "icml" / "icml_face_data.csv").read_text().split("\n", 1)[0]
    assert head == "emotion, Usage, pixels"
    assert (written / "train_test" / "test.csv").read_text().split("\n", 1)[0] == "pixels"
    assert {p.name for p in (written / "ferplus_folders").iterdir()} == {"FER2013Train", "FER2013Valid", "FER2013Test"}


def test_every_layout_reads_back_with_the_same_faces(written):
    ref = Fer2013Csv(str(written / "fer2013" / "fer2013.csv")).read()
    icml = Fer2013Csv(str(written / "icml" / "icml_face_data.csv")).read()
    np.testing.assert_array_equal(icml.targets, Fer2013Csv(str(written / "ferplus" / "fer2013.csv")).read().targets)
    train = Fer2013Csv(str(written / "train_test" / "train.csv")).read()
    folders = ImageFolders(str(written / "fer2013_folders"), FER2013).read()
    assert len(ref.targets) == len(icml.targets) == len(folders.targets) == 150 and len(train.targets) == 120
    np.testing.assert_array_equal(np.sort(folders.targets), np.sort(icml.targets))
    assert set(folders.targets[folders.split == 2]) == set(range(7))  # every class in the test folder
    plus = FerPlus(label_root=str(written / "ferplus_folders")).read()
    assert plus.soft_targets.shape == (len(plus.targets), 10) and plus.meta["rows"] < 150  # non-faces left out
    fer5 = ImageFolders(str(written / "fer5"), FER5, image_size=32, channels=3).read()
    assert len(fer5.targets) == 150 and set(fer5.targets) == set(range(5))
    raf, raf_folders = (RafDb(str(written / f), image_size=16).read() for f in ("rafdb", "rafdb_folders"))
    assert raf.split_sizes() == raf_folders.split_sizes() == {"train": 135, "test": 15}  # --test-fraction 0.1
    for layout in ("affectnet", "affectnet2021"):
        assert set(AffectNet(str(written / layout), image_size=16).read().targets) == set(range(8))


def test_refuses_to_overwrite_a_folder_unless_asked(written, capsys):
    with pytest.raises(SystemExit) as e:
        synth([str(written / "fer5"), "--format", "fer5", "--num-images", "20"])
    assert e.value.code == 1 and "--overwrite" in capsys.readouterr().err
    synth([str(written / "fer5"), "--format", "fer5", "--num-images", "20", "--overwrite"])
    assert len(ImageFolders(str(written / "fer5"), FER5, image_size=16, channels=1).read().targets) == 20


def test_a_bad_row_ends_training_with_one_line_naming_file_and_line(tmp_path, written, capsys):
    """In this process, as `ferlab train` runs it (Hydra's composition, then the guarded task)."""
    from ferlab.config.runner import guarded
    from ferlab.tasks.train import run_train
    from tests.conftest import compose_cfg

    csv = tmp_path / "data" / "fer2013.csv"
    csv.parent.mkdir()
    lines = (written / "fer2013" / "fer2013.csv").read_text().splitlines()
    lines[7] = "3," + " ".join(["1"] * 2303) + ",Training"
    csv.write_text("\n".join(lines) + "\n")
    csv.chmod(0o444)  # read-only data is fine: ferlab only reads it
    cfg = compose_cfg(tmp_path, ["data=fer2013", f"data.source.csv_path={csv}", "trainer.max_epochs=1"])
    with pytest.raises(SystemExit) as stop:
        guarded(run_train, cfg)
    err = capsys.readouterr().err
    assert stop.value.code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"ferlab: error: {csv}:8: pixels has 2303 values, expected 2304"
    assert [p.name for p in csv.parent.iterdir()] == ["fer2013.csv"]  # nothing written beside the data


def test_help_says_which_formats_write_one_csv_file():
    from ferlab.tasks.synth import FILES, build_parser

    epilog = build_parser().epilog
    for name in FORMATS:
        kind = "a .csv file" if name in FILES else "a folder"
        assert any(line.split()[0] == name and line.endswith(f"(out: {kind})") for line in epilog.splitlines()[1:])
