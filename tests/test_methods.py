"""Methods end to end: each trains and its checkpoint restores the network its paper evaluates; SCN's relabel
table resumes bit-exactly mid-epoch and is the same on every DDP rank; batches carry train-split rows only for a
method that asks; a stored method is rebuilt only through ferlab's registry; bad combinations are one line."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from ferlab.checkpoints.ckpt_file import load_checkpoint
from ferlab.checkpoints.restore import restore
from ferlab.config.validate import problems
from ferlab.errors import FerlabError, Preempted
from ferlab.tasks.train import build, run_train

# 160 training faces in batches of 16
TINY = ["data.source.num_images=200", "data.batch_size=16", "trainer.limit_val_batches=1", "logger=none",
        "test=false", "sched=none", "seed=3"]
LAST = Path("checkpoints") / "last.ckpt"


@pytest.mark.parametrize("method,net_class", [("eac", "ResNet"), ("dan", "DANNet")])
def test_a_method_trains_and_its_checkpoint_restores_the_network_it_evaluates(make_cfg, method, net_class):
    cfg = make_cfg(f"train_method={method}", *TINY, "trainer.limit_train_batches=2")
    metrics = run_train(cfg)
    terms = {"eac": ["train/eac_consistency"], "dan": ["train/dan_affinity", "train/dan_partition"]}[method]
    assert all(torch.isfinite(torch.tensor(metrics["history"][-1][t])) for t in terms)
    ckpt = Path(cfg.paths.output_dir) / LAST
    restored = restore(ckpt)
    trained = build(cfg)["model"]
    trained.load_state_dict(load_checkpoint(ckpt)["state_dict"])
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        assert type(restored.net).__name__ == net_class
        assert torch.equal(restored.net(x), trained.net.eval()(x))
    # init_from=<this run> starts a plain run from its backbone (the method's own modules are not loaded)
    plain = build(make_cfg(*TINY, f"init_from={ckpt}"))
    assert plain["weights"]["init_from"]["loaded"] == len(plain["model"].net.state_dict())
    assert torch.equal(plain["model"].net.stages[0][0].conv1.weight, trained.net.body.stages[0][0].conv1.weight
                       if method == "dan" else trained.net.stages[0][0].conv1.weight)


class SCNTable(Callback):
    """Writes each rank's relabel table at the end of training to `<dir>/rank<r>.pt`."""

    def __init__(self, dir: str) -> None:
        self.dir = dir

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(pl_module.method.labels.cpu(), Path(self.dir) / f"rank{trainer.global_rank}.pt")


# relabel from the first epoch, at any margin: the table changes within the first steps
SCN = ["train_method=scn", "train_method.relabel_epoch=1", "train_method.margin_2=0.0", "trainer.max_epochs=2",
       "trainer.limit_train_batches=5"]


def test_scn_relabels_and_a_mid_epoch_stop_resumes_bit_exactly(make_cfg, tmp_path):
    ref_cfg = make_cfg(*SCN, *TINY, f"paths.output_dir={tmp_path / 'ref'}")
    ref = run_train(ref_cfg)
    assert ref["global_step"] == 10 and ref["history"][-1]["train/scn_relabeled"] > 0
    run = tmp_path / "run"
    with pytest.raises(Preempted, match="step 7"):  # inside the second epoch, after relabels
        run_train(make_cfg(*SCN, *TINY, f"paths.output_dir={run}", "+callbacks.sig._target_=tests.test_resume.SignalAtStep",
                           "+callbacks.sig.step=7", f"+callbacks.sig.signum={int(signal.SIGUSR1)}"))
    stopped = load_checkpoint(run / LAST)["ferlab_method_state"]
    assert (stopped["labels"] != stopped["original"]).any()
    resumed = run_train(make_cfg(*SCN, *TINY, f"ckpt_path={run}", f"paths.output_dir={tmp_path / 'resumer'}"))
    assert resumed["history"] == ref["history"]
    a, b = load_checkpoint(run / LAST), load_checkpoint(tmp_path / "ref" / LAST)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert torch.equal(a["ferlab_method_state"]["labels"], b["ferlab_method_state"]["labels"])
    assert type(restore(run / LAST).net).__name__ == "SCNNet"


