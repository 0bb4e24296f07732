"""Token-importance pictures: the recorded maps are the training step's numbers, the figures draw exactly them,
and ``python -m dpl.tools.explain`` works on a trained run, on another method's run and without a run."""
import dataclasses
import types

import numpy as np
import pytest
import torch

from dpl.drople import token_dropout as td
from dpl.engine.errors import UserError
from dpl.explain import ImportanceRecorder, explain, mean_over_layers
from dpl.explain.figures import image_figure, patch_grid, select_layer, text_figure, vision_panels
from dpl.explain.model_maps import token_words
from dpl.project import PROJECT_ROOT
from dpl.tools import explain as explain_cli
from helpers import build_trainer_in_process, run_script, run_train, script_env, train_opts

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPL_CONFIG = "DropoutPrompt/vit_b16_c2_ep20_batch4_4+4ctx.yaml"


@pytest.fixture(scope="module")
def dpl_trainer(tmp_path_factory, tiny_clip_path):
    trainer = build_trainer_in_process(tmp_path_factory.mktemp("explain"), tiny_clip_path, "DropoutPrompt", DPL_CONFIG,
                                       "TRAINER.DPL.TEACHER_TEMPLATES", "dataset")
    return trainer


@pytest.fixture(scope="module")
def images(dpl_trainer):
    loader = iter(dpl_trainer.test_loader)
    return torch.cat([next(loader)["img"], next(loader)["img"]])[:3]


@pytest.fixture(scope="module")
def explanation(dpl_trainer, images):
    model = dpl_trainer.model.eval()
    return explain(model, images, dpl_trainer.dm.dataset.classnames, "DescribableTextures", "DropoutPrompt")


class Spy:
    """Records the inputs and output of every ``TokenDropout.probability`` call (the training hook's)."""

    def __init__(self, monkeypatch):
        self.calls = []
        probability = td.TokenDropout.probability

        def spy(dropout, layout, attn, mag_attn, length):
            result = probability(dropout, layout, attn, mag_attn, length)
            self.calls.append({"modality": layout.modality, "probability": result, "attn": attn,
                               "mag_attn": mag_attn, "layout": layout, "length": length})
            return result

        monkeypatch.setattr(td.TokenDropout, "probability", spy)

    def first(self, modality):
        return next(call for call in self.calls if call["modality"] == modality)


@pytest.mark.parametrize("modality", ["vision", "text"])
def test_recorded_maps_equal_the_training_steps_at_the_first_dropping_layer(dpl_trainer, images, explanation,
                                                                             monkeypatch, modality):
    model = dpl_trainer.model
    spy = Spy(monkeypatch)
    model.train()
    with torch.no_grad():
        model.forward_train(images)
    model.eval()
    training = spy.first(modality)
    recorded = (explanation.vision if modality == "vision" else explanation.text)[0]
    length = training["length"]
    assert recorded.probability.shape[1] == length
    torch.testing.assert_close(recorded.probability, training["probability"].float(), rtol=0, atol=1e-6)
    attn, layout = training["attn"][..., :length, :length], training["layout"]
    scored = td.scored_positions(layout, length)
    torch.testing.assert_close(recorded.terms["cls"], td.global_attention_score(attn, layout.global_index, scored))
    torch.testing.assert_close(recorded.terms["self"], td.self_attention_score(attn, scored))
    torch.testing.assert_close(recorded.terms["mag"], td.alignment_score(training["mag_attn"][..., :length], scored))
    importance = td.token_importance(("self", "cls", "mag"), attn, training["mag_attn"][..., :length],
                                     layout.global_index, scored)
    torch.testing.assert_close(recorded.importance, importance)
    eligible = recorded.eligible
    assert (recorded.probability[~eligible] == 0).all()
    p_min, p_max = model.dropout.p_min, model.dropout.p_max
    assert ((recorded.probability[eligible] >= p_min - 1e-6) & (recorded.probability[eligible] <= p_max + 1e-6)).all()


