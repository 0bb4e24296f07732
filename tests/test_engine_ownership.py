"""The engine owns the engine's jobs: the per-epoch LR step, long-tail group metrics (the evaluator's) and
the claim on the output folder (``TRAIN.IF_EXISTS`` decision and run lock, ``OutputDirClaim``).

The scheduler steps are counted through the schedulers' own ``last_epoch`` (one per ``step()``), read
at every training step: a run of E epochs with B batches each must see ``[0] * B + [1] * B + ...``.
"""
import json
import os
import socket

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dpl.config import get_cfg_default
from dpl.engine import OutputDirClaim, RunConflictError, RunLockError, TrainerX
from dpl.engine.runtime import LOCK_NAME
from dpl.evaluation import Classification
from helpers import build_trainer_in_process

NUM_BATCHES, EPOCHS = 4, 3


class SimulatedKill(Exception):
    """Stands in for SIGKILL in the middle of an epoch."""


class FixedBatches:
    """``train_loader_x`` of fixed batches; ``set_epoch(..., start_batch)`` skips a resumed epoch's first batches
    (``len()`` stays the epoch's full length, as with ``DataManager``)."""

    def __init__(self, batches):
        self.batches, self.start = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        start, self.start = self.start, 0
        return iter(self.batches[start:])


class FixedData:
    """The part of ``DataManager`` the engine uses: the training loader and ``set_epoch``."""

    def __init__(self, batches):
        self.train_loader_x = FixedBatches(batches)

    def set_epoch(self, epoch, start_batch=0):
        self.train_loader_x.start = start_batch


class Linear(TrainerX):
    """A linear classifier on fixed random batches (no data stack, no registry), LR halved per step.

    ``lr_step_batch``: None, the engine steps the schedule (as for ``ClipPromptTrainer``); otherwise the
    batch index at which ``forward_backward`` calls ``update_lr`` itself (Dassl-style: the last one).
    """

    lr_step_batch = None
    kill_at = None  # (epoch, batch) whose forward_backward "kills" the run

    def build_data_loader(self):
        generator = torch.Generator().manual_seed(0)
        batches = [{"img": torch.randn(5, 4, generator=generator), "label": torch.randint(3, (5,), generator=generator),
                    "domain": torch.zeros(5, dtype=torch.long)} for _ in range(NUM_BATCHES)]
        self.dm = FixedData(batches)
        self.train_loader_x, self.train_loader_u = self.dm.train_loader_x, None
        self.val_loader = self.test_loader = batches
        self.num_classes, self.num_source_domains, self.lab2cname = 3, 1, {0: "a", 1: "b", 2: "c"}

    def build_model(self):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 3)
        self.optim = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.optim, lambda step: 0.5 ** step)
        self.register_model("linear", self.model, self.optim, self.sched)
        self.steps_seen = []  # (epoch, batch, scheduler steps so far) at every training step

    def forward_backward(self, batch):
        if (self.epoch, self.batch_idx) == self.kill_at:
            raise SimulatedKill()
        self.steps_seen.append((self.epoch, self.batch_idx, self.sched.last_epoch))
        images, labels, _ = self.parse_batch_train(batch)
        loss = F.cross_entropy(self.model(images), labels)
        self.model_backward_and_update(loss)
        if self.batch_idx == self.lr_step_batch:
            self.update_lr()
        return {"loss": loss.item()}


def make_cfg(output_dir, *opts):
    cfg = get_cfg_default()
    cfg.merge_from_list(["OUTPUT_DIR", str(output_dir), "TRAINER.NAME", "Linear", "SEED", 1, "VERBOSE", False,
                         "OPTIM.MAX_EPOCH", EPOCHS, "TRAIN.PRINT_FREQ", 1, "TEST.NO_TEST", True, *opts])
    cfg.freeze()
    return cfg


def trained(output_dir, lr_step_batch=None, kill_at=None, *opts):
    trainer = type("Run", (Linear,), {"lr_step_batch": lr_step_batch, "kill_at": kill_at})(make_cfg(output_dir, *opts))
    trainer.train()
    return trainer


def one_step_per_epoch(epochs, start=(0, 0)):
    """What ``steps_seen`` holds when every epoch steps once, after its last batch (from ``start`` on)."""
    return [(e, b, e) for e in range(epochs) for b in range(NUM_BATCHES) if (e, b) >= start]


# ----- the LR step ----------------------------------------------------------------------------------
@pytest.mark.parametrize("lr_step_batch", [None, NUM_BATCHES - 1], ids=["engine", "dassl_style"])
def test_each_epoch_steps_the_schedule_once(tmp_path, lr_step_batch):
    trainer = trained(tmp_path / "run", lr_step_batch)
    assert trainer.steps_seen == one_step_per_epoch(EPOCHS)
    assert trainer.sched.last_epoch == EPOCHS and trainer.get_current_lr() == pytest.approx(0.1 * 0.5 ** EPOCHS)
    checkpoint = torch.load(tmp_path / "run" / "linear" / f"model.pth.tar-{EPOCHS}", weights_only=True)
    assert checkpoint["scheduler"]["last_epoch"] == EPOCHS and "lr_stepped" not in checkpoint["trainer_state"]


def test_a_trainer_stepping_before_its_last_batch_is_not_stepped_again(tmp_path):
    trainer = trained(tmp_path / "run", 1)
    assert trainer.sched.last_epoch == EPOCHS
    assert [steps for e, b, steps in trainer.steps_seen if b == 1] == list(range(EPOCHS))


