"""Config hygiene: float keys take integers; settings on a trainer node the trainer does not read are refused
(a logged note for the training-free zero-shot trainers)."""
import pytest
from yacs.config import CfgNode as YacsCfgNode

from dpl.config import CfgNode, get_cfg_default
from dpl.config.node import int_as_float
from dpl.engine import TRAINER_REGISTRY, TrainerX, extend_cfg_for_all_trainers
from dpl.engine.build import check_trainer_nodes
from dpl.project import PROJECT_ROOT

import train  # the repo root is on sys.path: tests/conftest.py
from helpers import registered, run_cli, run_train

COOP_CTXV1 = str(PROJECT_ROOT / "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml")
PROMPTSRC_UPSTREAM = str(PROJECT_ROOT / "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml")


class HygieneDasslTrainer(TrainerX):
    """A Dassl-style trainer: it declares no config nodes, so foreign settings are not checked for it."""

    @classmethod
    def extend_cfg(cls, cfg):
        cfg.TRAINER.HYGIENE = YacsCfgNode()  # yacs' own node class inside dpl's tree, as Dassl code does
        cfg.TRAINER.HYGIENE.WEIGHT = 0.5


@pytest.fixture(scope="module", autouse=True)
def hygiene_dassl_trainer():
    """HygieneDasslTrainer is registered while this file's tests run, and only then."""
    with registered(TRAINER_REGISTRY, HygieneDasslTrainer):
        yield


def setup(argv):
    return train.setup_cfg(train.build_parser().parse_args(argv))


def write_yaml(path, text):
    path.write_text(text)
    return str(path)


# ----- float keys take integers -------------------------------------------------------------------
@pytest.mark.parametrize("trainer, key, text, expected", [
    ("DropoutPrompt", "TRAINER.DPL.RES_WEIGHT", "0", 0.0),
    ("PromptSRC", "TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT", "25", 25.0),
    ("PromptSRC", "TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT", "25.5", 25.5),
    ("CoOp", "OPTIM.LR", "1", 1.0),
])
def test_float_key_takes_an_int_from_opts(trainer, key, text, expected):
    cfg = setup(["--trainer", trainer, key, text])
    node, leaf = cfg, key.split(".")
    for part in leaf[:-1]:
        node = node[part]
    assert node[leaf[-1]] == expected and type(node[leaf[-1]]) is float


@pytest.mark.parametrize("trainer, node, key, text, expected", [
    ("DropoutPrompt", "DPL", "RES_WEIGHT", "0", 0.0),
    ("PromptSRC", "PROMPTSRC", "TEXT_LOSS_WEIGHT", "25", 25.0),
    ("PromptSRC", "PROMPTSRC", "TEXT_LOSS_WEIGHT", "25.5", 25.5),
])
def test_float_key_takes_an_int_from_a_yaml_file(tmp_path, trainer, node, key, text, expected):
    path = write_yaml(tmp_path / "cfg.yaml", f"TRAINER:\n  {node}:\n    {key}: {text}\n")
    value = setup(["--trainer", trainer, "--config-file", path]).TRAINER[node][key]
    assert value == expected and type(value) is float


def test_upstream_promptsrc_yaml_writing_ints_still_merges():
    node = setup(["--trainer", "PromptSRC", "--config-file", PROMPTSRC_UPSTREAM]).TRAINER.PROMPTSRC
    assert (node.TEXT_LOSS_WEIGHT, node.IMAGE_LOSS_WEIGHT, node.GPA_MEAN, node.GPA_STD) == (25.0, 10.0, 15.0, 1.0)
    assert all(type(node[k]) is float for k in ("TEXT_LOSS_WEIGHT", "IMAGE_LOSS_WEIGHT", "GPA_MEAN", "GPA_STD"))
    assert type(node.N_CTX_TEXT) is int  # int keys stay ints