def test_recording_changes_nothing_and_covers_every_dropping_layer(dpl_trainer, images, explanation):
    model = dpl_trainer.model.eval()
    assert set(explanation.vision) == set(model.drop_layers_vision)
    assert set(explanation.text) == set(model.drop_layers_text)
    with torch.no_grad():
        plain = model.encode_image(images)
        hooked = model.encode_image(images, hook=ImportanceRecorder(model.dropout, model.drop_layers_vision, model.mag))
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)


def test_the_mean_over_layers_is_the_elementwise_mean(explanation):
    mean = mean_over_layers(explanation.vision)
    layers = list(explanation.vision.values())
    torch.testing.assert_close(mean.probability, torch.stack([m.probability for m in layers]).mean(dim=0))
    torch.testing.assert_close(mean.terms["mag"], torch.stack([m.terms["mag"] for m in layers]).mean(dim=0))
    assert mean.layer is None and select_layer(explanation.vision, "mean").layer is None


def test_patch_grid_puts_token_1_plus_i_grid_plus_j_at_row_i_column_j(explanation):
    maps = explanation.vision[0]
    grid = explanation.grid
    patches = patch_grid(maps.probability, grid)
    assert patches.shape == (3, grid, grid)
    i, j = grid - 1, 1
    assert patches[2, i, j] == maps.probability[2, 1 + i * grid + j].item()


def test_the_image_figure_draws_the_recorded_arrays(explanation, images):
    maps = select_layer(explanation.vision, 1)
    panels = vision_panels(maps, explanation.grid)
    assert [title for title, _ in panels] == ["global-token attention", "max self-attention", "alignment guidance",
                                              "importance (combined)", "drop probability"]
    pictures = np.random.default_rng(0).random((3, 32, 32, 3))
    fig = image_figure(pictures, panels, ["a", "b", "c"], "heading", plt)
    map_axes = [ax for ax in fig.axes if len(ax.images) == 2]  # a faded picture under each map
    assert len(map_axes) == 3 * len(panels)
    for index, ax in enumerate(map_axes):
        row, col = divmod(index, len(panels))
        np.testing.assert_array_equal(np.asarray(ax.images[-1].get_array()), panels[col][1][row])
    np.testing.assert_array_equal(panels[-1][1], patch_grid(maps.probability, explanation.grid))
    plt.close(fig)


def test_the_text_figure_draws_importance_bars_and_eligible_probabilities(dpl_trainer, explanation):
    maps = select_layer(explanation.text, "mean")
    classnames = dpl_trainer.dm.dataset.classnames
    fig = text_figure(explanation.token_labels, maps, [0, 2], classnames, "heading", plt)
    bar_axes = [ax for ax in fig.axes if ax.containers]
    for ax, row in zip(bar_axes, [0, 2]):
        labels = explanation.token_labels[row]
        heights = [bar.get_height() for bar in ax.containers[0]]
        np.testing.assert_allclose(heights, maps.importance[row, :len(labels)].numpy())
        assert [t.get_text() for t in ax.get_xticklabels()] == labels
    dots = [ax for ax in fig.axes if ax.lines]
    for ax, row in zip(dots, [0, 2]):
        eligible = maps.eligible[row].numpy()
        np.testing.assert_allclose(ax.lines[0].get_ydata(), maps.probability[row].numpy()[eligible])
    plt.close(fig)


