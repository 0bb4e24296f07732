"""Golden regression tests: every trainer's numbers on a tiny CLIP, compared with stored JSON files.

A training trainer runs ``train.py`` in-process for two short epochs on a synthetic DTD folder with a
fixed seed; the golden file holds every logged loss component of every step (as the log prints them)
and checksums (sum, sum of absolute values, L2 norm) of each learnable tensor of the final checkpoint.
A training-free trainer (zero-shot CLIP) stores checksums of its class text features and of the
logits of the test images. Values are compared with a tolerance that absorbs the log's rounding and
float reordering on another CPU, not a changed formula, weight or schedule.

After an *intended* change to a method's numbers, regenerate the files and commit them with the change:

    make golden     # = OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_golden.py --update-golden
"""
import json
import math
import re

import pytest
import torch

from dpl.project import PROJECT_ROOT
from helpers import build_trainer_in_process, run_train, train_opts

GOLDEN_DIR = PROJECT_ROOT / "tests" / "golden"
LOSS_RTOL, LOSS_ATOL = 1e-3, 2e-4  # the log prints 4 decimals
TENSOR_RTOL, TENSOR_ATOL = 1e-3, 1e-5

# name -> (trainer, shipped config, extra options); every trainer the project registers has one.
TRAINING_CASES = {
    "CoOp": ("CoOp", "CoOp/vit_b16_ep50.yaml", ()),
    "KgCoOp": ("KgCoOp", "KgCoOp/vit_b16_ep100_ctxv1.yaml", ()),
    "CoCoOp": ("CoCoOp", "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", ()),
    "IVLP": ("IVLP", "IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml", ()),
    "MaPLe": ("MaPLe", "MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", ()),
    "PromptSRC": ("PromptSRC", "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
                  ("TRAINER.PROMPTSRC.GPA_MEAN", "1.0")),  # both epochs weigh in the aggregate
    "DropoutPrompt": ("DropoutPrompt", "DropoutPrompt/vit_b16_c2_ep20_batch4_4+4ctx.yaml", ()),
    "DropoutPrompt_official": ("DropoutPrompt", "DropoutPrompt/vit_b16_c2_ep20_batch4_4+4ctx_official.yaml", ()),
}
ZERO_SHOT_CASES = {
    "ZeroshotCLIP": ("ZeroshotCLIP", "ZeroshotCLIP/vit_b16.yaml"),
    "ZeroshotCLIP2": ("ZeroshotCLIP2", "ZeroshotCLIP/vit_b16.yaml"),
}
PROGRESS = re.compile(r"epoch \[(\d+)/\d+\] batch \[(\d+)/\d+\] time \S+ \(\S+\) data \S+ \(\S+\) (.*?) lr ")
COMPONENT = re.compile(r"(\w+) (-?[\d.]+(?:e[+-]?\d+)?) \(")


def checksums(tensor):
    values = tensor.detach().double().flatten()
    return {"shape": list(tensor.shape), "sum": values.sum().item(), "abs_sum": values.abs().sum().item(),
            "norm": values.norm().item()}


def logged_steps(log):
    """``[{"epoch", "batch", component: value}]`` from the progress lines (the current values).

    The batch accuracy is left out: on four images one near-tie flips it by 25 points.
    """
    steps = []
    for epoch, batch, losses in PROGRESS.findall(log):
        step = {"epoch": int(epoch), "batch": int(batch)}
        step.update({name: float(value) for name, value in COMPONENT.findall(losses + " (") if name != "acc"})
        steps.append(step)
    return steps


def run_training_case(tmp_path, weights, trainer, config, extra):
    code, output_dir, log = run_train(tmp_path, weights, trainer, config, train_opts(2), tuple(extra))
    assert code == 0, log[-2000:]
    checkpoint_files = sorted(output_dir.glob("*/model.pth.tar-2"))
    assert len(checkpoint_files) == 1, checkpoint_files
    state = torch.load(checkpoint_files[0], map_location="cpu", weights_only=False)["state_dict"]
    return {"steps": logged_steps(log), "tensors": {name: checksums(t) for name, t in sorted(state.items())}}


def run_zero_shot_case(tmp_path, weights, trainer, config):
    model = build_trainer_in_process(tmp_path, weights, trainer, config)
    model.set_model_mode("eval")
    with torch.no_grad():
        text_features = model.model.encode_text()
        logits = torch.cat([model.model_inference(model.parse_batch_test(batch)[0]) for batch in model.test_loader])
    return {"tensors": {"text_features": checksums(text_features), "test_logits": checksums(logits)}}