def test_merge_from_other_cfg_coerces_a_plain_yacs_node():
    cfg = extend_cfg_for_all_trainers(get_cfg_default())
    other = YacsCfgNode({"TRAINER": {"DPL": {"RES_WEIGHT": 1, "MAG_TOKENS": 8}}, "OPTIM": {"LR": 2}})
    other.freeze()
    cfg.merge_from_other_cfg(other)
    assert type(cfg.TRAINER.DPL.RES_WEIGHT) is float and cfg.TRAINER.DPL.RES_WEIGHT == 1.0
    assert type(cfg.OPTIM.LR) is float and cfg.TRAINER.DPL.MAG_TOKENS == 8
    assert other.TRAINER.DPL.RES_WEIGHT == 1 and type(other.TRAINER.DPL.RES_WEIGHT) is int  # not modified


def test_a_yacs_node_built_by_a_dassl_trainer_merges_and_coerces(tmp_path):
    path = write_yaml(tmp_path / "dassl.yaml", "TRAINER:\n  HYGIENE:\n    WEIGHT: 2\n")
    cfg = setup(["--trainer", "HygieneDasslTrainer", "--config-file", path])
    assert type(cfg.TRAINER.HYGIENE) is YacsCfgNode and cfg.TRAINER.HYGIENE.WEIGHT == 2.0
    assert type(cfg.TRAINER.HYGIENE.WEIGHT) is float
    cfg = setup(["--trainer", "HygieneDasslTrainer", "TRAINER.HYGIENE.WEIGHT", "3"])
    assert type(cfg.TRAINER.HYGIENE.WEIGHT) is float


def test_bools_and_strings_are_not_coerced(tmp_path):
    assert int_as_float(True, 1.0) is True and int_as_float("1", 1.0) == "1" and int_as_float(1, 1) == 1
    with pytest.raises(ValueError, match="Type mismatch"):
        setup(["OPTIM.LR", "True"])
    with pytest.raises(ValueError, match="Type mismatch"):
        setup(["OPTIM.LR", "fast"])
    with pytest.raises(ValueError, match="Type mismatch"):
        setup(["TRAIN.DETERMINISTIC", "1"])  # an int for a bool key stays an error
    path = write_yaml(tmp_path / "bool.yaml", "OPTIM:\n  LR: true\n")
    with pytest.raises(ValueError, match="Type mismatch"):
        setup(["--config-file", path])


def test_a_float_for_an_int_key_is_still_rejected(tmp_path):
    with pytest.raises(ValueError, match="Type mismatch .* OPTIM.MAX_EPOCH"):
        setup(["OPTIM.MAX_EPOCH", "2.5"])
    path = write_yaml(tmp_path / "float.yaml", "TRAINER:\n  DPL:\n    N_CTX_TEXT: 2.0\n")
    with pytest.raises(ValueError, match="Type mismatch .* TRAINER.DPL.N_CTX_TEXT"):
        setup(["--trainer", "DropoutPrompt", "--config-file", path])


def test_unknown_keys_keep_yacs_messages(tmp_path):
    with pytest.raises(AssertionError, match="Non-existent key: TRAINER.DPL.NO_SUCH"):
        setup(["TRAINER.DPL.NO_SUCH", "1"])
    path = write_yaml(tmp_path / "unknown.yaml", "OPTIM:\n  NO_SUCH: 1\n")
    with pytest.raises(KeyError, match="Non-existent config key: OPTIM.NO_SUCH"):
        setup(["--config-file", path])


def test_clone_nested_nodes_and_freeze():
    cfg = extend_cfg_for_all_trainers(get_cfg_default())
    assert type(cfg) is CfgNode and type(cfg.OPTIM) is CfgNode and type(cfg.TRAINER.DPL) is CfgNode
    cloned = cfg.clone()
    assert type(cloned) is CfgNode and type(cloned.TRAINER.DPL) is CfgNode
    cloned.TRAINER.DPL.merge_from_list(["RES_WEIGHT", "1"])  # a nested node coerces on its own too
    assert cloned.TRAINER.DPL.RES_WEIGHT == 1.0 and cfg.TRAINER.DPL.RES_WEIGHT == 0.05  # independent
    cloned.freeze()
    assert cloned.is_frozen() and cloned.TRAINER.DPL.is_frozen() and not cfg.is_frozen()
    with pytest.raises(AttributeError, match="immutable"):
        cloned.TRAINER.DPL.RES_WEIGHT = 2.0
    frozen_clone = cloned.clone()
    assert frozen_clone.is_frozen() and type(frozen_clone) is CfgNode
    frozen_clone.defrost()
    frozen_clone.OPTIM.LR = 0.5
    assert frozen_clone.OPTIM.LR == 0.5 and cloned.OPTIM.LR == cfg.OPTIM.LR


