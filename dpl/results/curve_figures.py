"""Figures of ``TrainingCurves``: one small panel per logged quantity, x in epochs.

A run's figure: per-step values as a thin line, epoch means as dots at x = epoch; the accuracy panel
(``acc``, or the ``--keyword`` metric's own panel) also marks the evaluations logged during and after
training (one marker style per split) and results.json's final test as a star. An overlay of seed runs
draws the same panels with one colour per seed. The builders return the Figure and its panels (name ->
Axes) unsaved, so that what is drawn can be checked against the parsed numbers.
"""
import math

from .plots import save_figure

STEP_LABEL, MEAN_LABEL = "per step", "epoch mean"
FINAL_LABEL = "final test (results.json)"
SPLIT_STYLES = {"val": ("^", "C1"), "test": ("s", "C2")}  # split -> (marker, colour of a single run's figure)
OTHER_SPLIT = ("D", "C4")
PANEL_INCHES = (3.6, 2.4)  # width, height of one panel


def eval_panel(keyword):
    """The panel that shows evaluations: training ``acc`` for accuracy (both are percent), else the metric's own."""
    return "acc" if keyword == "accuracy" else keyword


def panel_names(all_curves):
    """Every quantity logged by any of the runs, in the order first logged, then the evaluation panel."""
    names = {}
    for curves in all_curves:
        names.update(dict.fromkeys(curves.steps))
    for curves in all_curves:
        if curves.evaluations or curves.final:
            names[eval_panel(curves.keyword)] = None
    return list(names)


def panel_grid(plt, names, title):
    """A figure with one small Axes per name (3 columns); returns (fig, {name: Axes})."""
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows), squeeze=False)
    flat = [ax for row in grid for ax in row]
    for ax in flat[len(names):]:
        ax.set_visible(False)
    axes = dict(zip(names, flat))
    for name, ax in axes.items():
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    fig.suptitle(title, fontsize=9)
    return fig, axes


def xy(points):
    return [p[0] for p in points], [p[1] for p in points]


def draw_run(axes, curves, color, label=None):
    """Draw one run's series on ``axes``; ``label``: the run's legend label (overlays), None for a single
    run (its lines are labelled by what they are)."""
    for name, points in curves.steps.items():
        axes[name].plot(*xy(points), color=color, linewidth=0.7, alpha=0.6, label=label or STEP_LABEL)
    for name, points in curves.epoch_means.items():
        axes[name].plot(*xy(points), color=color, marker="o", markersize=3, linestyle="none",
                        label=f"_{label} {MEAN_LABEL}" if label else MEAN_LABEL)
    ax = axes.get(eval_panel(curves.keyword))
    for split, points in curves.evaluations.items():
        marker, split_color = SPLIT_STYLES.get(split, OTHER_SPLIT)
        ax.plot(*xy(points), color=color if label else split_color, marker=marker,
                markersize=5, linestyle="--" if not label else "none", linewidth=0.8,
                label=f"_{label} {split}" if label else f"{split} ({curves.keyword})")
    if curves.final is not None:
        ax.plot([curves.final[0]], [curves.final[1]], color=color if label else "C3", marker="*", markersize=10,
                markerfacecolor="none", linestyle="none",  # hollow: a logged test at the same point shows through
                label=f"_{label} {FINAL_LABEL}" if label else FINAL_LABEL)


def finish_panels(axes, all_curves):
    """Epoch axes from 0 to the last epoch (and a little room for its markers); a legend in the first panel and in the evaluation panel
    (the colours are the same in every panel), where they have labelled lines."""
    last = max(c.max_epoch or 1 for c in all_curves)
    for ax in axes.values():
        ax.set_xlim(0, last * 1.04)
    names = list(axes)[:1] + [eval_panel(c.keyword) for c in all_curves]
    for ax in (axes[name] for name in dict.fromkeys(names) if name in axes):
        if any(not line.get_label().startswith("_") for line in ax.lines):  # matplotlib warns on an empty legend
            ax.legend(fontsize=6)


def run_figure(curves, plt, title=None):
    """(Figure, {panel: Axes}) of one run, unsaved."""
    fig, axes = panel_grid(plt, panel_names([curves]), title or curves.run_dir)
    draw_run(axes, curves, "C0")
    finish_panels(axes, [curves])
    return fig, axes


def overlay_figure(labelled, plt, title):
    """(Figure, {panel: Axes}) of several runs, ``labelled``: [(label, TrainingCurves)], one colour per
    run in every panel; markers (epoch means, evaluations, final test) take the run's colour, unlabelled."""
    note = f"dots: epoch means; triangles: val, squares: test; star: {FINAL_LABEL}"
    fig, axes = panel_grid(plt, panel_names([c for _, c in labelled]), f"{title}\n{note}")
    for i, (label, curves) in enumerate(labelled):
        draw_run(axes, curves, f"C{i % 10}", label)
    finish_panels(axes, [c for _, c in labelled])
    return fig, axes


def write_run_figure(curves, out_dir, name, plt, title=None):
    """Save one run's figure as ``out_dir/name``; its path."""
    fig, _ = run_figure(curves, plt, title)
    return save_figure(fig, out_dir, name, plt)


def write_overlay_figure(labelled, out_dir, name, plt, title):
    """Save an overlay of seed runs as ``out_dir/name``; its path."""
    fig, _ = overlay_figure(labelled, plt, title)
    return save_figure(fig, out_dir, name, plt)
