"""Training curves (``dpl.results.curves``, ``curve_figures``, ``python -m dpl.tools.curves``): the numbers
parsed from both Dassl log generations and restarted runs, the arrays drawn, the files the tool writes."""
import json

import pytest

from dpl.results import curves as C
from dpl.results.curve_figures import FINAL_LABEL, MEAN_LABEL, STEP_LABEL, overlay_figure, run_figure
from dpl.results.plots import import_pyplot
from dpl.tools import curves as tool

# Epoch means are the last line's averages; they differ from the step values, so a mix-up shows.
LOSSES = ("loss", "loss_ce", "loss_text", "loss_img", "loss_kl", "loss_re", "loss_mag")
TABLE = {  # (epoch, batch) -> (per-step value, running average) of loss_re (negative), the others derived
    (1, 1): (-0.0534, -0.0534), (1, 2): (-0.0294, -0.0414), (1, 3): (-0.0100, -0.0309),
    (2, 1): (-0.0600, -0.0600), (2, 2): (-0.0400, -0.0500), (2, 3): (-0.0200, -0.0400),
}


def values(epoch, batch, shift=0.0):
    """The metrics of one step as [(name, value, average)]; ``shift`` makes a rerun's values differ."""
    re_value, re_avg = TABLE[(epoch, batch)]
    rows = [(name, 10 * i + epoch + batch / 10 + shift, 10 * i + epoch + shift) for i, name in enumerate(LOSSES)]
    rows[LOSSES.index("loss_re")] = ("loss_re", re_value + shift, re_avg + shift)
    rows += [("acc", 40.0 + 5 * epoch + batch, 40.0 + 5 * epoch), ("lambda", 0.1 * epoch, 0.1 * epoch)]
    return rows


def lr_of(epoch, batch):
    return 5e-3 / (epoch * 3 + batch)


def new_line(epoch, batch, shift=0.0, max_epoch=2, num_batches=3):
    """A Dassl 0.6.x progress line, as ``SimpleTrainer.progress_line`` writes it."""
    metrics = " ".join(f"{n} {v:.4f} ({a:.4f})" for n, v, a in values(epoch, batch, shift))
    return (f"epoch [{epoch}/{max_epoch}] batch [{batch}/{num_batches}] time 0.119 (0.125) data 0.026 (0.024) "
            f"{metrics} lr {lr_of(epoch, batch):.4e} eta 0:00:12")


def old_line(epoch, batch, max_epoch=2, num_batches=3):
    """A progress line of the older fork: tabs, ``eta`` before the losses, lr as ``%e``."""
    metrics = "\t".join(f"{n} {v:.4f} ({a:.4f})" for n, v, a in values(epoch, batch))
    return (f"epoch [{epoch}/{max_epoch}][{batch}/{num_batches}]\ttime 0.051 (0.112)\tdata 0.000 (0.018)\t"
            f"eta 0:00:19\t{metrics}\tlr {lr_of(epoch, batch):e}")


def result_block(accuracy, decimals=1):
    return ["=> result", "* total: 2,500", "* correct: 2,045", f"* accuracy: {accuracy:.{decimals}f}%",
            "* error: 18.2%", f"* many-shot accuracy: {accuracy - 9:.1f}%", "* macro_f1: 80.1%"]


def new_log(epochs=(1, 2)):
    """A Dassl 0.6.x training log: val after each epoch, the final test after ``Finish training``."""
    lines = ["eval_only: False", "No checkpoint found, train from scratch"]
    for epoch in epochs:
        lines += [new_line(epoch, b) for b in (1, 2, 3)]
        lines += ["Evaluate on the *val* set", *result_block(80.0 + epoch + 0.25, decimals=2)]
    return lines + ["Finish training", "Deploy the last-epoch model", "Evaluate on the *test* set",
                    *result_block(79.5), "Elapsed: 0:00:03"]


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def expected_steps(name, shift_from=None, shift=0.0):
    """[(x, value)] of ``name`` over the table's steps, as the log rounds them; steps at or after
    ``shift_from`` carry ``shift`` (a rerun's values)."""
    points = []
    for epoch, batch in sorted(TABLE):
        s = shift if shift_from and (epoch, batch) >= shift_from else 0.0
        value = dict((n, v) for n, v, _ in values(epoch, batch, s))[name] if name != "lr" else lr_of(epoch, batch)
        points.append((epoch - 1 + batch / 3, float(f"{value:.4e}") if name == "lr" else round(value, 4)))
    return points


def flat(points):
    """[(x, y), ...] as one flat list, which ``pytest.approx`` compares (it takes no nested tuples)."""
    return [v for point in points for v in point]