def test_float_defaults_of_the_trainers_are_floats():
    node = extend_cfg_for_all_trainers(get_cfg_default()).TRAINER.PROMPTSRC
    assert [type(node[k]) for k in ("TEXT_LOSS_WEIGHT", "IMAGE_LOSS_WEIGHT", "GPA_MEAN", "GPA_STD")] == [float] * 4


# ----- settings on a node the trainer does not read ------------------------------------------------
def test_a_foreign_opt_is_a_one_line_config_error(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(["--trainer", "DropoutPrompt", "--output-dir", str(out), "TRAINER.PROMPTSRC.N_CTX_TEXT", "2"],
                        capsys)
    assert code == train.EXIT_CONFIG_ERROR
    assert err == ("Config error: DropoutPrompt reads TRAINER.DPL, not TRAINER.PROMPTSRC: "
                   "TRAINER.PROMPTSRC.N_CTX_TEXT = 2 would be ignored; set TRAINER.DPL.N_CTX_TEXT instead\n")
    assert not out.exists()


def test_a_kgcoop_yaml_for_coop_is_a_one_line_config_error(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(["--trainer", "CoOp", "--output-dir", str(out), "TRAINER.KGCOOP.CTX_INIT", "a_photo"], capsys)
    assert code == train.EXIT_CONFIG_ERROR
    assert err == ("Config error: CoOp reads TRAINER.COOP, not TRAINER.KGCOOP: TRAINER.KGCOOP.CTX_INIT = "
                   "'a_photo' would be ignored; set TRAINER.COOP.CTX_INIT instead\n")
    assert not out.exists()


def test_every_foreign_setting_is_listed_in_one_line(capsys):
    code, err = run_cli(["--trainer", "DropoutPrompt", "TRAINER.COOP.N_CTX", "8", "TRAINER.KGCOOP.W", "2"], capsys)
    assert code == train.EXIT_CONFIG_ERROR and err.count("\n") == 1
    assert err.startswith("Config error: DropoutPrompt reads TRAINER.DPL, not TRAINER.COOP or TRAINER.KGCOOP: ")
    assert "TRAINER.COOP.N_CTX = 8 would be ignored; DropoutPrompt has no such setting" in err
    assert "TRAINER.KGCOOP.W = 2.0 would be ignored; DropoutPrompt has no such setting" in err


def test_a_foreign_value_equal_to_its_default_is_fine():
    cfg = setup(["--trainer", "DropoutPrompt", "TRAINER.PROMPTSRC.N_CTX_TEXT", "4",
                 "TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT", "25", "TRAINER.IVLP.CTX_INIT", "a photo of a"])
    assert cfg.TRAINER.NAME == "DropoutPrompt" and check_trainer_nodes(cfg) == []


def test_own_node_settings_pass():
    cfg = setup(["--trainer", "KgCoOp", "TRAINER.KGCOOP.CTX_INIT", "a texture of", "TRAINER.KGCOOP.W", "2"])
    assert cfg.TRAINER.KGCOOP.W == 2.0 and check_trainer_nodes(cfg) == []


def test_undeclared_and_unknown_trainers_are_not_checked():
    assert TrainerX.config_nodes() is None and HygieneDasslTrainer.config_nodes() is None
    cfg = setup(["--trainer", "HygieneDasslTrainer", "TRAINER.COOP.N_CTX", "8"])
    assert check_trainer_nodes(cfg) == []
    cfg = setup(["--trainer", "NoSuchTrainer", "TRAINER.COOP.N_CTX", "8"])  # build_trainer reports the name
    assert check_trainer_nodes(cfg) == []


@pytest.mark.parametrize("config", sorted((PROJECT_ROOT / "configs/trainers").glob("*/*.yaml")),
                         ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_shipped_config_passes_for_its_own_trainer(config):
    cfg = setup(["--trainer", config.parent.name, "--config-file", str(config)])  # folder name = trainer name
    assert check_trainer_nodes(cfg) == []


def test_config_nodes_of_the_prompt_trainers():
    nodes = {name: TRAINER_REGISTRY.get(name).config_nodes() for name in
             ("CoOp", "KgCoOp", "IVLP", "PromptSRC", "DropoutPrompt", "ZeroshotCLIP", "ZeroshotCLIP2")}
    assert nodes == {"CoOp": ("COOP",), "KgCoOp": ("KGCOOP",), "IVLP": ("IVLP",), "PromptSRC": ("PROMPTSRC",),
                     "DropoutPrompt": ("DPL",), "ZeroshotCLIP": ("ZSCLIP",), "ZeroshotCLIP2": ("ZSCLIP",)}


def test_zeroshot_trainers_note_foreign_settings_instead():
    for trainer in ("ZeroshotCLIP", "ZeroshotCLIP2"):
        cfg = setup(["--trainer", trainer, "--config-file", COOP_CTXV1, "TRAINER.COOP.N_CTX", "4"])
        assert check_trainer_nodes(cfg) == [
            f"Note: {trainer} learns no prompts: TRAINER.COOP.N_CTX = 4, TRAINER.COOP.CTX_INIT = 'a photo of a' "
            "from the config are ignored"  # in the node's key order
        ]


def test_zeroshot_run_with_a_coop_yaml_logs_the_note(tmp_path, tiny_clip_path):
    code, _, log = run_train(tmp_path, tiny_clip_path, "ZeroshotCLIP", "CoOp/vit_b16_ep50_ctxv1.yaml", "--eval-only")
    assert code == 0, log[-2000:]
    note = "Note: ZeroshotCLIP learns no prompts: TRAINER.COOP.CTX_INIT = 'a photo of a' from the config is ignored"
    assert log.count(note) == 1
    assert "* accuracy:" in log


def test_an_upstream_only_key_the_trainer_does_not_read_is_a_one_line_config_error(capsys):
    code, err = run_cli(["--trainer", "CoOp", "TRAINER.COOP.W", "8.0"], capsys)  # KgCoOp's weight, on CoOp
    assert code == train.EXIT_CONFIG_ERROR
    assert err == ("Config error: CoOp does not read TRAINER.COOP.W = 8.0: the key is there for upstream "
                   "repositories' trainers (dpl.config.upstream); remove it, or select the trainer that reads it\n")
    code, err = run_cli(["--trainer", "KgCoOp", "TRAINER.COOP.ALPHA", "2.0"], capsys)  # dead in upstream KgCoOp
    assert code == train.EXIT_CONFIG_ERROR
    assert "TRAINER.COOP.ALPHA = 2.0 would be ignored; KgCoOp has no such setting" in err


def test_every_upstream_train_py_node_exists_with_upstream_defaults():
    cfg = extend_cfg_for_all_trainers(get_cfg_default())
    assert dict(cfg.TRAINER.COCOOP) == {"N_CTX": 16, "CTX_INIT": "", "PREC": "fp16"}
    assert dict(cfg.TRAINER.MAPLE) == {"N_CTX": 2, "CTX_INIT": "a photo of a", "PREC": "fp16", "PROMPT_DEPTH": 9}
    assert dict(cfg.TRAINER.VPT) == {"N_CTX_VISION": 2, "CTX_INIT": "a photo of a", "PREC": "fp16",
                                     "PROMPT_DEPTH_VISION": 1}
    assert (cfg.TRAINER.COOP.W, cfg.TRAINER.COOP.ALPHA, cfg.TRAINER.COOP.N_CTX) == (1.0, 1.0, 16)
    assert dict(cfg.LOSS) == {"GM": False, "NAME": "", "ALPHA": 0.0, "T": 1.0, "LAMBDA": 1.0}
    cfg.merge_from_list(["TRAINER.COCOOP.CTX_INIT", "True", "TRAINER.COOP.CTX_INIT", "False"])
    assert (cfg.TRAINER.COCOOP.CTX_INIT, cfg.TRAINER.COOP.CTX_INIT) == ("a photo of a", "")