def test_a_modality_without_dropping_layers_is_left_out_and_a_layer_of_one_modality_draws_that_one(
        explanation, tmp_path):
    pictures = np.zeros((3, 32, 32, 3))
    chosen = [("a.png", 0), ("b.png", 1), ("c.png", 2)]
    classnames = ["a", "b", "c", "d"]
    text_only = dataclasses.replace(explanation, vision={})  # DROP_LAYERS_VISION ['none']
    written = explain_cli.write_figures(text_only, pictures, chosen, classnames, "mean", 2, tmp_path / "t", plt)
    assert [p.rsplit("/", 1)[1] for p in written] == ["text_mean.png", "maps_mean.npz"]
    assert not any(k.startswith("vision/") for k in np.load(written[-1]))
    vision_at_0 = dataclasses.replace(explanation, vision={0: explanation.vision[0]})
    written = explain_cli.write_figures(vision_at_0, pictures, chosen, classnames, 1, 2, tmp_path / "l", plt)
    assert [p.rsplit("/", 1)[1] for p in written] == ["text_layer1.png", "maps_layer1.npz"]


def test_a_term_the_importance_source_leaves_out_is_marked_not_used(explanation):
    maps = dataclasses.replace(select_layer(explanation.vision, 0), used=("self", "cls"))
    titles = [title for title, _ in vision_panels(maps, explanation.grid)]
    assert titles[:3] == ["global-token attention", "max self-attention", "alignment guidance (not used)"]


def test_a_dropout_prompt_model_that_drops_nothing_falls_back_and_says_why(dpl_trainer, images):
    model = dpl_trainer.model.eval()
    original = model.dropout
    try:
        model.dropout = td.TokenDropout(perturbation="none")
        result = explain(model, images, dpl_trainer.dm.dataset.classnames, "DescribableTextures", "DropoutPrompt")
    finally:
        model.dropout = original
    assert result.fallback and "DropoutPrompt drops no tokens: PERTURBATION none" in result.source
    assert "mag" not in result.vision[0].terms  # the frozen CLIP has no alignment module


def test_a_resnet_clip_is_refused_in_one_line():
    model = types.SimpleNamespace(arch=types.SimpleNamespace(is_vit=False))
    with pytest.raises(UserError, match="ResNet image encoder"):
        explain(model, torch.zeros(1, 3, 32, 32), ["a"])


def test_token_words_name_the_learned_context_and_the_class_words(dpl_trainer):
    learner = dpl_trainer.model.prompt_learner
    words = token_words(learner.tokenized[0], learner.n_ctx_text)
    name = dpl_trainer.dm.dataset.classnames[0].replace("_", " ")
    assert words[:5] == ["<sos>", "[ctx1]", "[ctx2]", "[ctx3]", "[ctx4]"] and words[-1] == "<eos>"
    assert " ".join(words[5:-2]) == name.lower() and words[-2] == "."


# ----- the command line ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_clip_path):
    """A 1-epoch DropoutPrompt run and a 1-epoch CoOp run on the synthetic DTD."""
    tmp = tmp_path_factory.mktemp("explain_runs")
    out = {}
    for name, config in (("DropoutPrompt", DPL_CONFIG), ("CoOp", "CoOp/vit_b16_ep50.yaml")):
        code, output_dir, _ = run_train(tmp, tiny_clip_path, name, config, train_opts(), out=name,
                                        *(() if name == "CoOp" else (("TRAINER.DPL.TEACHER_TEMPLATES", "dataset"),)))
        assert code == 0
        out[name] = output_dir
    out["data"] = tmp / "data"
    return out


