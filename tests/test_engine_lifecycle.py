"""End to end through the engine: train, checkpoint, resume (exactly), results.json, log lines, eval-only.

A test-local dataset (coloured 8x8 squares) and a test-local trainer (a linear classifier with
dropout, so resume must restore the RNG) exercise the TrainerX lifecycle without CLIP.
"""
import json
import os
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from yacs.config import CfgNode as CN

from dpl.config import get_cfg_default
from dpl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
from dpl.engine import TRAINER_REGISTRY, TrainerX, build_trainer, extend_cfg_for_all_trainers
from dpl.metrics import compute_accuracy
from dpl.optim import build_lr_scheduler, build_optimizer
from dpl.utils import close_logger, set_random_seed
from helpers import registered

CLASSNAMES = ["red", "green", "blue"]
ACCURACY_RE = re.compile(r"\* accuracy: ([\.\deE+-]+)%")
PROGRESS_RE = re.compile(r"^epoch \[\d+/\d+\] batch \[\d+/\d+\] time .* lr \d\.\d{4}e[+-]\d{2} eta \d+:\d{2}:\d{2}$")


class SimulatedKill(Exception):
    """Stands in for SIGKILL in the middle of an epoch."""


class EngineTestSquares(DatasetBase):
    """``<root>/engine_squares/<split>/<classname>/<i>.png``."""

    def __init__(self, cfg):
        root = os.path.join(cfg.DATASET.ROOT, "engine_squares")
        splits = [self._read(os.path.join(root, split)) for split in ("train", "val", "test")]
        super().__init__(train_x=splits[0], val=splits[1], test=splits[2])

    @staticmethod
    def _read(folder):
        return [
            Datum(impath=os.path.join(folder, name, f), label=label, classname=name)
            for label, name in enumerate(CLASSNAMES)
            for f in sorted(os.listdir(os.path.join(folder, name)))
        ]


class EngineTestLinear(TrainerX):
    @classmethod
    def extend_cfg(cls, cfg):
        cfg.TRAINER.ENGINETEST = CN()
        cfg.TRAINER.ENGINETEST.NAN_AT_EPOCH = -1  # 0-based epoch whose 2nd batch returns a NaN loss

    # 0-based epoch whose 2nd batch "kills" the run: set on the class by a test, not in the config,
    # because the rerun that resumes the killed run must be the same experiment (the same identity)
    kill_at_epoch = -1

    def build_model(self):
        size = self.cfg.INPUT.SIZE
        self.model = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(3 * size[0] * size[1], self.num_classes))
        self.model.to(self.device)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("linear", self.model, self.optim, self.sched)

    def forward_backward(self, batch):
        node = self.cfg.TRAINER.ENGINETEST
        if self.epoch == self.kill_at_epoch and self.batch_idx == 1:
            raise SimulatedKill()
        image, label, _ = self.parse_batch_train(batch)
        output = self.model(image)
        ce = F.cross_entropy(output, label)
        if self.epoch == node.NAN_AT_EPOCH and self.batch_idx == 1:
            ce = ce * float("nan")
        self.model_backward_and_update(ce, components={"ce": ce})
        if self.batch_idx + 1 == self.num_batches:
            self.update_lr()
        return {"loss": ce.item(), "acc": compute_accuracy(output, label)[0].item()}


class EngineTestLinearTwin(EngineTestLinear):
    """Same model name ("linear"), another trainer: its checkpoints must not be mixed up."""


@pytest.fixture(scope="module", autouse=True)
def engine_test_classes():
    """The dataset and trainers above are registered while this file's tests run, and only then."""
    with registered(DATASET_REGISTRY, EngineTestSquares), registered(TRAINER_REGISTRY, EngineTestLinear,
                                                                      EngineTestLinearTwin):
        yield


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_data")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 2), ("test", 4)):
        for label, name in enumerate(CLASSNAMES):
            folder = root / "engine_squares" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 90, (8, 8, 3))
                pixels[..., label] += 160  # the class is the dominant channel
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def config_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine_configs")
    (folder / "squares.yaml").write_text('DATASET:\n  NAME: "EngineTestSquares"\n')
    (folder / "linear_ep2.yaml").write_text(
        "DATALOADER:\n  NUM_WORKERS: 0\n  TRAIN_X:\n    BATCH_SIZE: 6\n  TEST:\n    BATCH_SIZE: 5\n"
        "INPUT:\n  SIZE: (8, 8)\n  TRANSFORMS: ['random_flip', 'normalize']\n"
        "OPTIM:\n  NAME: sgd\n  LR: 0.05\n  MAX_EPOCH: 2\n  LR_SCHEDULER: cosine\n"
        "  WARMUP_EPOCH: 1\n  WARMUP_TYPE: constant\n  WARMUP_CONS_LR: 0.01\n"
        "TRAIN:\n  PRINT_FREQ: 2\n"
    )
    return folder


