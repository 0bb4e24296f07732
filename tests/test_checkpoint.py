"""Checkpoints: Dassl layout, atomic writes, RNG/trainer state, load_model tolerance."""
import os
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from dpl.config import get_cfg_default
from dpl.engine import CheckpointMismatchError, CheckpointNotFoundError, TrainerBase
from dpl.optim import build_lr_scheduler, build_optimizer
from dpl.utils import get_rng_state, load_checkpoint, resume_from_checkpoint, save_checkpoint, set_rng_state


def optim_cfg():
    cfg = get_cfg_default().OPTIM
    cfg.NAME, cfg.LR, cfg.MAX_EPOCH, cfg.LR_SCHEDULER = "sgd", 0.1, 4, "cosine"
    cfg.WARMUP_EPOCH, cfg.WARMUP_TYPE = 1, "constant"
    return cfg


class BareTrainer(TrainerBase):
    """The checkpoint machinery of TrainerBase with one registered linear model and no data."""

    def __init__(self, output_dir, trainer_name="BareTrainer", seed=0):
        super().__init__()
        self.cfg = get_cfg_default()
        self.cfg.TRAINER.NAME = trainer_name
        self.output_dir = output_dir
        self.best_result = -np.inf
        torch.manual_seed(seed)
        self.model = nn.Linear(4, 3)
        self.optim = build_optimizer(self.model, optim_cfg())
        self.sched = build_lr_scheduler(self.optim, optim_cfg())
        self.register_model("head", self.model, self.optim, self.sched)

    def step(self):
        loss = self.model(torch.randn(8, 4)).pow(2).mean()
        self.model_backward_and_update(loss)
        self.update_lr()


def test_save_layout_and_resume_round_trip(tmp_path):
    trainer = BareTrainer(str(tmp_path))
    trainer.step()
    trainer.best_result = 42.0
    trainer.save_model(0, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "head")) == ["checkpoint", "model.pth.tar-1"]
    assert (tmp_path / "head" / "checkpoint").read_text().strip() == "model.pth.tar-1"

    # what the uninterrupted run does next
    expected_draw = torch.rand(3)
    trainer.step()
    expected_weight = trainer.model.weight.detach().clone()
    expected_lr = trainer.get_current_lr()

    resumed = BareTrainer(str(tmp_path), seed=123)  # different init: everything must come from the file
    assert resumed.resume_model_if_exist(str(tmp_path)) == 1
    assert resumed.best_result == 42.0
    assert torch.equal(torch.rand(3), expected_draw)  # torch RNG restored: same draws as the original
    resumed.step()
    assert torch.equal(resumed.model.weight, expected_weight)  # model + optimizer (momentum) restored
    assert resumed.get_current_lr() == expected_lr  # scheduler restored


def test_dassl_resume_from_checkpoint_util(tmp_path, capsys):
    trainer = BareTrainer(str(tmp_path))
    trainer.step()
    trainer.save_model(2, str(tmp_path))
    model = nn.Linear(4, 3)
    epoch = resume_from_checkpoint(str(tmp_path / "head"), model)
    assert epoch == 3 and torch.equal(model.weight, trainer.model.weight)
    assert "Previous epoch: 3" in capsys.readouterr().out


def test_no_checkpoint_trains_from_scratch(tmp_path, capsys):
    assert BareTrainer(str(tmp_path)).resume_model_if_exist(str(tmp_path)) == 0
    assert "No checkpoint found, train from scratch" in capsys.readouterr().out


def test_rng_state_round_trip():
    state = get_rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_crash_during_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    save_dir = str(tmp_path / "head")
    save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 1}, save_dir, model_name="model.pth.tar-1")
    good = (tmp_path / "head" / "model.pth.tar-1").read_bytes()

    real_save = torch.save

    def crash_mid_write(obj, f, *args, **kwargs):
        f.write(b"partial bytes")  # something reached the disk before the crash
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "epoch": 1}, save_dir, model_name="model.pth.tar-1")
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "head" / "model.pth.tar-1").read_bytes() == good
    assert sorted(os.listdir(save_dir)) == ["checkpoint", "model.pth.tar-1"]  # no temp file left
    assert torch.equal(load_checkpoint(os.path.join(save_dir, "model.pth.tar-1"))["state_dict"]["w"], torch.ones(2))