def run_cli(*argv, capsys):
    code = explain_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_explain_a_dropout_prompt_run_writes_the_figures_of_the_maps_it_computes(runs, tmp_path, capsys):
    code, out, err = run_cli("--model-dir", runs["DropoutPrompt"], "--out", tmp_path / "fig", "--num-images", 2,
                             "--cpu", capsys=capsys)
    assert code == 0, err
    written = [line for line in out.splitlines() if not line.startswith("note: ")]
    assert [p.rsplit("/", 1)[1] for p in written] == ["vision_mean.png", "text_mean.png", "maps_mean.npz"]
    assert "note: computed in fp32 on cpu; the run's PREC is fp16" in out  # the config's PREC, a CPU run
    assert all((tmp_path / "fig" / name).stat().st_size > 1000 for name in ("vision_mean.png", "text_mean.png"))
    arrays = np.load(tmp_path / "fig" / "maps_mean.npz")
    # the same images through the library give the same arrays
    args = explain_cli.build_parser().parse_args(["--model-dir", str(runs["DropoutPrompt"]), "--cpu"])
    trainer, cfg = explain_cli.build_model(args)
    chosen = explain_cli.chosen_images(args, trainer.dm.dataset)[:2]
    inputs, _ = explain_cli.load_images([p for p, _ in chosen], trainer.dm.tfm_test)
    again = explain(trainer.model, inputs, trainer.dm.dataset.classnames)
    mean = mean_over_layers(again.vision)
    np.testing.assert_array_equal(arrays["vision/probability"], patch_grid(mean.probability, again.grid))
    np.testing.assert_array_equal(arrays["vision/mag"], patch_grid(mean.terms["mag"], again.grid))
    text = mean_over_layers(again.text)
    np.testing.assert_array_equal(arrays["text/probability"], text.probability.numpy())
    np.testing.assert_array_equal(arrays["text/eligible"], text.eligible.numpy())
    assert list(arrays["text/tokens"][0][:2]) == ["<sos>", "[ctx1]"]
    # the predictions of the hooked pass are the model's own
    with torch.no_grad():
        torch.testing.assert_close(again.predicted, trainer.model(inputs).argmax(dim=-1))
    assert len({label for _, label in chosen}) == 2  # one image per class first


@pytest.mark.slow
def test_a_layer_and_image_files_can_be_chosen(runs, tmp_path, capsys):
    image = next((runs["data"] / "dtd").rglob("*.jpg"))
    code, out, err = run_cli("--model-dir", runs["DropoutPrompt"], "--out", tmp_path, "--images", image,
                             "--layer", 1, "--load-epoch", 1, "--cpu", capsys=capsys)
    assert code == 0, err
    assert "vision_layer1.png" in out and "text_layer1.png" in out


@pytest.mark.slow
def test_a_run_without_token_dropout_falls_back_to_the_frozen_clip_and_says_so(runs, tmp_path, capsys):
    code, out, err = run_cli("--model-dir", runs["CoOp"], "--out", tmp_path, "--num-images", 1, "--cpu", capsys=capsys)
    assert code == 0, err
    assert "note: frozen CLIP attention (CoOp has no token dropout)" in out
    arrays = np.load(tmp_path / "maps_mean.npz")
    assert "vision/mag" not in arrays and "vision/cls" in arrays and "vision/importance" in arrays


@pytest.mark.slow
def test_without_a_run_the_frozen_pocket_clip_is_drawn(runs, tmp_path, capsys):
    code, out, err = run_cli("--dataset-config-file", PROJECT_ROOT / "configs/datasets/dtd.yaml", "--root",
                             runs["data"], "--num-images", 1, "--out", tmp_path, "--cpu", capsys=capsys)
    assert code == 0, err
    assert "frozen CLIP attention (ZeroshotCLIP has no token dropout)" in out
    assert (tmp_path / "vision_mean.png").is_file()


@pytest.mark.slow
def test_a_run_can_be_drawn_on_another_dataset(runs, tmp_path, capsys):
    from datagen import make_dataset

    make_dataset(runs["data"], "eurosat", n_classes=3)
    code, out, err = run_cli("--model-dir", runs["DropoutPrompt"], "--dataset-config-file",
                             PROJECT_ROOT / "configs/datasets/eurosat.yaml", "--classes", "all", "--num-images", 1,
                             "--out", tmp_path, "--cpu", capsys=capsys)
    assert code == 0, err
    assert np.load(tmp_path / "maps_mean.npz")["text/probability"].shape[0] == 3  # EuroSAT's class prompts


