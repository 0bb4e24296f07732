"""parse_results.py on fixture logs in the exact upstream formats and on our results.json.

Fixture logs (tests/fixtures/logs/upstream/):
  dassl063/   Dassl 0.6.3 train logs: `Finish training`, 1-decimal `* accuracy: 81.8%`, a mid-training val
              result before the end signal (must be ignored)
  old_fork/   the older Dassl fork: `Finished training`, `Do evaluation on test set`, 2 decimals
  resumed/    seed2 was killed (log.txt without an end signal) and resumed into log.txt-2023-05-01-12-00-00
  eval_only/  --eval-only logs (`=> result` only), need --test-log in upstream mode
"""
import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "logs" / "upstream"
import parse_results  # noqa: E402  (the repo root is on sys.path: tests/conftest.py)
from dpl.results import logs, render, runs, tables  # noqa: E402


def run_cli(*argv):
    """(exit code, stdout, stderr) of parse_results.main in-process."""
    out, err = io.StringIO(), io.StringIO()
    old_err, sys.stderr = sys.stderr, err
    try:
        code = parse_results.main([str(a) for a in argv], out=out)
    finally:
        sys.stderr = old_err
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------------------------
# Upstream mode: CoOp's parse_test_res.py output, to the digit
# ---------------------------------------------------------------------------------------------


def test_dassl063_logs_summary_matches_upstream_format():
    code, out, _ = run_cli(FIXTURES / "dassl063")
    assert code == 0
    d = FIXTURES / "dassl063"
    assert out.splitlines() == [
        f"Parsing files in {d}",
        f"file: {d}/seed1/log.txt. accuracy: 81.80%. ",
        f"file: {d}/seed2/log.txt. accuracy: 81.50%. ",
        f"file: {d}/seed3/log.txt. accuracy: 82.10%. ",
        "===",
        f"Summary of directory: {d}",
        "* accuracy: 81.80% +- 0.24%",  # population std (np.std); the sample std would be 0.30
        "===",
    ]


def test_old_fork_logs_finished_training_and_two_decimals():
    code, out, _ = run_cli(FIXTURES / "old_fork")
    assert code == 0
    assert "accuracy: 81.67%. " in out
    assert "* accuracy: 81.73% +- 0.05%" in out


def test_ci95():
    code, out, _ = run_cli(FIXTURES / "dassl063", "--ci95")
    assert code == 0
    assert "* accuracy: 81.80% +- 0.28%" in out  # 1.96 * 0.2449 / sqrt(3)


def test_keyword_macro_f1():
    code, out, _ = run_cli(FIXTURES / "dassl063", "--keyword", "macro_f1")
    assert code == 0
    assert "* macro_f1: 81.50% +- 0.24%" in out


def test_resumed_seed_read_from_timestamped_log():
    code, out, _ = run_cli(FIXTURES / "resumed")
    assert code == 0
    d = FIXTURES / "resumed"
    assert f"file: {d}/seed2/log.txt-2023-05-01-12-00-00. accuracy: 79.90%. " in out
    assert "* accuracy: 80.17% +- 0.21%" in out  # all three seeds, not just seeds 1 and 3


def test_eval_only_logs_need_test_log():
    code, out, err = run_cli(FIXTURES / "eval_only")
    assert code == 1
    assert "eval-only logs need --test-log" in out
    assert "nothing found" in err
    code, out, _ = run_cli(FIXTURES / "eval_only", "--test-log")
    assert code == 0
    assert "* accuracy: 75.43% +- 0.45%" in out


def test_multi_exp_average():
    code, out, _ = run_cli(FIXTURES, "--multi-exp")
    assert code == 0
    assert out.count("Summary of directory:") == 3  # eval_only has no training end signal: listed, skipped
    assert out.splitlines()[-2:] == ["Average performance", "* accuracy: 81.23%"]  # (81.80 + 81.73 + 80.17) / 3


