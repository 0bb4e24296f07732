"""Run identity: what defines an experiment, how a run folder is named, and that a folder is never reused
for another experiment (through ``train.py`` itself; the scripts: tests/test_scripts.py and
tests/test_ablation_runs.py). Also what a run records about itself (provenance)."""
import json
import os
import sys

import pytest
import torch

import dpl.tools.train as TRAIN
from datagen import make_dataset
from helpers import run_cli_output as run_cli
from dpl.clip.weights import POCKET_PATH
from dpl.project import PROJECT_ROOT
from dpl.results import identity as ident
from dpl.results import layout, runs

CONFIG = PROJECT_ROOT / "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"
DPL_CONFIG = PROJECT_ROOT / "configs/trainers/DropoutPrompt/vit_b16_c2_ep20_batch4_4+4ctx.yaml"
DTD_CONFIG = PROJECT_ROOT / "configs/datasets/dtd.yaml"


def cfg_of(*opts, trainer="DropoutPrompt", config=DPL_CONFIG):
    argv = ["--trainer", trainer, "--seed", "1", "--dataset-config-file", str(DTD_CONFIG),
            "--config-file", str(config), "MODEL.BACKBONE.NAME", "pocket", *opts]
    return TRAIN.setup_cfg(TRAIN.build_parser().parse_args(argv))


def run_id(*opts, **kwargs):
    return ident.run_id(ident.run_identity(cfg_of(*opts, **kwargs)))


# ----- what an identity holds ------------------------------------------------------------------------

def test_identity_is_the_experiment_not_how_it_is_run():
    reference = run_id()
    assert len(reference) == 12 and reference == run_id()  # stable
    # how a run is carried out or reported
    for opts in (["DATALOADER.NUM_WORKERS", "1"], ["TRAIN.PRINT_FREQ", "3"], ["OUTPUT_DIR", "/elsewhere"],
                 ["DATASET.ROOT", "/data"], ["TRAIN.CHECKPOINT_ITERS", "100"], ["TRAIN.CHECKPOINT_FREQ", "5"],
                 ["MODEL.TEXT_CHUNK_SIZE", "100"], ["DATALOADER.TEST.BATCH_SIZE", "7"], ["TEST.PER_CLASS_RESULT", "True"],
                 ["TRAIN.IF_EXISTS", "skip"], ["USE_CUDA", "False"]):
        assert run_id(*opts) == reference, opts
    # what it computes
    for opts in (["TRAINER.DPL.IMPORTANCE", "uniform"], ["OPTIM.LR", "0.1"], ["SEED", "2"], ["DATASET.NUM_SHOTS", "4"],
                 ["TRAINER.DPL.PREC", "fp32"], ["TEST.SPLIT", "val"], ["MODEL.BACKBONE.NAME", "ViT-B/16"]):
        assert run_id(*opts) != reference, opts
    # the same values, however written
    assert run_id("TRAINER.DPL.RES_WEIGHT", "0") == run_id("TRAINER.DPL.RES_WEIGHT", "0.0")
    assert run_id("OPTIM.LR", "0.1", "SEED", "2") == run_id("SEED", "2", "OPTIM.LR", "0.1")
    assert run_id("OPTIM.MAX_EPOCH", "20") == reference  # the config's own value


def test_weights_are_identified_by_their_content_not_by_how_they_are_named():
    by_name = ident.run_identity(cfg_of())
    by_path = ident.run_identity(cfg_of("MODEL.BACKBONE.PATH", str(POCKET_PATH)))
    assert by_name == by_path and by_name["weights"] == (POCKET_PATH.with_suffix(".sha256")).read_text().split()[0]
    assert "MODEL.BACKBONE.NAME" not in by_name["config"]


def test_a_key_added_later_with_its_default_changes_no_identity():
    cfg, defaults = cfg_of(), ident.default_config()
    before = ident.config_identity(cfg, defaults)
    for tree in (cfg, defaults):
        tree.defrost()
        tree.TRAINER.DPL.NEW_SWITCH = False  # a later release adds a switch whose default keeps the old behaviour
    assert ident.config_identity(cfg, defaults) == before
    assert before["TRAINER.NAME"] == "DropoutPrompt" and before["DATASET.NAME"] == "DescribableTextures"
    assert before["CONFIG_NAME"] == "vit_b16_c2_ep20_batch4_4+4ctx" and before["SEED"] == 1