def test_scn_under_ddp_every_rank_holds_every_ranks_relabels(make_cfg, tmp_path):
    cfg = make_cfg(*SCN, *TINY, "trainer=ddp_sim", "trainer.strategy.start_method=fork", "trainer.max_epochs=1",
                   "+callbacks.table._target_=tests.test_methods.SCNTable", f"+callbacks.table.dir={tmp_path}")
    metrics = run_train(cfg)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    saved = load_checkpoint(Path(cfg.paths.output_dir) / LAST)["ferlab_method_state"]
    assert torch.equal(ranks[0], ranks[1]) and torch.equal(ranks[0], saved["labels"])
    assert metrics["history"][-1]["train/scn_relabeled"] == (saved["labels"] != saved["original"]).sum() > 0


def test_training_batches_carry_their_rows_only_when_a_method_asks(make_cfg):
    dm = build(make_cfg(*TINY))["datamodule"]
    dm.prepare_data(), dm.setup("fit")
    images, targets = dm.splits["train"]
    x, y = next(iter(dm.train_dataloader()))  # plain: as before
    dm.index_batches = True
    x, y, rows = next(iter(dm.train_dataloader()))
    assert rows.dtype == torch.int64 and torch.equal(y, targets[rows]) and torch.equal(x, images[rows])
    assert len(next(iter(dm.val_dataloader()))) == 2


def test_method_parameters_learn_as_the_head_and_the_backbone_is_the_bodys(make_cfg):
    model = build(make_cfg("train_method=dan", "optim.backbone_lr_mult=0.1", *TINY))["model"]
    optimizer = model.configure_optimizers()
    head, backbone = ({id(p) for p in g["params"]} for g in optimizer.param_groups)
    assert {id(p) for p in model.net.body.stages.parameters()} <= backbone
    for module in (model.net.heads, model.net.head, model.net.head_bn, model.method):  # DAN's own: new
        assert {id(p) for p in module.parameters()} <= head
    assert not any(p.requires_grad for p in model.net.body.head.parameters())  # unused under DAN


def test_bad_combinations_are_one_line(make_cfg):
    assert problems(make_cfg("train_method=scn", "augment.mixup.p=0.5")) == [
        "train_method=scn relabels class ids, but augment.mixup.p=0.5 mixes the targets (set it to 0)"]
    with pytest.raises(FerlabError, match="^train_method=dan needs a feature map, and CliqueNet has none"):
        build(make_cfg("train_method=dan", "model=cliquenet", *TINY, fast=False))


@pytest.mark.parametrize("value,refused", [
    ({"_target_": "builtins.open", "file": "{created}", "mode": "w"}, "refused train_method._target_"),
    ({"_target_": "ferlab.methods.scn.SCN", "_args_": ["{created}"]}, "refused train_method._args_"),
    ({"_target_": "ferlab.methods.dan.DAN", "num_head": {"_target_": "builtins.open", "file": "{created}"}},
     "refused train_method.num_head._target_"),
    ({"_target_": "ferlab.methods.base.Method"}, "refused train_method._target_"),  # ferlab's, not registered
    ({"_target_": "ferlab.methods.dan.DAN", "num_head": "${oc.env:HOME}"}, "refused train_method.num_head"),
])
def test_a_stored_method_is_rebuilt_only_from_the_registry_with_plain_values(ckpt, tmp_path, value, refused):
    created = tmp_path / "created.txt"
    evil = torch.load(ckpt, weights_only=True, map_location="cpu")
    evil["hyper_parameters"]["config"]["train_method"] = json.loads(json.dumps(value).replace("{created}", str(created)))
    torch.save(evil, tmp_path / "evil.ckpt")
    with pytest.raises(FerlabError, match=refused) as e:
        restore(tmp_path / "evil.ckpt")
    assert "\n" not in str(e.value) and not created.exists()