@pytest.mark.parametrize("lr_step_batch", [None, NUM_BATCHES - 1, 0], ids=["engine", "dassl_style", "early"])
def test_an_epoch_resumed_mid_way_steps_exactly_once(tmp_path, lr_step_batch):
    """Killed in epoch 2 after a mid-epoch checkpoint (``TRAIN.CHECKPOINT_ITERS 1``), then resumed: the
    schedule, the LR and the weights are the uninterrupted run's (``early`` steps at batch 0, before
    the checkpoint: the checkpoint records it and the resumed epoch does not step again)."""
    iters = ("TRAIN.CHECKPOINT_ITERS", 1)
    reference = trained(tmp_path / "a", lr_step_batch, None, *iters)
    with pytest.raises(SimulatedKill):
        trained(tmp_path / "b", lr_step_batch, (1, 2), *iters)
    resumed = trained(tmp_path / "b", lr_step_batch, None, *iters)
    if lr_step_batch is None or lr_step_batch == NUM_BATCHES - 1:
        assert resumed.steps_seen == one_step_per_epoch(EPOCHS, start=(1, 2))
    assert resumed.sched.last_epoch == reference.sched.last_epoch == EPOCHS
    assert resumed.get_current_lr() == reference.get_current_lr()
    assert torch.equal(resumed.model.weight, reference.model.weight)


def test_a_clip_prompt_trainer_is_stepped_by_the_engine_once_per_epoch(tmp_path, tiny_clip_path):
    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "CoOp", "CoOp/vit_b16_ep50_ctxv1.yaml",
                                       "OPTIM.MAX_EPOCH", "2", "OPTIM.WARMUP_EPOCH", "0", "TEST.NO_TEST", "True",
                                       "DATALOADER.TRAIN_X.BATCH_SIZE", "4")
    steps_seen, forward_backward = [], trainer.forward_backward

    def counting(batch):
        steps_seen.append((trainer.epoch, trainer.sched.last_epoch))
        summary = forward_backward(batch)
        assert trainer.sched.last_epoch == steps_seen[-1][1]  # forward_backward itself never steps
        return summary

    trainer.forward_backward = counting
    trainer.train()
    assert trainer.num_batches > 1
    assert steps_seen == [(e, e) for e in range(2) for _ in range(trainer.num_batches)]
    assert trainer.sched.last_epoch == 2


# ----- group metrics ----------------------------------------------------------------------------------
def logits_for(predictions, num_classes=3):
    return F.one_hot(torch.tensor(predictions), num_classes).float()


def test_the_evaluator_reports_group_accuracy_and_tags_per_class_rows(capsys):
    cfg = get_cfg_default()
    evaluator = Classification(cfg, lab2cname={0: "a", 1: "b", 2: "c"}, groups={0: "many", 1: "many", 2: "few"})
    evaluator.process(logits_for([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2]))
    results = evaluator.evaluate(per_class=True)
    assert results["group_accuracy"] == {"many": 75.0, "medium": None, "few": 100.0}
    assert list(results["group_accuracy"]) == ["many", "medium", "few"]
    assert [row["group"] for row in results["per_class"]] == ["many", "many", "few"]
    printed = capsys.readouterr().out
    assert "* many-shot accuracy: 75.0%" in printed and "* medium-shot accuracy: n/a" in printed


def test_no_groups_or_other_classes_give_no_group_metrics():
    cfg = get_cfg_default()
    for groups in (None, {0: "many", 1: "few"}):  # balanced run; a tested class (2) outside the training classes
        evaluator = Classification(cfg, groups=groups)
        evaluator.process(logits_for([0, 1, 2]), torch.tensor([0, 1, 2]))
        results = evaluator.evaluate(per_class=True)
        assert "group_accuracy" not in results and all("group" not in row for row in results["per_class"])


# ----- the claim on the output folder ---------------------------------------------------------------------
def test_a_trainer_used_without_train_py_claims_its_folder_itself(tmp_path, capsys):
    """``build_trainer`` + ``train()``: the same decision and lock as train.py (``OutputDirClaim``)."""
    out = tmp_path / "run"
    trainer = trained(out)
    assert trainer.output_claim is None and not (out / LOCK_NAME).exists()  # the lock is released after training
    other = Linear(make_cfg(out, "OPTIM.LR", 0.5))  # another experiment
    with pytest.raises(RunConflictError, match="of another experiment"):
        other.train()
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "now"}))
    locked = Linear(make_cfg(out))  # a live run holds the folder
    with pytest.raises(RunLockError, match="Another run"):
        locked.train()
    os.remove(out / LOCK_NAME)
    skipping = Linear(make_cfg(out, "TRAIN.IF_EXISTS", "skip"))  # finished (TEST.NO_TEST): left alone
    capsys.readouterr()
    skipping.train()
    assert "Skip: the run in" in capsys.readouterr().out
    assert other.steps_seen == locked.steps_seen == skipping.steps_seen == []


def test_the_claim_train_py_hands_over_is_not_decided_or_locked_again(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = make_cfg(out)
    trainer = Linear(cfg)
    claim = OutputDirClaim(cfg, trainer.run_identity)
    assert claim.action == "fresh" and claim.notes == []
    decisions = []
    monkeypatch.setattr(OutputDirClaim, "__init__", lambda *a, **k: decisions.append(a))
    with claim:
        assert (out / LOCK_NAME).exists()
        trainer.output_claim = claim
        trainer.train()
        assert (out / LOCK_NAME).exists()  # still held: the trainer's entry took no lock of its own
    assert not (out / LOCK_NAME).exists() and decisions == []
    assert trainer.sched.last_epoch == EPOCHS