def test_parse_log_last_match_after_end_signal_wins(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text(
        "=> result\n* accuracy: 10.0%\nFinish training\n=> result\n* accuracy: 20.0%\n"
        "=> result\n* accuracy: 30.5%\n* error: 69.5%\n"
    )
    assert logs.parse_log(log, "accuracy", logs.TRAIN_END_SIGNALS) == 30.5
    assert logs.parse_log(log, "accuracy", (logs.TEST_END_SIGNAL,)) == 30.5
    log.write_text("=> result\n* accuracy: 10.0%\n")
    assert logs.parse_log(log, "accuracy", logs.TRAIN_END_SIGNALS) is None


def test_stray_entries_are_listed_not_fatal_and_strict_fails(tmp_path):
    d = tmp_path / "exp"
    shutil.copytree(FIXTURES / "dassl063", d)
    (d / "notes.txt").write_text("hello")
    (d / "seed4").mkdir()  # started, nothing logged yet
    code, out, _ = run_cli(d)
    assert code == 0
    assert f"skipped: {d}/notes.txt: not a run folder" in out
    assert f"skipped: {d}/seed4: no results.json and no log.txt" in out
    assert "* accuracy: 81.80% +- 0.24%" in out
    code, _, err = run_cli(d, "--strict")
    assert code == 1 and "--strict" in err


def write_results_json(run_dir, accuracy, split="test", finished=True, groups=None):
    """A results.json in the engine's schema (dpl.results.schema; a version 1 file, without run identity)."""
    record = {"split": split, "finished": finished, "epoch": 1, "accuracy": accuracy,
              "error_rate": 100 - accuracy, "macro_f1": accuracy - 1, "num_samples": 100, "num_correct": 50}
    if groups:
        record["group_accuracy"] = groups
    doc = {"schema_version": 1, **record, "trainer": "DropoutPrompt", "tests": {split: record}}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(doc))


def test_results_json_preferred_over_log_and_unfinished_ignored(tmp_path):
    run = tmp_path / "seed1"
    shutil.copytree(FIXTURES / "dassl063" / "seed1", run)
    write_results_json(run, 55.5)
    result = runs.parse_run(run)
    assert result.source == str(run / "results.json") and result.metrics["accuracy"] == 55.5
    write_results_json(run, 55.5, split="val", finished=False)  # a mid-training val test: not a result
    result = runs.parse_run(run)
    assert result.source == str(run / "log.txt") and result.metrics["accuracy"] == 81.8
    assert runs.parse_run(run, use_json=False).metrics["accuracy"] == 81.8


def test_run_status_for_scripts(tmp_path):
    assert run_cli("--run-status", FIXTURES / "dassl063" / "seed1")[0] == 0
    assert run_cli("--run-status", FIXTURES / "eval_only" / "seed1")[0] == 0  # auto: eval-only log
    code, out, _ = run_cli("--run-status", FIXTURES / "resumed" / "seed2")
    assert code == 0 and "log.txt-2023-05-01-12-00-00" in out
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(FIXTURES / "resumed" / "seed2" / "log.txt", killed / "log.txt")
    assert run_cli("--run-status", killed)[0] == 3
    assert run_cli("--run-status", tmp_path / "absent")[0] == 3


def test_run_status_is_the_finished_state_the_scripts_skip_by(tmp_path):
    """One definition of a finished run (dpl.results.runs.read_state): a run that recorded its identity and
    whose results.json is from a test during training is not finished, even though its log has a result."""
    run = tmp_path / "seed1"
    shutil.copytree(FIXTURES / "dassl063" / "seed1", run)
    write_results_json(run, 55.5, finished=False)
    doc = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**doc, "schema_version": 2, "run_id": "abc", "identity": {"v": 1}}))
    assert not runs.read_state(str(run)).finished
    code, out, _ = run_cli("--run-status", run)
    assert code == 3 and "does not record a finished run" in out
    write_results_json(run, 55.5)  # the final test's file, as written before runs recorded an identity
    code, out, _ = run_cli("--run-status", run)
    assert (code, out) == (0, f"{run}/results.json: accuracy 55.50%\n")


def test_run_status_of_an_unreadable_checkpoint_is_one_line(tmp_path):
    model_dir = tmp_path / "seed1" / "prompt_learner"
    model_dir.mkdir(parents=True)
    (model_dir / "model.pth.tar-1").write_bytes(b"")  # truncated by a full disk
    (model_dir / "checkpoint").write_text("model.pth.tar-1\n")
    code, out, err = run_cli("--run-status", tmp_path / "seed1")
    assert code == 3 and "Traceback" not in err
    assert out.startswith(f"{tmp_path / 'seed1'}: Checkpoint ") and "cannot be read" in out


def test_parse_results_is_a_thin_command_line():
    """Tables, statistics, plots and log reading live in dpl.results; the script only parses arguments."""
    assert len((REPO / "parse_results.py").read_text().splitlines()) < 200


# ---------------------------------------------------------------------------------------------
# Protocol tables
# ---------------------------------------------------------------------------------------------