def test_only_the_selected_trainers_node_counts():
    """ZeroshotCLIP is run with CoOp's YAML files upstream: their TRAINER.COOP keys do not make another experiment."""
    zs_config = PROJECT_ROOT / "configs/trainers/ZeroshotCLIP/vit_b16.yaml"
    plain = ident.run_identity(cfg_of(trainer="ZeroshotCLIP", config=zs_config))
    with_coop = ident.run_identity(cfg_of(trainer="ZeroshotCLIP", config=CONFIG))
    assert not any(key.startswith("TRAINER.COOP") for key in with_coop["config"])
    assert plain["weights"] == with_coop["weights"]


def test_an_evaluation_names_the_model_it_evaluates(tmp_path):
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "results.json").write_text(json.dumps({"finished": True, "identity": {"config": {"SEED": 1}}}))
    reference = runs.model_reference(str(trained), 5)
    assert reference == {"run": ident.run_id({"config": {"SEED": 1}}), "epoch": 5}
    assert runs.model_reference(str(trained))["epoch"] == "best"
    older = tmp_path / "older"  # a training folder of older code: named by its place
    older.mkdir()
    assert runs.model_reference(str(older), 5) == {"dir": os.path.realpath(older), "epoch": 5}


# ----- folder names ----------------------------------------------------------------------------------

def test_variant_names_are_readable_deterministic_and_never_shared():
    assert layout.variant_name({}) == ""
    assert layout.variant_name({"TRAINER.DPL.IMPORTANCE": "uniform"}) == "IMPORTANCE=uniform"
    assert layout.variant_name({"TRAINER.DPL.RES_WEIGHT": 0.0, "TRAINER.DPL.PERTURBATION": "zero"}) == \
        "PERTURBATION=zero,RES_WEIGHT=0.0"
    assert layout.variant_name({"DATASET.NUM_SHOTS": 4}) == ""  # shots are part of the path
    # a key is named by the shortest suffix no other changed key shares
    assert layout.variant_name({"DATALOADER.TRAIN_X.BATCH_SIZE": 8, "DATALOADER.TRAIN_U.BATCH_SIZE": 8}) == \
        "TRAIN_U.BATCH_SIZE=8,TRAIN_X.BATCH_SIZE=8"
    assert layout.variant_name({"INPUT.RRCROP_SCALE": (0.5, 1.0), "TRAINER.COOP.CTX_INIT": "a photo of a",
                                "MODEL.BACKBONE.PATH": "/w/my_clip.pt"}) == \
        "RRCROP_SCALE=0.5-1.0,PATH=my_clip,CTX_INIT=a-photo-of-a"  # sorted by full key
    assert layout.variant_name({"OPTIM.LR": 0.1}, tag="my run/1") == "my-run-1"
    long_a = {f"TRAINER.DPL.KEY_{i}": "x" * 10 for i in range(12)}
    long_b = dict(long_a, **{"TRAINER.DPL.KEY_11": "y" * 10})
    name_a, name_b = layout.variant_name(long_a), layout.variant_name(long_b)
    assert len(name_a) <= layout.MAX_VARIANT_LENGTH and name_a != name_b and name_a[:40] == name_b[:40]
    assert layout.split_config_folder(layout.config_folder("vit_b16", "IMPORTANCE=uniform")) == \
        ("vit_b16", "IMPORTANCE=uniform")


# ----- train.py never reuses a folder for another experiment -----------------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, "dtd", n_classes=4, per_class=6)
    return root


@pytest.fixture(autouse=True)
def quick_env_info(monkeypatch):
    monkeypatch.setattr(TRAIN, "collect_env_info", lambda: "(environment not collected in this test)")


def argv_for(root, out, weights, *opts, flags=()):
    return ["--root", str(root), "--seed", "1", "--trainer", "CoOp", "--output-dir", str(out),
            "--dataset-config-file", str(DTD_CONFIG), "--config-file", str(CONFIG), *flags,
            "MODEL.BACKBONE.PATH", str(weights), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "USE_CUDA", "False", "OPTIM.MAX_EPOCH", "2", *opts]