def check_table(curves, lr_digits):
    for name in LOSSES + ("acc", "lambda"):
        assert flat(curves.steps[name]) == pytest.approx(flat(expected_steps(name)), abs=1e-9), name
        means = [(float(e), round(dict((n, a) for n, _, a in values(e, 3))[name], 4)) for e in (1, 2)]
        assert flat(curves.epoch_means[name]) == pytest.approx(flat(means), abs=1e-9), name
    lrs = [(e - 1 + b / 3, float(f"{lr_of(e, b):.{lr_digits}e}")) for e, b in sorted(TABLE)]
    assert flat(curves.steps["lr"]) == pytest.approx(flat(lrs), rel=1e-12)
    assert "lr" not in curves.epoch_means and not set(C.NOT_CURVES) & set(curves.steps)
    assert curves.num_batches == 3 and curves.max_epoch == 2


# ----- parsing -------------------------------------------------------------------------------------

def test_dassl_06_log_gives_the_values_written(tmp_path):
    write(tmp_path / "seed1" / "log.txt", new_log())
    curves = C.read_training_curves(str(tmp_path / "seed1"))
    check_table(curves, lr_digits=4)
    assert curves.steps["loss_re"][0] == (1 / 3, -0.0534) and curves.epoch_means["loss_re"][0] == (1.0, -0.0309)
    assert list(curves.steps)[:7] == list(LOSSES)
    assert curves.evaluations == {"val": [(1.0, 81.25), (2.0, 82.25)], "test": [(2.0, 79.5)]}
    assert curves.final is None and curves.sources == [str(tmp_path / "seed1" / "log.txt")]


def test_older_fork_log_gives_the_values_written(tmp_path):
    lines = ["eval_only: False"] + [old_line(e, b) for e, b in sorted(TABLE)]
    lines += ["Finished training", "Do evaluation on test set", *result_block(81.8, decimals=2)]
    write(tmp_path / "run" / "log.txt", lines)
    curves = C.read_training_curves(str(tmp_path / "run"))
    check_table(curves, lr_digits=6)
    assert curves.evaluations == {"test": [(2.0, 81.8)]}


def test_appended_log_keeps_the_latest_line_of_a_step(tmp_path):
    """Our engine appends to log.txt on resume: epoch 2 logged twice, the rerun (shifted) wins."""
    first = ["eval_only: False"] + [new_line(e, b) for e, b in [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]]
    rerun = ["Loading checkpoint ... epoch 1"] + [new_line(2, b, shift=1.0) for b in (1, 2, 3)]
    rerun += ["Finish training", "Evaluate on the *test* set", *result_block(77.7)]
    write(tmp_path / "log.txt", first + rerun)
    curves = C.read_training_curves(str(tmp_path))
    for name in ("loss_ce", "loss_re"):
        assert flat(curves.steps[name]) == pytest.approx(flat(expected_steps(name, (2, 1), 1.0))), name
    assert [x for x, _ in curves.steps["loss"]] == pytest.approx([1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2])
    assert curves.epoch_means["loss_ce"] == [(1.0, 11.0), (2.0, 13.0)]  # the rerun's average for epoch 2
    assert curves.evaluations == {"test": [(2.0, 77.7)]}


def test_upstream_restart_reads_log_txt_first_then_timestamped_logs_in_time_order(tmp_path):
    """Upstream Dassl keeps the first log as log.txt and starts log.txt-<timestamp> on each restart."""
    write(tmp_path / "log.txt", ["eval_only: False"] + [new_line(1, b) for b in (1, 2, 3)] + [new_line(2, 1, 5.0)])
    write(tmp_path / "log.txt-2023-05-01-12-00-00", ["eval_only: False", new_line(2, 1, 7.0), new_line(2, 2, 7.0)])
    write(tmp_path / "log.txt-2023-05-02-08-00-00", ["eval_only: False"] + [new_line(2, b, 1.0) for b in (1, 2, 3)]
          + ["Finish training", "Evaluate on the *test* set", *result_block(78.0)])
    curves = C.read_training_curves(str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in curves.sources] == [
        "log.txt", "log.txt-2023-05-01-12-00-00", "log.txt-2023-05-02-08-00-00"]
    assert flat(curves.steps["loss_kl"]) == pytest.approx(flat(expected_steps("loss_kl", (2, 1), 1.0)))
    assert curves.evaluations == {"test": [(2.0, 78.0)]}