TRAIN_LOG = (FIXTURES / "dassl063" / "seed1" / "log.txt").read_text()
EVAL_LOG = (FIXTURES / "eval_only" / "seed1" / "log.txt").read_text()
FINAL_ACCURACY = re.compile(r"\* accuracy: [\d.]+%(?![\s\S]*\* accuracy:)")


def write_log(run_dir, template, accuracy):
    """An upstream log whose final `* accuracy` line says ``accuracy``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "log.txt").write_text(FINAL_ACCURACY.sub(f"* accuracy: {accuracy:.1f}%", template))


def run_dir(root, part, dataset, trainer, cfg, seed):
    return root / part / dataset / "shots_16" / trainer / cfg / f"seed{seed}"


COOP = ("CoOp", "vit_b16_ep50_ctxv1")
DPL = ("DropoutPrompt", "vit_b16_c2_ep20_batch4_4+4ctx")
# (trainer, dataset) -> (base per seed, new per seed); None = run missing
NUMBERS = {
    (COOP, "dtd"): ([80.0, 81.0, 82.0], [60.0, 62.0, 61.0]),
    (COOP, "eurosat"): ([90.5, 91.5, 92.5], [70.0, 72.0, None]),
    (DPL, "dtd"): ([84.1, 83.9, 84.3], [66.2, 66.8, 66.5]),
    (DPL, "eurosat"): ([95.0, 95.4, 95.2], [80.0, 81.5, 80.9]),
}


@pytest.fixture
def base2new_tree(tmp_path):
    """CoOp as upstream Dassl logs, DropoutPrompt as results.json (+ a misleading log it must not use)."""
    root = tmp_path / "base2new"
    for ((trainer, cfg), dataset), (base, new) in NUMBERS.items():
        for seed, (b, n) in enumerate(zip(base, new), start=1):
            train = run_dir(root, "train_base", dataset, trainer, cfg, seed)
            test = run_dir(root, "test_new", dataset, trainer, cfg, seed)
            if trainer == "CoOp":
                write_log(train, TRAIN_LOG, b)
                if n is not None:
                    write_log(test, EVAL_LOG, n)
            else:
                write_log(train, TRAIN_LOG, 1.0)
                write_results_json(train, b, groups={"many": b + 1, "medium": b, "few": b - 3})
                write_results_json(test, n)
    (root / "train_base" / "dtd" / "notes.txt").write_text("stray")
    return root


def test_base2new_text_table_numbers(base2new_tree):
    code, out, _ = run_cli("--protocol", "base2new", base2new_tree)
    assert code == 0, out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["dtd"], ["eurosat"],
                                                                                       ["Average"])}
    # columns: CoOp Base, New, HM, then DropoutPrompt Base, New, HM
    cells = r"\s+".join([r"81\.00 ± 0\.82", r"61\.00 ± 0\.82", r"69\.59", r"84\.10 ± 0\.16", r"66\.50 ± 0\.24",
                         r"74\.27"])
    assert re.search(r"dtd\s+" + cells, rows["dtd"]), rows["dtd"]
    cells = r"\s+".join([r"91\.50 ± 0\.82", r"71\.00 ± 1\.00 \(2/3\)", r"79\.96", r"95\.20 ± 0\.16",
                         r"80\.80 ± 0\.62", r"87\.41"])
    assert re.search(r"eurosat\s+" + cells, rows["eurosat"]), rows["eurosat"]
    # average row: HM of the dataset-averaged Base and New (not the mean of the HMs)
    cells = r"\s+".join([r"86\.25", r"66\.00", r"74\.78", r"89\.65", r"73\.65", r"80\.87"])
    assert re.search(r"Average\s+" + cells, rows["Average"]), rows["Average"]
    expected = base2new_tree / "test_new/eurosat/shots_16/CoOp/vit_b16_ep50_ctxv1/seed3"
    assert f"CoOp eurosat new seed3: run missing ({expected})" in out
    assert "notes.txt" in out  # stray listed


def test_base2new_strict_fails_on_missing_seed(base2new_tree):
    code, out, err = run_cli("--protocol", "base2new", base2new_tree, "--strict")
    assert code == 1 and out == ""
    assert "CoOp eurosat new seed3" in err


def test_base2new_demanded_seeds_reported(base2new_tree):
    code, out, _ = run_cli("--protocol", "base2new", "--root", base2new_tree, "--seeds", "1", "2", "3", "4")
    assert code == 0
    assert "84.10 ± 0.16 (3/4)" in out
    expected = base2new_tree / "train_base/dtd/shots_16/DropoutPrompt/vit_b16_c2_ep20_batch4_4+4ctx/seed4"
    assert f"DropoutPrompt dtd base seed4: run missing ({expected})" in out


def test_zero_shot_single_run_is_complete_under_demanded_seeds(base2new_tree):
    """Zero-shot CLIP runs once (scripts/run_protocol.py runs its first seed only): not reported missing."""
    for part, acc in (("train_base", 70.0), ("test_new", 75.0)):
        run = base2new_tree / part / "dtd/shots_16/ZeroshotCLIP/vit_b16/seed1"
        write_results_json(run, acc)
    code, out, _ = run_cli("--protocol", "base2new", "--root", base2new_tree, "--seeds", "1", "2", "3")
    assert code == 0
    assert "ZeroshotCLIP dtd" not in out  # no "missing" line for its seeds 2 and 3
    assert "70.00 ± 0.00 " in out and "70.00 ± 0.00 (1/3)" not in out


def test_tables_are_built_without_the_command_line(base2new_tree):
    grid = tables.build_table(tables.TableOptions("base2new", str(base2new_tree), seeds=[1, 2, 3]))
    assert [index for index, _ in grid.rows] == [("dtd",), ("eurosat",), ("Average",)]
    cells = dict(zip(grid.columns, grid.rows[0][1]))
    assert cells[("DropoutPrompt", "Base")].text() == "84.10 ± 0.16"
    assert cells[("CoOp", "HM")].mean == pytest.approx(2 * 81 * 61 / 142)
    assert render.render(grid, "text").startswith("Base-to-novel\n")


def test_base2new_markdown_csv_json_parse(base2new_tree):
    code, md, _ = run_cli("--protocol", "base2new", base2new_tree, "--format", "markdown")
    assert code == 0
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0].split("|")[1].strip() == "Dataset" and len(table) == 2 + 3  # header, rule, 2 datasets + avg
    assert all(line.count("|") == table[0].count("|") for line in table)

    code, text, _ = run_cli("--protocol", "base2new", base2new_tree, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(text)))
    hm = [r for r in rows if r["Dataset"] == "dtd" and r["group"] == "CoOp" and r["column"] == "HM"]
    assert float(hm[0]["mean"]) == pytest.approx(2 * 81 * 61 / 142)
    base = [r for r in rows if r["Dataset"] == "eurosat" and r["group"] == "CoOp" and r["column"] == "New"][0]
    assert (base["n"], base["expected"], base["values"]) == ("2", "3", "seed1=70.0;seed2=72.0")

    code, text, _ = run_cli("--protocol", "base2new", base2new_tree, "--format", "json")
    doc = json.loads(text)
    dtd = next(r for r in doc["rows"] if r["Dataset"] == "dtd")
    cell = next(c for c in dtd["cells"] if c["group"] == "DropoutPrompt" and c["column"] == "New")
    assert cell["mean"] == pytest.approx(66.5) and cell["std"] == pytest.approx(0.2449, abs=1e-4)
    expected = base2new_tree / "test_new/eurosat/shots_16/CoOp/vit_b16_ep50_ctxv1/seed3"
    assert doc["missing"] == [f"CoOp eurosat new seed3: run missing ({expected})"]


def test_longtail_group_columns(base2new_tree):
    code, out, _ = run_cli("--protocol", "longtail", base2new_tree, "--format", "json")
    assert code == 0
    dtd = next(r for r in json.loads(out)["rows"] if r["Dataset"] == "dtd")
    cells = {(c["group"], c["column"]): c for c in dtd["cells"]}
    assert cells[("DropoutPrompt", "Many")]["mean"] == pytest.approx(85.1)
    assert cells[("DropoutPrompt", "Few")]["mean"] == pytest.approx(81.1)
    assert "mean" not in cells[("CoOp", "Many")]  # logs carry no group accuracy


def write_xd_tree(root):
    """Training on ImageNet + evaluations on 2 cross-dataset and 1 DG target, 2 seeds; one ZS model."""
    tag = "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets_16shots"
    for seed, (src, dtd, euro, v2) in enumerate([(72.0, 45.0, 40.0, 64.0), (71.0, 47.0, 44.0, 65.0)], start=1):
        write_log(root / "imagenet" / "PromptSRC" / tag / f"seed{seed}", TRAIN_LOG, src)
        for dataset, acc in (("dtd", dtd), ("eurosat", euro), ("imagenetv2", v2)):
            write_log(root / "evaluation" / "PromptSRC" / tag / dataset / f"seed{seed}", EVAL_LOG, acc)
    for dataset, acc in (("imagenet", 66.7), ("dtd", 44.4), ("eurosat", 48.1), ("imagenetv2", 60.8)):
        write_results_json(root / "evaluation" / "ZeroshotCLIP" / "vit_b16" / dataset / "seed1", acc)


def test_crossdataset_and_dg_tables(tmp_path):
    write_xd_tree(tmp_path)
    code, out, _ = run_cli("--protocol", "xd", tmp_path, "--format", "json")
    assert code == 0, out
    doc = json.loads(out)
    rows = {r["Method"]: {c["column"]: c.get("mean") for c in r["cells"]} for r in doc["rows"]}
    assert list(rows["PromptSRC"]) == ["imagenet", "dtd", "eurosat", "Average"]  # DG targets not here
    assert rows["PromptSRC"]["imagenet"] == pytest.approx(71.5)
    assert rows["PromptSRC"]["Average"] == pytest.approx((46.0 + 42.0) / 2)
    assert rows["ZeroshotCLIP"]["imagenet"] == pytest.approx(66.7)  # source from its evaluation run
    assert doc["missing"] == []
    code, out, _ = run_cli("--protocol", "dg", tmp_path)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("PromptSRC"))
    assert re.search(r"71\.50 ± 0\.50\s+64\.50 ± 0\.50\s+64\.50", line), line


def test_fewshot_table(tmp_path):
    for shots, accs in ((1, [50.0, 52.0, 54.0]), (4, [60.0, 61.0, 62.0])):
        for seed, acc in enumerate(accs, start=1):
            write_log(tmp_path / "dtd" / "CoOp" / f"vit_b16_ep50_{shots}shots" / f"seed{seed}", TRAIN_LOG, acc)
    code, out, _ = run_cli("--protocol", "fewshot", tmp_path)
    assert code == 0, out
    assert re.search(r"CoOp\s+1\s+52\.00 ± 1\.63\s+52\.00", out)
    assert re.search(r"CoOp\s+4\s+61\.00 ± 0\.82\s+61\.00", out)


def test_plot_without_matplotlib_is_one_clear_error(base2new_tree, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    code, out, err = run_cli("--protocol", "base2new", base2new_tree, "--plot", tmp_path / "plots")
    assert code == 1 and "needs matplotlib" in err


def test_missing_root_is_one_line_error(tmp_path):
    code, _, err = run_cli("--protocol", "base2new", tmp_path)
    assert code == 1 and err.startswith("error: no train_base/")


def test_command_line_entry_point():
    proc = subprocess.run([sys.executable, str(REPO / "parse_results.py"), str(FIXTURES / "old_fork")],
                          capture_output=True, text=True, cwd=str(REPO.parent))
    assert proc.returncode == 0 and "* accuracy: 81.73% +- 0.05%" in proc.stdout


def test_group_accuracy_from_tagged_per_class_rows():
    rows = [{"label": 0, "total": 10, "correct": 9, "group": "many"},
            {"label": 1, "total": 10, "correct": 7, "group": "many"},
            {"label": 2, "total": 5, "correct": 2, "group": "few"}]
    assert runs.group_accuracies({"per_class": rows}) == {"many": 80.0, "few": 40.0}
    assert runs.group_accuracies({"group_accuracy": {"many": 1, "medium": 2.5}}) == {"many": 1.0,
                                                                                              "medium": 2.5}
    assert runs.group_accuracies({"per_class": [{"label": 0, "total": 3, "correct": 3}]}) == {}


def test_protocol_table_with_other_keyword(base2new_tree):
    code, out, _ = run_cli("--protocol", "base2new", base2new_tree, "--keyword", "macro_f1", "--format", "json")
    assert code == 0
    dtd = next(r for r in json.loads(out)["rows"] if r["Dataset"] == "dtd")
    cell = next(c for c in dtd["cells"] if c["group"] == "DropoutPrompt" and c["column"] == "Base")
    assert cell["mean"] == pytest.approx(84.1 - 1)  # results.json macro_f1 of the fixture: accuracy - 1


# ---------------------------------------------------------------------------------------------
# --plot: one figure per protocol whose bars / lines are the table's means and spreads
# ---------------------------------------------------------------------------------------------

ABLATION = "IMPORTANCE=uniform"


@pytest.fixture
def plt():
    pytest.importorskip("matplotlib")
    from dpl.results import plots

    pyplot = plots.import_pyplot()
    yield pyplot
    pyplot.close("all")


@pytest.fixture
def ablation_tree(base2new_tree):
    """base2new_tree plus an ablation of DropoutPrompt (config folder ``<cfg>@IMPORTANCE=uniform``), 3 seeds."""
    trainer, cfg = DPL
    for dataset, (base, new) in (("dtd", ([81.0, 82.0, 84.0], [63.0, 64.5, 64.0])),
                                 ("eurosat", ([93.0, 93.5, 92.0], [77.0, 79.0, 78.5]))):
        for seed, (b, n) in enumerate(zip(base, new), start=1):
            write_results_json(run_dir(base2new_tree, "train_base", dataset, trainer, f"{cfg}@{ABLATION}", seed), b)
            write_results_json(run_dir(base2new_tree, "test_new", dataset, trainer, f"{cfg}@{ABLATION}", seed), n)
    return base2new_tree


def write_fewshot_tree(root):
    """CoOp (+ a CSC=True variant) and DropoutPrompt at 1 / 2 / 4 shots on dtd, 3 seeds."""
    for trainer, folder, offset in (("CoOp", "", 0.0), ("CoOp", "@CSC=True", -2.0), ("DropoutPrompt", "", 5.0)):
        for shots, accs in ((1, [50.0, 52.0, 54.0]), (2, [55.0, 56.0, 58.0]), (4, [60.0, 61.0, 62.0])):
            for seed, acc in enumerate(accs, start=1):
                tag = f"vit_b16_ep50_{shots}shots{folder}"
                write_log(root / "dtd" / trainer / tag / f"seed{seed}", TRAIN_LOG, acc + offset + seed * (shots - 1) / 4)
    return root


def data_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "legend"]


def drawn_bars(ax):
    """{(method, x tick label): (bar height, error bar half-length or None)} of one bar-chart axes."""
    from matplotlib.container import BarContainer, ErrorbarContainer

    ticks = [t.get_text() for t in ax.get_xticklabels()]
    errors = {}
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            for (x, y0), (_, y1) in c.lines[2][0].get_segments():
                errors[(c.get_label().lstrip("_"), round(x, 6))] = (y1 - y0) / 2
    bars = {}
    for c in ax.containers:
        if isinstance(c, BarContainer):
            for patch in c.patches:
                x = patch.get_x() + patch.get_width() / 2
                bars[(c.get_label(), ticks[round(x)])] = (patch.get_height(), errors.get((c.get_label(), round(x, 6))))
    return bars


def bar_colours(ax):
    """{method: (face colour as hex, hatch)} of one bar-chart axes."""
    from matplotlib.colors import to_hex
    from matplotlib.container import BarContainer

    return {c.get_label(): (to_hex(c.patches[0].get_facecolor()), c.patches[0].get_hatch())
            for c in ax.containers if isinstance(c, BarContainer)}


def expected_error(value):
    return value.spread if value.spread is not None and value.n is not None and value.n > 1 else None


@pytest.mark.parametrize("ci95", [False, True])
def test_base2new_figure_bars_are_the_table_means_and_spreads(ablation_tree, plt, ci95):
    from dpl.results import plots

    grid = tables.build_table(tables.TableOptions("base2new", str(ablation_tree), ci95=ci95))
    methods = list(dict.fromkeys(m for m, _ in grid.columns))
    assert methods == ["CoOp", "DropoutPrompt", f"DropoutPrompt [{ABLATION}]"]
    fig = plots.build_figure(grid, "base2new", plt)
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == ["dtd", "eurosat", "Average"]
    for ax, ((dataset,), cells) in zip(axes, grid.rows):
        bars = drawn_bars(ax)
        expected = {column: (v.mean, expected_error(v)) for column, v in zip(grid.columns, cells) if v is not None}
        assert set(bars) == set(expected), dataset
        for key, (mean, error) in expected.items():
            height, drawn_error = bars[key]
            assert height == pytest.approx(mean), (dataset, key)
            assert drawn_error == (None if error is None else pytest.approx(error)), (dataset, key)
        # y axis: inside [0, 100], holding every mean ± spread drawn
        low, high = ax.get_ylim()
        assert 0 <= low and high <= 100
        assert all(low <= m - (e or 0) and m + (e or 0) <= high for m, e in expected.values()), (dataset, low, high)
        assert low > 0  # not from 0: accuracies of 60..96 would be squeezed into the top of the chart
    dtd = drawn_bars(axes[0])
    assert dtd[("DropoutPrompt", "New")][1] == pytest.approx(1.96 * 0.2449 / 3 ** 0.5 if ci95 else 0.2449, abs=1e-4)
    assert dtd[("CoOp", "HM")][1] is None  # HM and the Average row have no spread
    assert all(error is None for _, error in drawn_bars(axes[2]).values())
    assert fig.texts[0].get_text().endswith("(error bars: 95% interval over seeds)" if ci95 else
                                            "(error bars: std over seeds)")


def test_longtail_figure_has_the_group_columns(ablation_tree, plt):
    from dpl.results import plots

    grid = tables.build_table(tables.TableOptions("longtail", str(ablation_tree)))
    axes = data_axes(plots.build_figure(grid, "longtail", plt))
    dtd = drawn_bars(axes[0])
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["Base", "New", "HM", "Many", "Medium", "Few"]
    assert dtd[("DropoutPrompt", "Many")] == (pytest.approx(85.1), pytest.approx(0.1633, abs=1e-4))
    assert ("CoOp", "Many") not in dtd  # logs carry no group accuracy: no bar, not a zero bar
    assert [t.get_text() for t in axes[2].get_xticklabels()] == ["Base", "New", "HM"]  # Average: no groups


def test_method_colours_are_fixed_across_figures_and_ablations_are_hatched(ablation_tree, tmp_path, plt):
    from dpl.results import plots

    base2new = data_axes(plots.build_figure(tables.build_table(tables.TableOptions("base2new", str(ablation_tree))),
                                            "base2new", plt))[0]
    colours = bar_colours(base2new)
    assert list(colours) == ["CoOp", "DropoutPrompt", f"DropoutPrompt [{ABLATION}]"]  # canonical order
    assert colours["CoOp"][0] == plots.TRAINER_COLOURS["CoOp"]
    assert colours["DropoutPrompt"][0] == plots.TRAINER_COLOURS["DropoutPrompt"]
    # the ablation: its trainer's colour, told apart by a hatch
    assert colours[f"DropoutPrompt [{ABLATION}]"][0] == colours["DropoutPrompt"][0]
    assert colours[f"DropoutPrompt [{ABLATION}]"][1] and not colours["DropoutPrompt"][1]

    # another protocol, other methods: same colours
    from matplotlib.colors import to_hex

    grid = tables.build_table(tables.TableOptions("fewshot", str(write_fewshot_tree(tmp_path / "fs"))))
    lines = {c.get_label(): c.lines[0] for c in data_axes(plots.build_figure(grid, "fewshot", plt))[0].containers}
    assert to_hex(lines["CoOp"].get_color()) == colours["CoOp"][0]
    assert to_hex(lines["DropoutPrompt"].get_color()) == colours["DropoutPrompt"][0]
    assert to_hex(lines["CoOp [CSC=True]"].get_color()) == colours["CoOp"][0]
    assert lines["CoOp [CSC=True]"].get_linestyle() != lines["CoOp"].get_linestyle()

    # an unknown trainer's colour does not depend on which methods are next to it
    alone = plots.method_style("MyTrainer")
    crowd = plots.method_styles(["ZeroshotCLIP", "MaPLe", "MyTrainer", "Other", "MyTrainer [x]"])
    assert crowd["MyTrainer"] == alone and crowd["MyTrainer [x]"].colour == alone.colour
    assert alone.colour not in plots.TRAINER_COLOURS.values()
    assert list(crowd) == ["ZeroshotCLIP", "MaPLe", "MyTrainer", "MyTrainer [x]", "Other"]
    variants = plots.method_styles(["CoOp [b]", "CoOp [a]", "CoOp"])
    assert variants["CoOp [a]"].hatch != variants["CoOp [b]"].hatch and variants["CoOp"].hatch == ""
    # a variant without its trainer's plain row beside it (a tagged sweep) is drawn plain, in that colour
    assert plots.method_style("DropoutPrompt [pocket]") == plots.Style(plots.TRAINER_COLOURS["DropoutPrompt"])


def test_fewshot_figure_lines_are_shots_means_and_spreads(tmp_path, plt):
    from dpl.results import plots

    grid = tables.build_table(tables.TableOptions("fewshot", str(write_fewshot_tree(tmp_path))))
    axes = data_axes(plots.build_figure(grid, "fewshot", plt))
    assert [ax.get_title() for ax in axes] == ["dtd", "Average"]
    for col, ax in enumerate(axes):
        assert ax.get_xscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
        lines = {c.get_label(): c for c in ax.containers}
        assert list(lines) == ["CoOp", "CoOp [CSC=True]", "DropoutPrompt"]
        for label, container in lines.items():
            rows = [(int(k), cells[col]) for (m, k), cells in grid.rows if m == label]
            line, _, bars = container.lines
            assert list(line.get_xdata()) == [k for k, _ in rows]
            assert list(line.get_ydata()) == pytest.approx([v.mean for _, v in rows])
            if col == 0:
                half = [(y1 - y0) / 2 for (_, y0), (_, y1) in bars[0].get_segments()]
                assert half == pytest.approx([v.spread for _, v in rows]) and min(half) > 0
            else:
                assert not bars  # Average column: no spread
        low, high = ax.get_ylim()
        assert 0 <= low and high <= 100
        assert all(low <= v.mean - (expected_error(v) or 0) and v.mean + (expected_error(v) or 0) <= high
                   for _, cells in grid.rows for v in [cells[col]])


def test_crossdomain_figure_bars(tmp_path, plt):
    from dpl.results import plots

    write_xd_tree(tmp_path)
    grid = tables.build_table(tables.TableOptions("xd", str(tmp_path)))
    (ax,) = data_axes(plots.build_figure(grid, "xd", plt))
    bars = drawn_bars(ax)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["imagenet\n(source)", "dtd", "eurosat", "Average"]
    assert bars[("PromptSRC", "imagenet\n(source)")] == (pytest.approx(71.5), pytest.approx(0.5))
    assert bars[("PromptSRC", "eurosat")] == (pytest.approx(42.0), pytest.approx(2.0))
    assert bars[("ZeroshotCLIP", "dtd")] == (pytest.approx(44.4), None)  # one run: no error bar
    assert list(bar_colours(ax)) == ["ZeroshotCLIP", "PromptSRC"]


def test_y_limits_round_and_stay_in_0_100():
    from dpl.results.plots import y_limits

    assert y_limits([(81.0, 0.8), (61.0, 0.8)]) == (55.0, 85.0)
    assert y_limits([(99.5, 1.0), (97.0, None)]) == (95.0, 100.0)
    assert y_limits([(3.0, 4.0), (80.0, 1.0)]) == (0.0, 90.0)
    assert y_limits([(100.0, 0.0)]) == (95.0, 100.0)


def test_legend_has_its_own_row_below_the_data(ablation_tree, plt):
    from dpl.results import plots

    fig = plots.build_figure(tables.build_table(tables.TableOptions("base2new", str(ablation_tree))), "base2new", plt)
    fig.tight_layout()
    fig.canvas.draw()
    legend = next(ax for ax in fig.axes if ax.get_label() == "legend").get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["CoOp", "DropoutPrompt", f"DropoutPrompt [{ABLATION}]"]
    box = legend.get_window_extent()
    for ax in data_axes(fig):
        assert not box.overlaps(ax.get_window_extent()) and box.y1 < ax.get_window_extent().y0


@pytest.mark.parametrize("protocol", ["base2new", "longtail", "xd", "dg", "fewshot"])
def test_one_png_per_protocol_written_and_printed(ablation_tree, tmp_path, protocol):
    pytest.importorskip("matplotlib")
    if protocol in ("xd", "dg"):
        root = tmp_path / "xd"
        write_xd_tree(root)
    elif protocol == "fewshot":
        root = write_fewshot_tree(tmp_path / "fs")
    else:
        root = ablation_tree
    out_dir = tmp_path / "plots"
    code, _, err = run_cli("--protocol", protocol, root, "--plot", out_dir)
    assert code == 0, err
    assert [p.name for p in out_dir.iterdir()] == [f"{protocol}.png"]
    assert f"plot: {out_dir / (protocol + '.png')}" in err.splitlines()
    assert (out_dir / f"{protocol}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_figure_tools_output_folders_are_not_listed_as_strays(base2new_tree):
    """python -m dpl.tools.curves / explain write curves/ and explain/ inside output trees by default."""
    root = base2new_tree
    config = root / "train_base/dtd/shots_16/CoOp/vit_b16_ep50_ctxv1"
    (config / "curves").mkdir()
    (config / "curves" / "seed1.png").write_bytes(b"png")
    (config / "seed1" / "explain").mkdir()
    code, out, err = run_cli("--protocol", "base2new", root)
    assert code == 0 and "curves" not in out + err and "explain" not in out + err
    code, out, err = run_cli(config)
    assert code == 0 and "curves" not in out + err and "* accuracy: 81.00%" in out