def test_load_model_tolerates_val_result_none_and_old_checkpoints(tmp_path, capsys):
    trainer = BareTrainer(str(tmp_path))
    trainer.save_model(4, str(tmp_path))  # val_result None, as every non-best checkpoint
    # a checkpoint from before val_result existed (Dassl < d634125): only state_dict and epoch
    save_checkpoint({"state_dict": trainer.model.state_dict(), "epoch": 7}, str(tmp_path / "head"))
    other = BareTrainer(str(tmp_path), seed=5)
    other.load_model(str(tmp_path), epoch=5)
    other.load_model(str(tmp_path), epoch=7)
    out = capsys.readouterr().out
    assert "(epoch=5, val_result=None)" in out and "(epoch=7, val_result=None)" in out
    assert torch.equal(other.model.weight, trainer.model.weight)
    assert other.epochs_trained == 7


def test_load_model_errors_name_what_to_do(tmp_path, capsys):
    trainer = BareTrainer(str(tmp_path))
    trainer.save_model(1, str(tmp_path))
    with pytest.raises(CheckpointNotFoundError, match=r"available: \['model.pth.tar-2'\].*--load-epoch"):
        trainer.load_model(str(tmp_path))  # no model-best.pth.tar
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        trainer.load_model(str(tmp_path / "nowhere"), epoch=2)
    with pytest.raises(CheckpointMismatchError, match='saved by trainer "BareTrainer".*--trainer BareTrainer'):
        BareTrainer(str(tmp_path), trainer_name="OtherTrainer").load_model(str(tmp_path), epoch=2)
    BareTrainer(str(tmp_path)).load_model("")  # zero-shot eval: nothing to load
    assert "load_model() is skipped" in capsys.readouterr().out


def test_best_checkpoint_copy(tmp_path, capsys):
    save_checkpoint({"state_dict": {"w": torch.ones(1)}, "epoch": 3}, str(tmp_path), is_best=True)
    assert (tmp_path / "model-best.pth.tar").read_bytes() == (tmp_path / "model.pth.tar-3").read_bytes()
    assert f'Best checkpoint saved to "{tmp_path / "model-best.pth.tar"}"' in capsys.readouterr().out


def test_checkpoints_load_weights_only(tmp_path):
    trainer = BareTrainer(str(tmp_path))
    trainer.step()
    trainer.save_model(0, str(tmp_path))
    ckpt = torch.load(tmp_path / "head" / "model.pth.tar-1", weights_only=True)
    assert set(ckpt) >= {"state_dict", "epoch", "optimizer", "scheduler", "val_result", "trainer_state"}


def test_grad_scaler_state_travels_in_the_trainer_state(tmp_path):
    trainer = BareTrainer(str(tmp_path))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer.scaler.scale(torch.ones(()))  # the scale tensor exists once something was scaled
    trainer.scaler.update(new_scale=256.0)
    trainer.save_model(0, str(tmp_path))
    resumed = BareTrainer(str(tmp_path))
    resumed.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    resumed.resume_model_if_exist(str(tmp_path))
    assert resumed.scaler.get_scale() == 256.0


def test_upstream_checkpoint_with_unimportable_classes_still_loads(tmp_path):
    """Dassl checkpoints pickle its warmup scheduler objects; the tensors must load without Dassl."""
    import sys
    import types

    fake = types.ModuleType("dassl_fake_optim")

    class ConstantWarmupScheduler:
        def __init__(self):
            self.successor = {"T_max": 50}

    ConstantWarmupScheduler.__module__ = "dassl_fake_optim"
    ConstantWarmupScheduler.__qualname__ = "ConstantWarmupScheduler"
    fake.ConstantWarmupScheduler = ConstantWarmupScheduler
    sys.modules["dassl_fake_optim"] = fake
    try:
        path = tmp_path / "model.pth.tar-50"
        torch.save({"state_dict": {"ctx": torch.ones(4, 8)}, "epoch": 50,
                    "scheduler": {"successor": ConstantWarmupScheduler()}}, path)
    finally:
        del sys.modules["dassl_fake_optim"]
    checkpoint = load_checkpoint(str(path))
    assert torch.equal(checkpoint["state_dict"]["ctx"], torch.ones(4, 8)) and checkpoint["epoch"] == 50


def test_load_pretrained_weights_copies_matching_tensors_and_lists_the_rest(tmp_path, capsys):
    from dpl.utils import load_pretrained_weights

    source = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5))
    path = tmp_path / "init.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    target = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))  # second layer has another shape
    load_pretrained_weights(target, str(path))
    assert torch.equal(target[0].weight, source[0].weight)
    assert not torch.equal(target[1].bias[:2], source[1].bias[:2])
    out = capsys.readouterr().out
    assert f"Successfully loaded pretrained weights from {path}" in out
    assert "Layers discarded due to unmatched keys or size: ['1.weight', '1.bias']" in out