def test_final_test_of_results_json_and_eval_only_logs(tmp_path):
    run = tmp_path / "seed1"
    write(run / "log.txt", new_log())
    (run / "results.json").write_text(json.dumps(
        {"split": "test", "finished": True, "epoch": 2, "accuracy": 79.54,
         "tests": {"test": {"split": "test", "finished": True, "epoch": 2, "accuracy": 79.54, "macro_f1": 70.0}}}))
    assert C.read_training_curves(str(run)).final == (2.0, 79.54)
    assert C.read_training_curves(str(run), keyword="macro_f1").final == (2.0, 70.0)
    (run / "results.json").write_text(json.dumps({"split": "test", "finished": False, "epoch": 1, "accuracy": 60}))
    assert C.read_training_curves(str(run)).final is None  # a test during training is no final result
    evaluation = write(tmp_path / "test_new" / "log.txt", ["eval_only: True", "Evaluate on the *test* set",
                                                            *result_block(70.0)])
    curves = C.read_training_curves(str(evaluation.parent))
    assert not curves.has_progress and curves.eval_only_logs == [str(evaluation)] and not curves.evaluations


def test_find_runs_skips_model_folders_and_curves_output(tmp_path):
    cfg = tmp_path / "train_base" / "dtd" / "shots_16" / "DropoutPrompt" / "cfg"
    for seed in (2, 1, 10):
        write(cfg / f"seed{seed}" / "log.txt", ["x"])
        write(cfg / f"seed{seed}" / "VLPromptLearner" / "sub" / "results.json", ["{}"])
    write(cfg / "curves" / "seed1" / "log.txt", ["x"])
    write(tmp_path / "other" / "log.txt-2023-05-01-12-00-00", ["x"])
    (tmp_path / "empty").mkdir()
    runs = C.find_runs(str(tmp_path))
    assert runs == [str(tmp_path / "other")] + [str(cfg / f"seed{s}") for s in (1, 10, 2)]
    assert C.seed_groups(runs) == {str(cfg): [str(cfg / f"seed{s}") for s in (1, 2, 10)]}


# ----- figures -------------------------------------------------------------------------------------

@pytest.fixture
def plt():
    plt = import_pyplot()
    yield plt
    plt.close("all")


def line_data(line):
    return list(zip(map(float, line.get_xdata()), map(float, line.get_ydata())))


def test_run_figure_draws_the_parsed_series(tmp_path, plt):
    write(tmp_path / "log.txt", new_log())
    (tmp_path / "results.json").write_text(json.dumps({"split": "test", "finished": True, "epoch": 2, "accuracy": 79.54}))
    curves = C.read_training_curves(str(tmp_path))
    fig, axes = run_figure(curves, plt)
    assert list(axes) == list(LOSSES) + ["acc", "lambda", "lr"]
    for name, ax in axes.items():
        lines = {line.get_label(): line_data(line) for line in ax.lines}
        assert lines[STEP_LABEL] == curves.steps[name], name
        if name != "lr":
            assert lines[MEAN_LABEL] == curves.epoch_means[name], name
    acc = {line.get_label(): line_data(line) for line in axes["acc"].lines}
    assert acc["val (accuracy)"] == curves.evaluations["val"] == [(1.0, 81.25), (2.0, 82.25)]
    assert acc["test (accuracy)"] == [(2.0, 79.5)] and acc[FINAL_LABEL] == [(2.0, 79.54)]
    assert axes["acc"].get_legend() is not None


def test_overlay_has_one_labelled_line_per_seed_in_every_panel(tmp_path, plt):
    runs = []
    for seed in (1, 2):
        write(tmp_path / f"seed{seed}" / "log.txt", new_log())
        runs.append((f"seed{seed}", C.read_training_curves(str(tmp_path / f"seed{seed}"))))
    fig, axes = overlay_figure(runs, plt, "cfg")
    colours = {}
    for name, ax in axes.items():
        labelled = [line for line in ax.lines if not line.get_label().startswith("_")]
        assert [line.get_label() for line in labelled] == ["seed1", "seed2"], name
        for line, (_, curves) in zip(labelled, runs):
            assert line_data(line) == curves.steps[name]
            colours.setdefault(line.get_label(), set()).add(line.get_color())
        assert ax.get_xlim()[0] == 0 and 2 <= ax.get_xlim()[1] < 2.2
    for name in ("loss", "acc"):  # the colours are the same in every panel: a legend where it helps
        assert [t.get_text() for t in axes[name].get_legend().get_texts()] == ["seed1", "seed2"]
    assert colours == {"seed1": {"C0"}, "seed2": {"C1"}}


# ----- the command line ----------------------------------------------------------------------------

