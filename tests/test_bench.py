"""The benchmark harness (quick form on the tiny CLIP; no timing assertions) and the chunked /
checkpointed text-encoding switch (MODEL.TEXT_CHUNK_SIZE, MODEL.TEXT_CHECKPOINT)."""
import json

import pytest
import torch

from dpl.bench.cli import main as bench_main
from dpl.bench.measure import Task, measure
from dpl.bench.models import build_bench_trainer, bench_cfg, write_random_weights
from dpl.bench.report import add_ratios, target_check
from dpl.bench.report import parse_target, report_text
from dpl.engine.errors import UserError

from helpers import build_trainer_in_process

QUICK = ["--arch", "tiny", "--steps", "2", "--warmup", "1", "--num-classes", "5", "--eval-batch-size", "4",
         "--eval-batches", "1"]
RESULT_KEYS = {"trainer", "variant", "step_seconds", "step_seconds_median", "step_cpu_seconds_median", "step_gflop",
               "peak_memory_mib", "peak_memory_total_mib", "memory_kind", "eval_images_per_second",
               "step_vs_PromptSRC", "step_vs_CoOp", "step_cpu_vs_PromptSRC", "flops_vs_PromptSRC",
               "memory_vs_PromptSRC", "memory_vs_CoOp", "num_classes", "batch_size", "precision", "threads"}


@pytest.mark.slow
def test_quick_benchmark_prints_table_and_writes_json(tmp_path, capsys):
    """The CI form: two trainers (incl. DropoutPrompt), each in a spawned process, and the JSON."""
    out = tmp_path / "bench.json"
    code = bench_main(QUICK + ["--trainers", "PromptSRC,DropoutPrompt,DropoutPrompt-official", "--eval-compare-classes", "0",
                               "--threads", "1", "--json", str(out), "--target", "DropoutPrompt/PromptSRC<=1.15"])
    assert code == 0
    text = capsys.readouterr().out
    assert "| trainer" in text and "x PromptSRC" in text and "eval img/s" in text
    assert "Target DropoutPrompt <= 1.15x PromptSRC: step time " in text
    doc = json.loads(out.read_text())
    assert set(doc) == {"benchmark", "results", "eval_compare", "targets"}
    assert doc["benchmark"]["arch"] == "tiny" and doc["benchmark"]["isolated"] is True
    rows = {row["trainer"]: row for row in doc["results"]}
    assert set(rows) == {"PromptSRC", "DropoutPrompt", "DropoutPrompt-official"}
    for row in rows.values():
        assert RESULT_KEYS <= set(row)
        assert len(row["step_seconds"]) == 2 and row["step_seconds_median"] > 0
        assert row["peak_memory_mib"] is not None and row["peak_memory_total_mib"] > row["peak_memory_mib"]
        assert row["eval_images_per_second"] > 0 and row["variant"] == "plain" and row["threads"] == 1
        assert row["step_vs_CoOp"] is None  # CoOp was not measured
    assert rows["PromptSRC"]["step_vs_PromptSRC"] == 1.0
    expected = rows["DropoutPrompt"]["step_seconds_median"] / rows["PromptSRC"]["step_seconds_median"]
    assert rows["DropoutPrompt"]["step_vs_PromptSRC"] == pytest.approx(expected)
    (check,) = doc["targets"]
    assert check["target"] == "DropoutPrompt/PromptSRC<=1.15"
    assert check["step_ratio"] == pytest.approx(expected)
    assert check["step_met"] == (expected <= 1.15)
    # DropoutPrompt adds compute (attention maps, the MAG projections); the FLOP count is load-independent
    assert rows["DropoutPrompt"]["step_gflop"] > rows["PromptSRC"]["step_gflop"] > 0
    # the official recipe's clean-view teacher features come from the cache after the warm-up step: no teacher pass
    assert rows["DropoutPrompt-official"]["step_gflop"] < rows["DropoutPrompt"]["step_gflop"]