import dpl.tools.train as train


def cli(data_root, config_files, output_dir, *extra, trainer="EngineTestLinear"):
    argv = [
        "--root", str(data_root), "--output-dir", str(output_dir), "--seed", "0", "--trainer", trainer,
        "--dataset-config-file", str(config_files / "squares.yaml"), "--config-file", str(config_files / "linear_ep2.yaml"),
        *extra,
    ]
    return train.cli(argv)


def test_train_resume_skip_and_eval_only_through_train_py(data_root, config_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(data_root, config_files, out, "TEST.PER_CLASS_RESULT", "True") == 0
    log = (out / "log.txt").read_text()
    lines = log.splitlines()
    assert "Setting fixed seed: 0" in lines  # seed 0 honoured, and logged
    progress = [line for line in lines if line.startswith("epoch [")]
    assert progress and all(PROGRESS_RE.match(line) for line in progress)
    assert [l.split(" batch")[0] for l in progress] == ["epoch [1/2]"] * 2 + ["epoch [2/2]"] * 2  # 4 batches, freq 2
    for expected in ("No checkpoint found, train from scratch", "Finish training", "Deploy the last-epoch model",
                     "Evaluate on the *test* set", "=> result", "* total: 12"):
        assert expected in lines, expected
    assert any(re.fullmatch(r"Elapsed: \d+:\d{2}:\d{2}", line) for line in lines)
    assert f"Checkpoint saved to {out / 'linear' / 'model.pth.tar-2'}" in lines
    after_finish = lines[lines.index("Finish training"):]
    accuracy = [float(m.group(1)) for line in after_finish if (m := ACCURACY_RE.search(line))]
    assert len(accuracy) == 1
    assert sorted(os.listdir(out)) == ["linear", "log.txt", "results.json"]  # no lock, no tensorboard dir
    assert sorted(os.listdir(out / "linear")) == ["checkpoint", "model.pth.tar-2"]

    results = json.loads((out / "results.json").read_text())
    assert results["finished"] is True and results["split"] == "test"
    assert results["accuracy"] == pytest.approx(accuracy[0], abs=0.05)
    assert results["error_rate"] == pytest.approx(100 - results["accuracy"])
    expected = {"num_samples": 12, "trainer": "EngineTestLinear", "dataset": "EngineTestSquares",
                "subsample_classes": "all", "num_shots": -1, "seed": 0, "config_name": "linear_ep2", "epoch": 2}
    assert {k: results[k] for k in expected} == expected
    assert [row["classname"] for row in results["per_class"]] == CLASSNAMES
    assert results["config"]["OPTIM"]["MAX_EPOCH"] == 2 and results["config"]["INPUT"]["SIZE"] == [8, 8]
    assert set(results["tests"]) == {"test"}
    assert results["code"]["dpl_version"] and results["environment"]["torch"] == torch.__version__
    assert results["timings"]["train_seconds"] > 0 and results["timings"]["test_seconds"] >= 0
    capsys.readouterr()

    # rerun, policy skip: nothing is run or written
    assert cli(data_root, config_files, out, "TRAIN.IF_EXISTS", "skip") == 0
    assert "Skip: the run in" in capsys.readouterr().out
    assert (out / "log.txt").read_text() == log

    # rerun, default policy resume: the same log continues, after a banner
    assert cli(data_root, config_files, out) == 0
    log2 = (out / "log.txt").read_text()
    assert log2.startswith(log) and "Resumed session" in log2[len(log):]
    resumed_part = log2[len(log):]
    assert "Found checkpoint at" in resumed_part and "Previous epoch: 2" in resumed_part
    assert "epoch [" not in resumed_part and "Finish training" in resumed_part  # nothing left to train
    assert sorted(os.listdir(out)) == ["linear", "log.txt", "results.json"]

    # eval-only from the model dir into another output dir
    evaluation = tmp_path / "eval"
    assert cli(data_root, config_files, evaluation, "--eval-only", "--model-dir", str(out), "--load-epoch", "2") == 0
    eval_results = json.loads((evaluation / "results.json").read_text())
    assert eval_results["accuracy"] == results["accuracy"] and eval_results["epoch"] == 2 and eval_results["finished"]
    assert "(epoch=2, val_result=None)" in (evaluation / "log.txt").read_text()
    capsys.readouterr()

    # eval-only mistakes: one line, non-zero exit (each into a new folder: the one above holds a finished
    # evaluation of another model, which is refused before anything else)
    assert cli(data_root, config_files, evaluation, "--eval-only", "--model-dir", str(tmp_path / "nothing")) == 1
    assert "holds a finished run" in capsys.readouterr().err
    assert cli(data_root, config_files, tmp_path / "eval2", "--eval-only", "--model-dir", str(tmp_path / "nothing")) == 1
    assert "No model at" in capsys.readouterr().err
    assert cli(data_root, config_files, tmp_path / "eval3", "--eval-only", "--model-dir", str(out), "--load-epoch", "2",
               trainer="EngineTestLinearTwin") == 1
    err = capsys.readouterr().err
    assert 'saved by trainer "EngineTestLinear"' in err and err.count("\n") == 1


def build_cfg(data_root, config_files, output_dir, *opts):
    cfg = extend_cfg_for_all_trainers(get_cfg_default())
    cfg.merge_from_file(str(config_files / "squares.yaml"))
    cfg.merge_from_file(str(config_files / "linear_ep2.yaml"))
    cfg.merge_from_list(["DATASET.ROOT", str(data_root), "OUTPUT_DIR", str(output_dir), "SEED", 1,
                         "TRAINER.NAME", "EngineTestLinear", "VERBOSE", False, "OPTIM.MAX_EPOCH", 3,
                         "TRAIN.CHECKPOINT_FREQ", 1, *opts])
    cfg.freeze()
    return cfg


def run(cfg):
    set_random_seed(cfg.SEED)  # as train.py does before building the trainer
    trainer = build_trainer(cfg)
    trainer.train()
    return trainer


def test_exact_resume_after_a_crash_mid_epoch(data_root, config_files, tmp_path, capsys, monkeypatch):
    reference = run(build_cfg(data_root, config_files, tmp_path / "a"))

    with monkeypatch.context() as patch, pytest.raises(SimulatedKill):
        patch.setattr(EngineTestLinear, "kill_at_epoch", 1)
        run(build_cfg(data_root, config_files, tmp_path / "b"))
    assert not (tmp_path / "b" / ".run.lock").exists()
    resumed = run(build_cfg(data_root, config_files, tmp_path / "b"))
    assert "Previous epoch: 1" in capsys.readouterr().out

    assert torch.equal(resumed.model[2].weight, reference.model[2].weight)
    assert resumed.optim.state_dict()["param_groups"][0]["lr"] == reference.optim.state_dict()["param_groups"][0]["lr"]
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert (a["accuracy"], a["macro_f1"], a["epoch"]) == (b["accuracy"], b["macro_f1"], b["epoch"])


def test_nan_loss_stops_with_context_and_keeps_the_last_good_checkpoint(data_root, config_files, tmp_path, capsys):
    out = tmp_path / "nan"
    code = cli(data_root, config_files, out, "TRAINER.ENGINETEST.NAN_AT_EPOCH", "1", "TRAIN.CHECKPOINT_FREQ", "1")
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: Loss is infinite or NaN! (epoch 2/2, batch 2/4") and "ce=nan" in err
    assert "fp32" in err and "OPTIM.LR" in err and err.count("\n") == 1
    assert sorted(os.listdir(out / "linear")) == ["checkpoint", "model.pth.tar-1"]
    assert "Loss is infinite or NaN!" in (out / "log.txt").read_text()
    assert not (out / ".run.lock").exists()


def test_best_val_deploys_the_best_checkpoint_and_records_both_splits(data_root, config_files, tmp_path, capsys):
    out = tmp_path / "best"
    assert cli(data_root, config_files, out, "TEST.FINAL_MODEL", "best_val") == 0
    log = (out / "log.txt").read_text()
    assert "Evaluate on the *val* set" in log and "Deploy the model with the best val performance" in log
    assert (out / "linear" / "model-best.pth.tar").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "test" and results["finished"]
    assert set(results["tests"]) == {"val", "test"} and results["tests"]["val"]["finished"] is False


@pytest.fixture(autouse=True)
def fast_env_info_and_clean_streams(monkeypatch):
    # torch's collect_env shells out to pip/nvidia-smi (seconds per call); its text is not under test here
    monkeypatch.setattr(train, "collect_env_info", lambda: "(environment report skipped in tests)")
    yield
    close_logger()
