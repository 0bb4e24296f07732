"""Optional PNG charts of a protocol table (matplotlib is an optional extra: ``pip install -e .[plot]``).

Base-to-novel and long-tail: one bar chart per dataset row (each method's Base / New / HM); few-shot:
one line chart per dataset column (accuracy against shots, one line per method).
"""
import os
import re

from .errors import ResultsError

PLOT_PROTOCOLS = ("base2new", "longtail", "fewshot")


def import_pyplot():
    """pyplot on the file-only Agg backend; a ``ResultsError`` when matplotlib is not installed (called
    before any work, so that a missing extra fails at once)."""
    try:
        import matplotlib
    except ImportError:
        raise ResultsError("--plot needs matplotlib: pip install matplotlib (or pip install -e .[plot])") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def safe_name(text):
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def plot_bars(grid, out_dir, plt):
    """One PNG per dataset row: bars of each method's Base / New / HM."""
    written = []
    groups = list(dict.fromkeys(g for g, _ in grid.columns))
    metrics = ["Base", "New", "HM"]
    for (dataset,), cells in grid.rows:
        by_col = dict(zip(grid.columns, cells))
        fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(groups)), 3.5))
        width = 0.8 / len(metrics)
        for i, metric in enumerate(metrics):
            heights = [by_col[(g, metric)].mean if by_col.get((g, metric)) else 0.0 for g in groups]
            ax.bar([x + (i - 1) * width for x in range(len(groups))], heights, width, label=metric)
        ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
        ax.set_ylim(0, 125)  # headroom for the legend above the bars
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{grid.title}: {dataset}")
        ax.legend(loc="upper center", ncol=len(metrics))
        written.append(save_figure(fig, out_dir, f"base2new_{dataset}.png", plt))
    return written


def plot_curves(grid, out_dir, plt):
    """One PNG per dataset column: accuracy against shots, one line per method."""
    written = []
    methods = list(dict.fromkeys(index[0] for index, _ in grid.rows))
    for col_idx, (_, dataset) in enumerate(grid.columns):
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        for method in methods:
            points = [(index[1], cells[col_idx].mean) for index, cells in grid.rows
                      if index[0] == method and cells[col_idx] is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{grid.title}: {dataset}")
        ax.legend()
        written.append(save_figure(fig, out_dir, f"few_shot_{dataset}.png", plt))
    return written


def save_figure(fig, out_dir, name, plt):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, safe_name(name))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(grid, protocol, out_dir, plt):
    """The PNG files of ``grid`` under ``out_dir``; their paths."""
    if protocol == "fewshot":
        return plot_curves(grid, out_dir, plt)
    return plot_bars(grid, out_dir, plt)