def test_text_switch_variant_rows_and_ratios_within_variant(tmp_path, capsys):
    code = bench_main(QUICK + ["--trainers", "ZeroshotCLIP,CoOp", "--eval-compare-classes", "6", "--text-chunk", "2",
                               "--text-checkpoint", "--in-process", "--json", str(tmp_path / "b.json")])
    assert code == 0
    text = capsys.readouterr().out
    assert "chunk 2 + checkpoint" in text and "Evaluation, CoOp at 6 classes" in text
    doc = json.loads((tmp_path / "b.json").read_text())
    rows = {(row["trainer"], row["variant"]): row for row in doc["results"]}
    assert set(rows) == {(t, v) for t in ("ZeroshotCLIP", "CoOp") for v in ("plain", "chunk 2 + checkpoint")}
    assert rows["CoOp", "chunk 2 + checkpoint"]["step_vs_CoOp"] == 1.0  # against CoOp of the same variant
    chunked, plain = rows["CoOp", "chunk 2 + checkpoint"], rows["CoOp", "plain"]
    assert chunked["step_gflop"] > plain["step_gflop"]  # checkpointing recomputes the text blocks' forward
    zero_shot = rows["ZeroshotCLIP", "plain"]
    assert "step_seconds" not in zero_shot and zero_shot["eval_images_per_second"] > 0  # eval only
    assert doc["targets"] == []  # no --target: ratios only
    assert "Target" not in text and "MISSED" not in text and " met" not in text
    compare = doc["eval_compare"]
    assert compare["num_classes"] == 6 and compare["once_images_per_second"] > 0
    assert compare["speedup"] == pytest.approx(compare["once_images_per_second"] / compare["per_batch_images_per_second"])
    assert compare["text_encoding_seconds"] > 0 and compare["speedup_per_batch_amortised"] > 1


