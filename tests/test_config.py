"""Config: merge order of train.py, unknown keys and wrong types rejected, CONFIG_NAME."""

import pytest
from yacs.config import CfgNode as CN

from dpl.config import get_cfg_default
from dpl.engine import TRAINER_REGISTRY, TrainerX, extend_cfg_for_all_trainers


import train  # the repo root is on sys.path: tests/conftest.py
from helpers import registered


class ConfigTestTrainer(TrainerX):
    """Registered only so extend_cfg_for_all_trainers has a node to add in these tests."""

    @classmethod
    def extend_cfg(cls, cfg):
        cfg.TRAINER.CONFIGTEST = CN()
        cfg.TRAINER.CONFIGTEST.LEVEL = "extend_cfg"
        cfg.TRAINER.CONFIGTEST.N_CTX = 16


class ConfigTestChild(ConfigTestTrainer):
    """Inherits extend_cfg: it must be called once, not once per subclass."""


@pytest.fixture(scope="module", autouse=True)
def config_test_trainers():
    """The two trainers above are registered while this file's tests run, and only then."""
    with registered(TRAINER_REGISTRY, ConfigTestTrainer, ConfigTestChild):
        yield


def write_yaml(path, text):
    path.write_text(text)
    return str(path)


def setup(argv):
    return train.setup_cfg(train.build_parser().parse_args(argv))


def test_merge_order(tmp_path):
    dataset_yaml = write_yaml(
        tmp_path / "ds.yaml",
        "DATASET:\n  NAME: FromDataset\nOPTIM:\n  LR: 0.1\n  MAX_EPOCH: 3\nTRAINER:\n  CONFIGTEST:\n    LEVEL: dataset\n",
    )
    trainer_yaml = write_yaml(
        tmp_path / "vit_b16_ep3.yaml",
        "OPTIM:\n  LR: 0.2\nTRAINER:\n  CONFIGTEST:\n    LEVEL: trainer\n    N_CTX: 4\nOUTPUT_DIR: from_yaml\n",
    )
    cfg = setup(["--dataset-config-file", dataset_yaml, "--config-file", trainer_yaml])
    assert cfg.DATASET.NAME == "FromDataset"  # dataset YAML over defaults
    assert cfg.OPTIM.MAX_EPOCH == 3
    assert cfg.OPTIM.LR == 0.2  # trainer YAML over dataset YAML
    assert cfg.TRAINER.CONFIGTEST.LEVEL == "trainer"  # YAML over extend_cfg
    assert cfg.CONFIG_NAME == "vit_b16_ep3"
    assert cfg.OUTPUT_DIR == "from_yaml"

    cfg = setup(
        ["--dataset-config-file", dataset_yaml, "--config-file", trainer_yaml, "--output-dir", "from_cli",
         "--trainer", "ConfigTestTrainer", "OUTPUT_DIR", "from_opts", "OPTIM.LR", "0.3", "TRAINER.CONFIGTEST.N_CTX", "2"]
    )
    assert cfg.OUTPUT_DIR == "from_opts"  # opts over CLI flags
    assert cfg.OPTIM.LR == 0.3 and cfg.TRAINER.CONFIGTEST.N_CTX == 2  # literal_eval'd
    assert cfg.TRAINER.NAME == "ConfigTestTrainer"
    assert cfg.is_frozen()

    cfg = setup(["--output-dir", "from_cli", "--seed", "0"])
    assert cfg.OUTPUT_DIR == "from_cli" and cfg.SEED == 0  # --seed 0 is honoured
    assert setup([]).SEED == -1 and setup([]).CONFIG_NAME == ""


def test_extend_cfg_adds_each_node_once():
    cfg = extend_cfg_for_all_trainers(get_cfg_default())
    assert cfg.TRAINER.CONFIGTEST.LEVEL == "extend_cfg"
    cfg.TRAINER.CONFIGTEST.N_CTX = 8
    # the child inherits extend_cfg; a second call for it would have reset N_CTX
    assert "extend_cfg" not in ConfigTestChild.__dict__


def test_unknown_key_and_wrong_type_are_rejected(tmp_path):
    with pytest.raises(AssertionError, match="Non-existent key: TRAINER.CONFIGTEST.NO_SUCH_KEY"):
        setup(["TRAINER.CONFIGTEST.NO_SUCH_KEY", "1"])  # yacs' merge_from_list asserts
    with pytest.raises(ValueError, match="Type mismatch"):
        setup(["OPTIM.MAX_EPOCH", "ten"])
    bad_yaml = write_yaml(tmp_path / "bad.yaml", "OPTIM:\n  NO_SUCH: 1\n")
    with pytest.raises(KeyError, match="Non-existent"):
        setup(["--config-file", bad_yaml])
    with pytest.raises(FileNotFoundError, match="--config-file .*missing.yaml: no such file"):
        setup(["--config-file", str(tmp_path / "missing.yaml")])


def test_cli_config_errors_are_one_line_with_exit_code(tmp_path, capsys):
    for argv, expected in [
        (["OPTIM.NOPE", "1"], "Config error: Non-existent"),
        (["OPTIM.MAX_EPOCH", "ten"], "Config error: Type mismatch"),
        (["--config-file", str(tmp_path / "missing.yaml")], "Config error: --config-file"),
        (["OPTIM.LR"], "Config error: Override list has odd length"),
    ]:
        assert train.cli(argv) == train.EXIT_CONFIG_ERROR
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1, err
        assert "Traceback" not in err