def test_train_py_refuses_a_folder_of_another_experiment_and_keeps_it(data_root, tmp_path, tiny_clip_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(argv_for(data_root, out, tiny_clip_path), capsys)
    assert code == 0, err
    kept = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    code, _, err = run_cli(argv_for(data_root, out, tiny_clip_path, "OPTIM.LR", "0.5"), capsys)
    assert code == TRAIN.EXIT_RUN_ERROR and err.count("\n") == 1
    assert err.startswith(f"Error: {out} holds a finished run (results.json: accuracy ")
    assert "of another experiment" in err and "OPTIM.LR 0.002 -> 0.5" in err and "choose another --output-dir" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == kept  # nothing touched, not even the log

    # an evaluation into a training run's folder would overwrite its results.json: refused too
    code, _, err = run_cli(argv_for(data_root, out, tiny_clip_path, flags=("--eval-only", "--model-dir", str(out),
                                                                           "--load-epoch", "2")), capsys)
    assert code == TRAIN.EXIT_RUN_ERROR and "of another experiment" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == kept

    code, printed, _ = run_cli(argv_for(data_root, out, tiny_clip_path, "TRAIN.IF_EXISTS", "skip"), capsys)
    assert code == 0 and printed.startswith(f"Skip: the run in {out} is finished ({out}/results.json: accuracy")


def test_train_py_resumes_only_its_own_experiment(data_root, tmp_path, tiny_clip_path, capsys, monkeypatch):
    out = tmp_path / "run"
    from dpl.engine.trainer import TrainerX

    def crash_in_epoch_2(self):  # a crash after the first epoch's checkpoint
        if self.epoch == 1:
            raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="simulated crash"):
        patch.setattr(TrainerX, "before_epoch", crash_in_epoch_2)
        run_cli(argv_for(data_root, out, tiny_clip_path), capsys)
    checkpoint = torch.load(out / "prompt_learner" / "model-last.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["run_identity"]["config"]["TRAINER.NAME"] == "CoOp"
    assert checkpoint["config"]["OPTIM"]["MAX_EPOCH"] == 2 and checkpoint["run_id"] == ident.run_id(
        checkpoint["run_identity"])

    code, _, err = run_cli(argv_for(data_root, out, tiny_clip_path, "TRAINER.COOP.N_CTX", "8"), capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert "holds an unfinished run (last checkpoint after epoch 1) of another experiment" in err
    code, printed, err = run_cli(argv_for(data_root, out, tiny_clip_path), capsys)
    assert code == 0, err
    assert "Previous epoch: 1" in printed and "records no run identity" not in printed


def test_a_run_that_fails_before_training_leaves_nothing_to_resume(data_root, tmp_path, tiny_clip_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(argv_for(data_root, out, tiny_clip_path, "TRAINER.COOP.PREC", "fp8"), capsys)
    assert code == TRAIN.EXIT_RUN_ERROR and "TRAINER.COOP.PREC is 'fp8'" in err
    assert runs.read_state(str(out)).has_run is False
    code, printed, err = run_cli(argv_for(data_root, out, tiny_clip_path), capsys)
    assert code == 0, err
    assert "No checkpoint found, train from scratch" in printed and "Note:" not in printed


def test_results_and_log_record_what_was_run(data_root, tmp_path, tiny_clip_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = argv_for(data_root, out, tiny_clip_path)
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 2
    assert results["run_id"] == ident.run_id(results["identity"])
    assert results["identity"]["weights"] == results["weights"]["sha256"]
    assert results["weights"]["path"] == str(tiny_clip_path) and results["weights"]["official_name"] is None
    assert results["weights"]["architecture"]["vision_layers"] == 3 and results["weights"]["architecture"]["is_vit"]
    assert results["command"] == {"argv": ["train.py", *argv], "cwd": os.getcwd()}
    assert results["code"]["dpl_version"]
    log = (out / "log.txt").read_text()
    assert f"Run id: {results['run_id']}" in log and "Code: dpl " in log and "Command: train.py --root" in log
    assert f"CLIP weights: {tiny_clip_path} (sha256 {results['weights']['sha256']}; not an OpenAI release" in log


def test_the_same_setting_written_with_an_int_inside_a_tuple_is_the_same_run():
    assert run_id("INPUT.RRCROP_SCALE", "(0.5, 1)") == run_id("INPUT.RRCROP_SCALE", "(0.5, 1.0)") != run_id()


def test_a_run_trained_without_a_test_is_finished_once_its_last_checkpoint_is_written(data_root, tmp_path,
                                                                                      tiny_clip_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(argv_for(data_root, out, tiny_clip_path, "TEST.NO_TEST", "True"), capsys)
    assert code == 0, err
    state = runs.read_state(str(out))
    assert state.finished and state.result.endswith("trained, no test (TEST.NO_TEST)")
    assert runs.model_reference(str(out), 2)["run"] == ident.run_id(state.identity)  # from its checkpoint
