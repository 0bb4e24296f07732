"""Typed trainer settings: a node is validated once into plain values; library code raises plain
``SettingError``s naming its parameter, and the trainer turns them into one line naming the config key."""
import pytest
from yacs.config import CfgNode as CN

from dpl.drople import AlignmentGuidance, TokenDropout, residual_lambda
from dpl.engine.errors import UserError
from dpl.prompting import ContextSettings, DeepPromptSettings, GPASettings, gaussian_epoch_weights, setting_errors
from dpl.utils.errors import SettingError
from helpers import run_train, train_opts

CONFIGS = {
    "DropoutPrompt": "DropoutPrompt/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
    "PromptSRC": "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
    "KgCoOp": "KgCoOp/vit_b16_ep100_ctxv1.yaml",
    "CoOp": "CoOp/vit_b16_ep50.yaml",
    "IVLP": "IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
}


def train(tmp_path, weights, trainer, *opts):
    """``train.py`` in-process on a tiny DTD folder with ``opts`` last; returns the exit code."""
    return run_train(tmp_path, weights, trainer, CONFIGS[trainer], train_opts(1), tuple(opts))[0]


@pytest.mark.parametrize("trainer, key, value, message", [
    ("DropoutPrompt", "MAG_TOKENS", "0", "TRAINER.DPL.MAG_TOKENS is 0: alignment guidance needs at least one bridge"),
    ("DropoutPrompt", "IMPORTANCE", "random", "TRAINER.DPL.IMPORTANCE is 'random': use one of ['full', "),
    ("DropoutPrompt", "P_MIN", "0.9", "TRAINER.DPL.P_MIN is 0.9: need 0 <= p_min <= p_max <= 1 (p_min 0.9, p_max 0.5)"),
    ("DropoutPrompt", "KL_WEIGHT", "-1", "TRAINER.DPL.KL_WEIGHT is -1.0: it must be >= 0"),
    ("DropoutPrompt", "DROP_LAYERS_TEXT", "[0, 7]",
     "TRAINER.DPL.DROP_LAYERS_TEXT is (0, 7): layers [7] are outside 0..2 of this backbone"),
    ("PromptSRC", "GPA_STD", "0", "TRAINER.PROMPTSRC.GPA_STD is 0.0: need a positive standard deviation"),
    ("PromptSRC", "N_CTX_TEXT", "0", "TRAINER.PROMPTSRC.N_CTX_TEXT is 0: need at least one text context token"),
    ("KgCoOp", "W", "-2", "TRAINER.KGCOOP.W is -2.0: the loss weight must be >= 0"),
    ("CoOp", "CLASS_TOKEN_POSITION", "'left'", "TRAINER.COOP.CLASS_TOKEN_POSITION is 'left': use one of ['end', "),
])
def test_a_bad_setting_is_one_line_naming_its_key(trainer, key, value, message, tmp_path, tiny_clip_path, capsys):
    node = {"DropoutPrompt": "DPL", "PromptSRC": "PROMPTSRC", "KgCoOp": "KGCOOP", "CoOp": "COOP"}[trainer]
    code = train(tmp_path, tiny_clip_path, trainer, f"TRAINER.{node}.{key}", value)
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert message in err.strip().splitlines()[-1], err


def test_a_clamped_depth_is_logged_with_its_key(tmp_path, tiny_clip_path, capsys):
    assert train(tmp_path, tiny_clip_path, "IVLP", "TRAINER.IVLP.PROMPT_DEPTH_TEXT", "9",
                     "TEST.NO_TEST", "True") == 0
    out = capsys.readouterr().out
    assert "TRAINER.IVLP.PROMPT_DEPTH_TEXT = 9 exceeds the backbone's 3 layers: using 3" in out
    assert "TRAINER.IVLP.PROMPT_DEPTH_VISION = 9 exceeds the backbone's 3 layers: using 3" in out


def test_settings_are_plain_values_read_once():
    node = CN(dict(N_CTX_TEXT=4, N_CTX_VISION=2, PROMPT_DEPTH_TEXT=9, PROMPT_DEPTH_VISION=9, CTX_INIT="a photo of a",
                   GPA_MEAN=15.0, GPA_STD=1.0, N_CTX=16, CSC=False, CLASS_TOKEN_POSITION="end"))
    prompts = DeepPromptSettings.from_node(node)
    assert prompts == DeepPromptSettings(4, 2, 9, 9, "a photo of a")
    assert GPASettings.from_node(node) == GPASettings(15.0, 1.0)
    assert ContextSettings.from_node(node).n_ctx == 16
    with pytest.raises(AttributeError):  # frozen: nothing changes a run's settings after validation
        prompts.n_ctx_text = 8


def test_library_errors_name_parameters_not_config_keys():
    with pytest.raises(SettingError) as raised:
        TokenDropout(importance="random")
    assert raised.value.field == "importance" and "TRAINER" not in str(raised.value)
    for call in (lambda: AlignmentGuidance(0, 8, 8), lambda: residual_lambda(0, 0),
                 lambda: gaussian_epoch_weights(0, 1.0, 1.0)):
        with pytest.raises(ValueError) as raised:
            call()
        assert "TRAINER" not in str(raised.value) and "OPTIM" not in str(raised.value)


def test_setting_errors_maps_a_field_to_the_key_of_the_node():
    node = CN({"SIGMA": -1.0})
    with pytest.raises(UserError, match=r"^TRAINER\.DPL\.SIGMA is -1\.0: need sigma >= 0$"):
        with setting_errors("TRAINER.DPL", node):
            TokenDropout(sigma=node.SIGMA)