def test_cli_writes_run_figures_and_the_seed_overlay(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "DropoutPrompt" / "cfg"
    for seed in (1, 2):
        write(cfg / f"seed{seed}" / "log.txt", new_log())
    write(cfg / "seed3" / "log.txt", ["eval_only: True", "Evaluate on the *test* set", *result_block(70.0)])
    assert tool.main([str(cfg)]) == 0
    out, err = capsys.readouterr()
    out_dir = cfg / "curves"
    expected = [out_dir / "seed1.png", out_dir / "seed2.png", out_dir / "seeds_overlay.png"]
    assert out.splitlines() == [str(p) for p in expected]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in expected)
    assert err == f"note: {cfg / 'seed3'}: eval-only run: no curves\n"
    assert sorted(p.name for p in (cfg / "seed1").iterdir()) == ["log.txt"]  # nothing written into a run
    monkeypatch.chdir(cfg / "seed1")
    assert tool.main([".", "--out", str(tmp_path / "figs")]) == 0  # a run folder itself, given as "."
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "figs" / "seed1.png")]
    monkeypatch.chdir(tmp_path)
    assert tool.main([str(cfg)]) == 0  # again: the curves/ folder is output, not runs
    assert capsys.readouterr().out.splitlines() == [str(p) for p in expected]


def test_cli_mirrors_a_protocol_tree_under_out(tmp_path, capsys, monkeypatch):
    """Below a protocol root: one file per run and one overlay per config folder, in the same folders."""
    drawn = []  # (kind, folder, name, title): what would be written (rendering is tested above)
    monkeypatch.setattr(tool, "write_run_figure", lambda c, folder, name, plt, title: drawn.append(
        ("run", folder, name, title)) or f"{folder}/{name}")
    monkeypatch.setattr(tool, "write_overlay_figure", lambda labelled, folder, name, plt, title: drawn.append(
        ("overlay", folder, name, title, [label for label, _ in labelled])) or f"{folder}/{name}")
    root = tmp_path / "base2new"
    for part, seeds in (("train_base", (1, 2)), ("test_new", (1,))):
        for seed in seeds:
            write(root / part / "dtd" / "shots_16" / "DropoutPrompt" / "cfg" / f"seed{seed}" / "log.txt", new_log())
    assert tool.main([str(root)]) == 0
    cfg = "train_base/dtd/shots_16/DropoutPrompt/cfg"
    new_cfg = cfg.replace("train_base", "test_new")
    out = root / "curves"
    assert drawn == [
        ("run", f"{out}/{new_cfg}", "seed1.png", f"base2new/{new_cfg}/seed1"),
        ("run", f"{out}/{cfg}", "seed1.png", f"base2new/{cfg}/seed1"),
        ("run", f"{out}/{cfg}", "seed2.png", f"base2new/{cfg}/seed2"),
        ("overlay", f"{out}/{cfg}", "seeds_overlay.png", f"base2new/{cfg}", ["seed1", "seed2"]),
    ]
    assert capsys.readouterr().out.splitlines() == [f"{d[1]}/{d[2]}" for d in drawn]


@pytest.mark.parametrize("case", ["missing", "empty", "file"])
def test_cli_errors_are_one_line(tmp_path, capsys, case):
    path = {"missing": tmp_path / "nope", "empty": tmp_path, "file": tmp_path / "log.txt"}[case]
    if case == "empty":
        (tmp_path / "seed1").mkdir()
    if case == "file":
        write(path, ["x"])
    assert tool.main([str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith(f"error: {path}: ")
    assert not (tmp_path / "curves").exists()


# ----- a real log of this engine -------------------------------------------------------------------

def test_a_dropout_prompt_run_logs_every_curve_for_every_epoch(tmp_path, tiny_clip_path, capsys):
    from helpers import run_train

    code, output_dir, _ = run_train(
        tmp_path, tiny_clip_path, "DropoutPrompt", "DropoutPrompt/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
        ("OPTIM.MAX_EPOCH", "2", "OPTIM.WARMUP_EPOCH", "0", "DATASET.NUM_SHOTS", "2", "TEST.FINAL_MODEL", "best_val",
         "TRAINER.DPL.TEACHER_TEMPLATES", "dataset"))
    assert code == 0
    curves = C.read_training_curves(str(output_dir))
    for name in ("loss", "loss_ce", "loss_text", "loss_img", "loss_kl", "loss_re", "loss_mag", "acc", "lambda", "lr"):
        assert sorted({int(-(-x // 1)) for x, _ in curves.steps[name]}) == [1, 2], name
        if name != "lr":
            assert [e for e, _ in curves.epoch_means[name]] == [1.0, 2.0], name
    results = json.loads((output_dir / "results.json").read_text())
    assert curves.final == (float(results["epoch"]), results["accuracy"])  # best_val: the best epoch's weights
    assert [e for e, _ in curves.evaluations["val"]] == [1.0, 2.0]
    assert curves.evaluations["test"] == [(2.0, pytest.approx(results["accuracy"], abs=0.05))]
    capsys.readouterr()
    assert tool.main([str(output_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == [str(output_dir / "curves" / "out.png")]