@pytest.mark.slow
def test_data_parallel_mode_reports_samples_per_second_on_one_and_n_processes(tmp_path, capsys):
    """Two spawned gloo processes per trainer, as torchrun trains; the numbers, not their size, are checked."""
    out = tmp_path / "dp.json"
    code = bench_main(["--arch", "tiny", "--trainers", "ZeroshotCLIP,CoOp", "--batch-size", "4", "--steps", "2",
                       "--warmup", "1", "--num-classes", "5", "--threads", "1", "--data-parallel", "2",
                       "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "samples/s, 1 process" in text and "samples/s, 2 processes" in text and "threads per process: 1" in text
    doc = json.loads(out.read_text())
    (row,) = doc["data_parallel"]  # zero-shot CLIP trains nothing
    assert row["trainer"] == "CoOp" and (row["global_batch"], row["processes"], row["steps"]) == (4, 2, 2)
    assert row["samples_per_second_1"] > 0 and row["samples_per_second_n"] > 0
    assert row["speedup"] == pytest.approx(row["samples_per_second_n"] / row["samples_per_second_1"])
    assert doc["meta"]["command"].startswith("python -m dpl.bench") and "load_average_start" in doc["meta"]


def test_patch_randaugment_mode_reports_images_per_second_of_both_implementations(tmp_path, capsys):
    out = tmp_path / "pra.json"
    assert bench_main(["--patch-randaugment", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "patch RandAugment (224x224, 16x16 tiles, 2 ops at magnitude 7, 2 images" in text
    assert "vectorised" in text and "per-tile loop (Pillow)" in text
    rates = json.loads(out.read_text())["patch_randaugment"]
    assert rates["images"] == 2 and rates["vectorised_images_per_second"] > 0
    assert rates["speedup"] == pytest.approx(rates["vectorised_images_per_second"] / rates["per_tile_images_per_second"])


TOKEN_DROPOUT_KEYS = {"modality", "shape", "mag_tokens", "mag_attention_ms", "repeats", "ours_ms", "reference_ms", "ours_cpu_ms",
                      "reference_cpu_ms", "ratio", "cpu_ratio"}


def test_token_dropout_mode_reports_both_paths_and_their_ratios(tmp_path, capsys):
    out = tmp_path / "td.json"
    assert bench_main(["--token-dropout", "2", "--batch-size", "2", "--num-classes", "3", "--threads", "1",
                       "--verbose", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "python -m dpl.bench --token-dropout 2" in text and "1 threads, load average" in text
    assert "| vision | 2 x 12 x 201 x 768 |" in text and "| text | 3 x 8 x 77 x 512 |" in text
    for modality in ("vision", "text"):
        for path in ("ours", "reference"):
            assert f"Profile, {modality}, {path} (2 calls)" in text
    doc = json.loads(out.read_text())
    assert {"date", "command", "host", "torch", "torch_threads", "load_average"} <= set(doc["meta"])
    rows = {row["modality"]: row for row in doc["token_dropout"]}
    assert set(rows) == {"vision", "text"}
    for row in rows.values():
        assert set(row) == TOKEN_DROPOUT_KEYS and row["repeats"] == 2
        assert row["ratio"] == pytest.approx(row["reference_ms"] / row["ours_ms"])
        assert row["cpu_ratio"] == pytest.approx(row["reference_cpu_ms"] / row["ours_cpu_ms"])
def test_eval_sweep_mode_reports_both_arms_and_their_ratio(tmp_path, capsys, monkeypatch):
    """18 evaluations on real JPEG files, cache off then on (from an empty folder); the keys, not the ratio's size."""
    monkeypatch.setenv("DPL_FEATURE_CACHE", str(tmp_path / "must_stay_unused"))  # the mode uses its own folder
    out = tmp_path / "sweep.json"
    code = bench_main(["--arch", "tiny", "--eval-sweep", "8", "--num-classes", "4", "--threads", "1",
                       "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "evaluation sweep: 3 seeds x ZeroshotCLIP, CoOp, KgCoOp x base/new = 18 evaluations" in text
    assert "image feature cache off: " in text and "off / on: " in text and "load average" in text
    doc = json.loads(out.read_text())
    meta, sweep = doc["meta"], doc["eval_sweep"]
    assert {"date", "command", "host", "platform", "cpu_count", "torch_threads", "load_average_start",
            "load_average_end", "arch", "device"} <= set(meta)
    assert meta["command"].startswith("python -m dpl.bench") and meta["arch"] == "tiny"
    assert {"off_seconds", "on_seconds", "speedup", "evaluations", "test_images", "on_misses", "on_hits",
            "same_results", "off", "on"} <= set(sweep)
    assert sweep["evaluations"] == len(sweep["off"]) == len(sweep["on"]) == 18
    assert sweep["test_images"] == {"base": 4, "new": 4} and sweep["image_px"] == 32
    assert (sweep["on_misses"], sweep["on_hits"]) == (2, 16) and sweep["same_results"] is True
    assert {e["feature_cache"] for e in sweep["off"]} == {"off"}
    assert sweep["speedup"] == pytest.approx(sweep["off_seconds"] / sweep["on_seconds"])
    assert not (tmp_path / "must_stay_unused").exists()


def test_cli_refuses_bad_arguments(tmp_path):
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    for argv in (["--trainers", "CoOp,Nope"], ["--json", str(existing)], ["--steps", "-1"],
                 ["--trainers", "CoOp", "--target", "DropoutPrompt/CoOp<=1.2"], ["--data-parallel", "1"],
                 ["--batch-size", "5", "--data-parallel", "2"], ["--patch-randaugment", "-1"],
                 ["--token-dropout", "-1"], ["--eval-sweep", "3", "--num-classes", "4"],
                 ["--eval-sweep", "4", "--num-classes", "1"]):
        with pytest.raises(SystemExit) as exc:
            bench_main(["--arch", "tiny"] + argv)
        assert exc.value.code == 2
    assert existing.read_text() == "{}"


@pytest.mark.parametrize("value, problem", [
    ("DropoutPrompt<=1.15", "expected TRAINER/REFERENCE[:METRIC]<=RATIO"),
    ("DropoutPrompt/PromptSRC", "expected TRAINER/REFERENCE[:METRIC]<=RATIO"),
    ("DropoutPrompt/PromptSRC<=fast", "RATIO must be a positive number"),
    ("DropoutPrompt/PromptSRC<=0", "RATIO must be a positive number"),
    ("DropoutPrompt/PromptSRC:speed<=1.1", "unknown METRIC 'speed'"),
])
def test_malformed_target_is_one_argparse_error_naming_value_and_form(value, problem, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main(["--arch", "tiny", "--target", value])
    assert exc.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"python -m dpl.bench: error: argument --target: {value!r}: ") and problem in error
    assert "TRAINER/REFERENCE[:METRIC]<=RATIO" in error


def test_target_parsing_and_its_verdict_line_only_when_asked():
    target = parse_target("DropoutPrompt/PromptSRC<=1.15")
    assert (target.trainer, target.reference, target.max_ratio) == ("DropoutPrompt", "PromptSRC", 1.15)
    assert target.metrics == ("step", "step_cpu", "flops", "memory") and target.text == "DropoutPrompt/PromptSRC<=1.15"
    assert parse_target("IVLP/CoOp:memory<=2").metrics == ("memory",)

    def result(trainer, step, memory):
        return dict(trainer=trainer, step_seconds_median=step, peak_memory_mib=memory, text_chunk_size=0,
                    text_checkpoint=False)

    rows = add_ratios([result("CoOp", 1.0, 100.0), result("IVLP", 1.5, 300.0)])
    meta = dict(date="d", arch="tiny", device="cpu", batch_size=1, num_classes=2, steps=1, warmup=0, torch_threads=1,
                load_average_start=None, load_average_end=None, memory_kind="peak RSS")
    assert "Target" not in report_text(rows, meta)
    check = target_check(rows, parse_target("IVLP/CoOp:memory<=2"))
    assert check["memory_ratio"] == pytest.approx(3.0) and check["memory_met"] is False and "step_ratio" not in check
    line = report_text(rows, meta, checks=[check]).splitlines()[-1]
    assert line == "Target IVLP <= 2x CoOp: peak memory 3.00x (MISSED)"
    assert target_check(rows, parse_target("DropoutPrompt/CoOp<=2")) is None  # not measured: no check


def test_ratios_and_target_check():
    def result(trainer, step, memory, chunk=0):
        return dict(trainer=trainer, step_seconds_median=step, peak_memory_mib=memory, text_chunk_size=chunk,
                    text_checkpoint=False)

    rows = add_ratios([result("CoOp", 1.0, 100.0), result("PromptSRC", 2.0, 200.0),
                       result("DropoutPrompt", 2.4, 210.0), result("PromptSRC", 4.0, 50.0, chunk=8)])
    by = {(r["trainer"], r["variant"]): r for r in rows}
    assert by["DropoutPrompt", "plain"]["step_vs_PromptSRC"] == pytest.approx(1.2)
    assert by["DropoutPrompt", "plain"]["memory_vs_CoOp"] == pytest.approx(2.1)
    assert by["PromptSRC", "chunk 8"]["memory_vs_PromptSRC"] == 1.0
    assert by["PromptSRC", "chunk 8"]["step_vs_CoOp"] is None
    check = target_check(rows, parse_target("DropoutPrompt/PromptSRC<=1.15"))
    assert check["step_met"] is False and check["memory_met"] is True
    assert check["memory_ratio"] == pytest.approx(1.05)


def test_measure_in_process_reports_eval_throughput_of_both_encodings(tmp_path):
    weights = write_random_weights("tiny", tmp_path)
    task = Task(trainer="CoOp", backbone_name="tiny", weights_path=str(weights), resolution=32, device="cpu",
                output_dir=str(tmp_path / "out"), num_classes=3, batch_size=2, steps=1, warmup=0,
                eval_batch_size=2, eval_batches=2, eval_per_batch_text=True)
    result = measure(task)
    assert result["precision"] == "fp32" and result["learnable_parameters"] == 4 * 128  # 4 ctx tokens x width
    assert result["eval_per_batch_text_images_per_second"] > 0 and result["eval_images_per_second"] > 0


# ----- the chunked / checkpointed text-encoding switch -------------------------------------------------
def _step_outputs(trainer, images, labels):
    """Logits, loss components and learnable gradients of one training forward/backward (no update)."""
    trainer.set_model_mode("train")
    trainer.model.zero_grad(set_to_none=True)
    logits, losses = trainer.compute_losses(images, labels)
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    return logits.detach(), {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize("trainer_name, config, opts", [
    ("CoOp", "CoOp/vit_b16_ctxv1.yaml", ()),
    ("PromptSRC", "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml", ()),
    # No random perturbation, so both runs are comparable; the MAG features still come from the hooks.
    ("DropoutPrompt", "DropoutPrompt/vit_b16_c2_ep20_batch4_4+4ctx.yaml", ("TRAINER.DPL.PERTURBATION", "none")),
])
def test_chunked_checkpointed_text_encoding_gives_same_logits_and_gradients(tmp_path, tiny_clip_path, trainer_name,
                                                                           config, opts):
    plain = build_trainer_in_process(tmp_path / "plain", tiny_clip_path, trainer_name, config, *opts)
    chunked = build_trainer_in_process(tmp_path / "chunked", tiny_clip_path, trainer_name, config, *opts,
                                       "MODEL.TEXT_CHUNK_SIZE", "3", "MODEL.TEXT_CHECKPOINT", "True")
    encoder = chunked.model.text_encoder
    assert (encoder.chunk_size, encoder.checkpoint) == (3, True)
    assert plain.model.text_encoder.chunk_size == 0 and not plain.model.text_encoder.checkpoint
    assert plain.num_classes == 4  # 4 classes: chunks of 3 and 1
    chunked.model.load_learnable_state_dict(plain.model.learnable_state_dict())
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(2, 3, 32, 32, generator=generator), torch.tensor([0, 3])
    logits_a, losses_a, grads_a = _step_outputs(plain, images, labels)
    logits_b, losses_b, grads_b = _step_outputs(chunked, images, labels)
    torch.testing.assert_close(logits_b, logits_a, rtol=1e-5, atol=1e-5)
    assert losses_a.keys() == losses_b.keys()
    for name in losses_a:
        torch.testing.assert_close(losses_b[name], losses_a[name], rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        assert grads_a[name].abs().sum() > 0, f"{name} got no gradient"
        # chunks change the float summation order of the shared-context gradient: compare at its scale
        scale = grads_a[name].abs().max().item()
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-4 * scale)


def test_negative_text_chunk_size_is_a_clear_error(tmp_path, tiny_clip_path):
    cfg = bench_cfg("CoOp", "", tiny_clip_path, 32, "cpu", tmp_path, text_chunk_size=-1)
    with pytest.raises(UserError, match="MODEL.TEXT_CHUNK_SIZE is -1"):
        build_bench_trainer(cfg, num_classes=2)