def close(actual, expected, rtol, atol):
    return math.isclose(actual, expected, rel_tol=rtol, abs_tol=atol)


def differences(actual, golden):
    """Human-readable lines for every value that moved beyond the tolerance (empty when none did)."""
    lines = []
    if "steps" in golden:
        if len(actual["steps"]) != len(golden["steps"]):
            lines.append(f"{len(actual['steps'])} logged steps, golden has {len(golden['steps'])}")
        for got, want in zip(actual["steps"], golden["steps"]):
            where = f"epoch {want['epoch']} batch {want['batch']}"
            if set(got) != set(want):
                lines.append(f"{where}: logged {sorted(got)}, golden {sorted(want)}")
                continue
            lines += [f"{where} {name}: {got[name]} != golden {value}" for name, value in want.items()
                      if not close(got[name], value, LOSS_RTOL, LOSS_ATOL)]
    if set(actual["tensors"]) != set(golden["tensors"]):
        lines.append(f"tensors {sorted(actual['tensors'])}, golden {sorted(golden['tensors'])}")
    for name in sorted(set(actual["tensors"]) & set(golden["tensors"])):
        got, want = actual["tensors"][name], golden["tensors"][name]
        if got["shape"] != want["shape"]:
            lines.append(f"{name}: shape {got['shape']} != golden {want['shape']}")
            continue
        lines += [f"{name} {key}: {got[key]:.8g} != golden {want[key]:.8g}" for key in ("sum", "abs_sum", "norm")
                  if not close(got[key], want[key], TENSOR_RTOL, TENSOR_ATOL)]
    return lines


def check_against_golden(name, actual, update):
    path = GOLDEN_DIR / f"{name}.json"
    if update:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(json.dumps(actual, indent=1, sort_keys=True) + "\n")
        return
    assert path.is_file(), f"no golden file {path}: run `make golden` once and commit it"
    lines = differences(actual, json.loads(path.read_text()))
    assert not lines, (f"{name} no longer reproduces {path.name} ({len(lines)} differences; if the change is "
                       "intended, run `make golden` and commit the files):\n  " + "\n  ".join(lines[:20]))


@pytest.fixture
def update_golden(request):
    return request.config.getoption("--update-golden")


@pytest.mark.parametrize("name", sorted(TRAINING_CASES))
def test_training_reproduces_golden_numbers(name, tmp_path, tiny_clip_path, update_golden):
    trainer, config, extra = TRAINING_CASES[name]
    actual = run_training_case(tmp_path, tiny_clip_path, trainer, config, extra)
    assert len(actual["steps"]) >= 4 and actual["tensors"]
    check_against_golden(name, actual, update_golden)


@pytest.mark.parametrize("name", sorted(ZERO_SHOT_CASES))
def test_zero_shot_reproduces_golden_numbers(name, tmp_path, tiny_clip_path, update_golden):
    trainer, config = ZERO_SHOT_CASES[name]
    check_against_golden(name, run_zero_shot_case(tmp_path, tiny_clip_path, trainer, config), update_golden)


def test_every_registered_trainer_has_a_golden_case():
    from dpl.engine import TRAINER_REGISTRY
    from dpl.project import import_project_modules

    import_project_modules()
    covered = {trainer for trainer, *_ in TRAINING_CASES.values()} | {t for t, _ in ZERO_SHOT_CASES.values()}
    assert set(TRAINER_REGISTRY.registered_names()) <= covered


def test_a_moved_number_is_reported_with_its_place():
    golden = {"steps": [{"epoch": 1, "batch": 1, "loss": 1.0, "loss_ce": 1.0}],
              "tensors": {"ctx": {"shape": [2, 3], "sum": 1.0, "abs_sum": 2.0, "norm": 1.5}}}
    moved = json.loads(json.dumps(golden))
    assert differences(moved, golden) == []
    moved["steps"][0]["loss_ce"] = 1.01
    moved["tensors"]["ctx"]["norm"] = 1.6
    assert differences(moved, golden) == [
        "epoch 1 batch 1 loss_ce: 1.01 != golden 1.0", "ctx norm: 1.6 != golden 1.5"]