ERRORS = {
    "no checkpoint": (lambda runs, tmp: ["--model-dir", tmp], "no checkpoint here"),
    "missing image": (lambda runs, tmp: ["--model-dir", runs["DropoutPrompt"], "--images", tmp / "nope.jpg"],
                      "Image file not found"),
    "bad layer": (lambda runs, tmp: ["--model-dir", runs["DropoutPrompt"], "--layer", 7],
                  "--layer 7: tokens are dropped after vision layers [0, 1, 2] and text layers [0, 1, 2] only"),
    "no run": (lambda runs, tmp: [], "give --model-dir RUN"),
    "too many images": (lambda runs, tmp: ["--model-dir", runs["DropoutPrompt"], "--num-images", 13],
                        "--num-images 13: a figure holds 1 to 12 images"),
    "no such epoch": (lambda runs, tmp: ["--model-dir", runs["DropoutPrompt"], "--load-epoch", 5],
                      "model.pth.tar-5: available: ['model.pth.tar-1']"),
    "no class": (lambda runs, tmp: ["--model-dir", runs["DropoutPrompt"], "--num-classes", 0],
                 "--num-classes 0: chart at least one class prompt"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_are_one_line(runs, tmp_path, capsys, case):
    argv, expected = ERRORS[case]
    code, out, err = run_cli(*argv(runs, tmp_path), "--out", tmp_path / "fig", "--cpu", capsys=capsys)
    assert code == 1 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "fig").exists() or not any((tmp_path / "fig").iterdir())


@pytest.mark.slow
def test_an_output_path_that_is_a_file_is_one_line_and_left_alone(runs, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    code, out, err = run_cli("--model-dir", runs["DropoutPrompt"], "--out", taken, "--cpu", capsys=capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and str(taken) in err
    assert taken.read_text() == "mine"



def test_a_palette_png_has_at_most_that_many_colours(tmp_path):
    from PIL import Image

    from dpl.results.plots import save_figure

    fig, ax = plt.subplots()
    ax.imshow(np.random.default_rng(0).random((16, 16)), cmap="magma")
    path = save_figure(fig, tmp_path, "small.png", plt, dpi=50, palette=16)
    with Image.open(path) as image:
        assert image.mode == "P" and len(image.getcolors()) <= 16


@pytest.mark.slow
def test_the_demo_ends_with_its_chart_explain_figures_and_curves(tmp_path):
    env = script_env(tmp_path / "data", tmp_path / "out", TAG="smoke")
    result = run_script("demo.sh", "OPTIM.MAX_EPOCH", "1", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    figures = tmp_path / "out" / "figures"
    expected = [figures / "explain" / "vision_mean.png", figures / "explain" / "text_mean.png",
                figures / "explain" / "maps_mean.npz", figures / "curves" / "seed1.png"]
    assert [line for line in result.stdout.splitlines() if line.startswith(str(figures))] == [str(p) for p in expected]
    assert f"plot: {figures / 'base2new.png'}" in result.stderr and (figures / "base2new.png").is_file()
    probability = np.load(expected[2])["vision/probability"]  # 4 test images of the 7 x 7-patch pocket CLIP
    assert probability.shape == (4, 7, 7) and probability.min() >= 0.1 - 1e-6 and probability.max() <= 0.5 + 1e-6


def test_the_readme_command_of_the_committed_figures_parses_and_names_them():
    readme = (PROJECT_ROOT / "README.md").read_text()
    start = readme.index(".venv/bin/python -m dpl.tools.explain")
    command = readme[start:readme.index("```", start)].replace("\\\n", " ").split()[3:]
    args = explain_cli.build_parser().parse_args(command)
    for name in ("vision_mean.png", "text_mean.png"):
        figure = PROJECT_ROOT / args.out / name
        assert f"]({args.out}/{name})" in readme and figure.is_file()
        assert figure.stat().st_size < 100_000  # a committed picture stays small
