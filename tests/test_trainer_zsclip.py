"""ZeroshotCLIP / ZeroshotCLIP2: hand-crafted templates, eval-only through train.py, fp32 fallback on CPU."""
import json

import torch
import torch.nn.functional as F

from dpl.clip import IMAGENET_TEMPLATES_SELECT, tokenize
from helpers import build_trainer_in_process, run_train

CONFIG = "ZeroshotCLIP/vit_b16.yaml"


def test_eval_only_through_train_py_writes_log_and_results(tmp_path, tiny_clip_path):
    code, out, log = run_train(tmp_path, tiny_clip_path, "ZeroshotCLIP", CONFIG, "--eval-only")
    assert code == 0, log[-2000:]
    assert "Note that load_model() is skipped as no pretrained model is given" in log
    assert "* accuracy:" in log
    assert log.count("PREC fp16 is not supported on cpu: using fp32") == 1  # the config asks for fp16
    results = json.loads((out / "results.json").read_text())
    assert results["trainer"] == "ZeroshotCLIP" and 0.0 <= results["accuracy"] <= 100.0
    assert not any(p.name.startswith("model") for p in out.rglob("*"))  # nothing to checkpoint


def test_upstream_coop_config_works_too(tmp_path, tiny_clip_path):
    code, _, log = run_train(tmp_path, tiny_clip_path, "ZeroshotCLIP", "CoOp/vit_b16.yaml", "--eval-only")
    assert code == 0, log[-2000:]
    assert "* accuracy:" in log


def test_text_features_are_the_dataset_template_and_nothing_is_learnable(tmp_path, tiny_clip_path):
    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "ZeroshotCLIP", CONFIG)
    model = trainer.model
    texts = [f"{name.replace('_', ' ')} texture." for name in trainer.dm.dataset.classnames]  # DTD
    with torch.no_grad():
        reference = F.normalize(model.clip.encode_text(tokenize(texts)).float(), dim=-1)
        images = next(iter(trainer.test_loader))["img"]
        image_features = F.normalize(model.clip.encode_image(images).float(), dim=-1)
        expected_logits = model.clip.logit_scale.exp() * image_features @ reference.t()
        logits = trainer.model_inference(images)
    torch.testing.assert_close(model.text_features, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)
    assert model.learnable_state_dict() == {} and trainer.get_model_names() == []


def test_training_is_refused_with_a_clear_message(tmp_path, tiny_clip_path):
    code, _, log = run_train(tmp_path, tiny_clip_path, "ZeroshotCLIP", CONFIG, ("OPTIM.MAX_EPOCH", "1"))
    assert code == 1
    assert "has nothing to train: run it with --eval-only" in log


def test_zeroshotclip2_ensembles_templates_per_instance(tmp_path, tiny_clip_path):
    first = build_trainer_in_process(tmp_path / "a", tiny_clip_path, "ZeroshotCLIP2", CONFIG)
    second = build_trainer_in_process(tmp_path / "b", tiny_clip_path, "ZeroshotCLIP2", CONFIG)
    expected = [*IMAGENET_TEMPLATES_SELECT, "{} texture."]
    assert first.model.templates == expected and second.model.templates == expected  # no accumulation
    names = [name.replace("_", " ") for name in first.dm.dataset.classnames]
    with torch.no_grad():  # mean of normalised per-template features, re-normalised
        per_template = torch.stack([
            F.normalize(first.model.clip.encode_text(tokenize([t.format(n) for n in names])).float(), dim=-1)
            for t in expected
        ])
    torch.testing.assert_close(first.model.text_features, F.normalize(per_template.mean(0), dim=-1),
                               atol=1e-5, rtol=1e-5)
