"""Optional PNG charts of a protocol table (matplotlib is an optional extra: ``pip install -e .[plot]``).

One figure per protocol (``<protocol>.png``), error bars = each cell's spread over seeds (std, or the 95%
interval with ``--ci95``; none where a cell has no spread: a single seed, the Average row, HM):

==================  ================================================================================
base2new/longtail   a subplot per dataset row (+ Average); bar groups = the metric columns (Base / New /
                    HM [/ Many / Medium / Few]); a bar per method
xd / dg             one axes; bar groups = the source and each target (+ Average); a bar per method
fewshot             a subplot per dataset column (+ Average): accuracy against shots (log2 axis), a line
                    per method
==================  ================================================================================

A method has the same colour in every figure (``method_styles``): its trainer's (``TRAINER_COLOURS``); an
ablation or other variant row (``CoOp [shots_4]``) drawn beside its trainer's plain row has that colour plus a
hatch (bars) or a dashed line and another marker (lines). The legend has its own row below the subplots.
"""
import io
import math
import os
import re
import zlib
from dataclasses import dataclass

from dpl.utils.errors import UserError
from dpl.utils.tools import atomic_open

from .errors import ResultsError

PLOT_PROTOCOLS = ("base2new", "longtail", "fewshot", "xd", "dg")

# The project's trainers in their canonical order, each with its own tab10 colour (the method of this code
# base in red, zero-shot CLIP, the reference, in grey).
TRAINER_ORDER = ("ZeroshotCLIP", "CoOp", "CoCoOp", "KgCoOp", "MaPLe", "IVLP", "PromptSRC", "DropoutPrompt")
TRAINER_COLOURS = dict(zip(TRAINER_ORDER, ("#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b",
                                           "#e377c2", "#d62728")))
# Other trainers: a stable hash of the name into what tab10 has left, then darker tab20b shades.
EXTRA_COLOURS = ("#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")
VARIANT_HATCHES = ("//", "..", "xx", "\\\\", "oo", "++", "--", "**")
VARIANT_LINES = (("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"))
MAX_COLUMNS = 4


@dataclass(frozen=True)
class Style:
    """How a method is drawn: ``colour`` from its trainer; ``hatch`` / ``linestyle`` / ``marker`` tell
    its variants apart ("" / "-" / "o" for the trainer's own row)."""

    colour: str
    hatch: str = ""
    linestyle: object = "-"
    marker: str = "o"


def import_pyplot():
    """pyplot on the file-only Agg backend; a ``ResultsError`` when matplotlib is not installed (called
    before any work, so that a missing extra fails at once)."""
    try:
        import matplotlib
    except ImportError:
        raise ResultsError("drawing figures needs matplotlib: pip install matplotlib (or pip install -e .[plot])") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def safe_name(text):
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def split_label(label):
    """``(trainer, variant)`` of a row label (``dpl.results.discovery.method_labels``): ``CoOp [shots_4]``
    -> ``("CoOp", "[shots_4]")``; the variant is "" for a trainer's plain row."""
    trainer, _, variant = label.strip().partition(" ")
    return trainer, variant.strip()


def trainer_colour(trainer):
    """The trainer's colour, the same in every figure whatever else is drawn."""
    if trainer in TRAINER_COLOURS:
        return TRAINER_COLOURS[trainer]
    return EXTRA_COLOURS[zlib.crc32(trainer.encode()) % len(EXTRA_COLOURS)]


def method_order(labels):
    """``labels`` (duplicates dropped) in the canonical trainer order, other trainers by name after them;
    within a trainer its plain row first, then its variants sorted."""
    def key(label):
        trainer, variant = split_label(label)
        known = TRAINER_ORDER.index(trainer) if trainer in TRAINER_ORDER else len(TRAINER_ORDER)
        return known, trainer, variant != "", variant
    return sorted(dict.fromkeys(labels), key=key)


def method_styles(labels):
    """{label: Style} for the methods of one figure, in ``method_order``: the trainer's colour; the first row
    of a trainer (its plain row, else its first variant) is drawn plain, the k-th further row gets the k-th
    hatch and line style."""
    styles, seen = {}, {}
    for label in method_order(labels):
        trainer, _ = split_label(label)
        k = seen.get(trainer, 0)
        seen[trainer] = k + 1
        if k == 0:
            styles[label] = Style(trainer_colour(trainer))
            continue
        linestyle, marker = VARIANT_LINES[(k - 1) % len(VARIANT_LINES)]
        styles[label] = Style(trainer_colour(trainer), VARIANT_HATCHES[(k - 1) % len(VARIANT_HATCHES)], linestyle,
                              marker)
    return styles


def method_style(label, labels=None):
    """The ``Style`` of ``label`` among the methods ``labels`` of its figure (default: alone)."""
    return method_styles(list(labels or []) + [label])[label]


def y_limits(values):
    """(low, high) for the (mean, spread) pairs drawn: a little below the lowest mean - spread and above
    the highest mean + spread, on multiples of 5 (10 for a wide range), inside [0, 100]."""
    lows = [m - (s or 0.0) for m, s in values]
    highs = [m + (s or 0.0) for m, s in values]
    if not lows:
        return 0.0, 100.0
    lo, hi = min(lows), max(highs)
    step = 10.0 if hi - lo > 40 else 5.0
    pad = max(1.0, 0.05 * (hi - lo))
    low = max(0.0, math.floor((lo - pad) / step) * step)
    high = min(100.0, math.ceil((hi + pad) / step) * step)
    if high <= low:  # everything at 100 (or 0): still a visible range
        low, high = max(0.0, high - step), min(100.0, low + step)
    return low, high


def spread_of(value):
    """The error bar of a cell: its spread, none for a single seed (whose std is a meaningless 0)."""
    if value.spread is None or (value.n is not None and value.n < 2):
        return None
    return value.spread


def draw_bars(ax, groups, labels, cell, styles):
    """A bar group per entry of ``groups`` with a bar per method of ``labels`` (``cell(label, group)``:
    a ``Value`` or None, drawn as no bar); error bars where a cell has a spread. The bars of a method are
    one container labelled with the method; its error bars are a container labelled ``_<method>``."""
    width = 0.8 / max(1, len(labels))
    drawn = []
    for i, label in enumerate(labels):
        offset = (i - (len(labels) - 1) / 2) * width
        present = [(g + offset, v) for g, group in enumerate(groups) for v in [cell(label, group)] if v is not None]
        if not present:
            continue
        style = styles[label]
        ax.bar([x for x, _ in present], [v.mean for _, v in present], width, label=label, color=style.colour,
               hatch=style.hatch or None, edgecolor="white" if style.hatch else style.colour, linewidth=0.5)
        spread = [(x, v) for x, v in present if spread_of(v) is not None]
        if spread:
            ax.errorbar([x for x, _ in spread], [v.mean for _, v in spread], yerr=[spread_of(v) for _, v in spread],
                        fmt="none", ecolor="black", elinewidth=1, capsize=2, label=f"_{label}")
        drawn += [(v.mean, spread_of(v)) for _, v in present]
    ax.set_xticks(range(len(groups)), [str(g) for g in groups])
    ax.set_ylim(*y_limits(drawn))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return drawn


def legend_handles(styles, lines):
    """Proxy artists for the figure legend, one per method (so that a method missing from some subplot
    is still listed)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if lines:
        return [Line2D([], [], color=s.colour, linestyle=s.linestyle, marker=s.marker) for s in styles.values()]
    return [Patch(facecolor=s.colour, hatch=s.hatch or None, edgecolor="white" if s.hatch else s.colour)
            for s in styles.values()]


def subplot_figure(n, title, styles, plt, lines=False, width=3.8, height=3.0):
    """A figure with ``n`` subplots (up to ``MAX_COLUMNS`` a row) and, below them, a row holding only the
    legend (an axes of its own, so that the legend never covers data and ``save_figure``'s tight layout
    keeps room for it). Returns (figure, [data axes])."""
    ncols = min(MAX_COLUMNS, max(1, n))
    nrows = math.ceil(n / ncols)
    # as many legend columns as the longest label fits across the figure (about 0.085 in a character, plus the
    # handle), so that a figure of one subplot does not cut its legend off
    entry_width = 0.085 * max((len(label) for label in styles), default=1) + 0.6
    legend_cols = max(1, min(len(styles), int(width * ncols // entry_width)))
    legend_rows = math.ceil(len(styles) / legend_cols) if styles else 1
    legend_height = 0.3 * legend_rows + 0.2
    fig = plt.figure(figsize=(width * ncols, height * nrows + legend_height))
    spec = fig.add_gridspec(nrows + 1, ncols, height_ratios=[height] * nrows + [legend_height])
    axes = [fig.add_subplot(spec[i // ncols, i % ncols]) for i in range(n)]
    legend_ax = fig.add_subplot(spec[nrows, :])
    legend_ax.axis("off")
    if styles:
        legend_ax.legend(legend_handles(styles, lines), list(styles), loc="center", ncol=legend_cols,
                         frameon=False)
    legend_ax.set_label("legend")
    fig.suptitle(title)
    return fig, axes


def spread_note(grid):
    return "95% interval" if grid.spread_name == "ci95" else grid.spread_name


def plot_bars(grid, plt):
    """Base-to-novel / long-tail: a subplot per dataset row, bar groups = metric columns."""
    labels = list(dict.fromkeys(m for m, _ in grid.columns))
    metrics = list(dict.fromkeys(k for _, k in grid.columns))
    styles = method_styles(labels)
    title = f"{grid.title} (error bars: {spread_note(grid)} over seeds)"
    width = min(8.0, max(3.8, 0.22 * len(metrics) * len(labels) + 1.0))
    fig, axes = subplot_figure(len(grid.rows), title, styles, plt, width=width)
    for ax, (index, cells) in zip(axes, grid.rows):
        by_col = dict(zip(grid.columns, cells))
        shown = [k for k in metrics if any(by_col.get((m, k)) is not None for m in labels)]  # Average: no groups
        draw_bars(ax, shown, list(styles), lambda m, k: by_col.get((m, k)), styles)
        ax.set_title(str(index[0]))
        ax.set_ylabel("accuracy (%)")
    return fig


def plot_crossdomain(grid, plt):
    """Cross-dataset / domain generalisation: one axes, bar groups = source and targets, a bar per method."""
    labels = [index[0] for index, _ in grid.rows]
    styles = method_styles(labels)
    rows = {index[0]: dict(zip(grid.columns, cells)) for index, cells in grid.rows}
    groups = list(grid.columns)
    title = f"{grid.title} (error bars: {spread_note(grid)} over seeds)"
    width = min(16.0, max(6.0, 0.3 * len(groups) * len(styles) + 2))
    fig, (ax,) = subplot_figure(1, title, styles, plt, width=width)
    draw_bars(ax, groups, list(styles), lambda m, col: rows[m].get(col), styles)
    ax.set_xticks(range(len(groups)), [f"{d}\n(source)" if kind == "Source" else d for kind, d in groups],
                  rotation=20 if len(groups) > 6 else 0)
    ax.set_ylabel("accuracy (%)")
    return fig


def shot_positions(shots):
    """x position per shot count on a log2 axis: the number itself; ``all`` one octave past the largest."""
    numeric = [int(k) for k in shots if str(k).isdigit()]
    top = max(numeric, default=1)
    return {k: (int(k) if str(k).isdigit() else 2 * top) for k in shots}


def plot_curves(grid, plt):
    """Few-shot: a subplot per dataset column, accuracy against shots, a line (with error bars) per method."""
    labels = list(dict.fromkeys(index[0] for index, _ in grid.rows))
    styles = method_styles(labels)
    shots = list(dict.fromkeys(index[1] for index, _ in grid.rows))
    xpos = shot_positions(shots)
    title = f"{grid.title} (error bars: {spread_note(grid)} over seeds)"
    fig, axes = subplot_figure(len(grid.columns), title, styles, plt, lines=True)
    for col_idx, (ax, (_, dataset)) in enumerate(zip(axes, grid.columns)):
        drawn = []
        for label, style in styles.items():
            points = [(xpos[index[1]], cells[col_idx]) for index, cells in grid.rows
                      if index[0] == label and cells[col_idx] is not None]
            if not points:
                continue
            spreads = [spread_of(v) for _, v in points]
            yerr = None if all(s is None for s in spreads) else [s if s is not None else 0.0 for s in spreads]
            ax.errorbar([x for x, _ in points], [v.mean for _, v in points], yerr=yerr, label=label,
                        color=style.colour, linestyle=style.linestyle, marker=style.marker, markersize=4,
                        capsize=2)
            drawn += [(v.mean, spread_of(v)) for _, v in points]
        ax.set_xscale("log", base=2)
        ax.set_xticks([xpos[k] for k in shots], [str(k) for k in shots])
        ax.minorticks_off()
        ax.set_ylim(*y_limits(drawn))
        ax.grid(alpha=0.3)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(str(dataset))
    return fig


def build_figure(grid, protocol, plt):
    """The matplotlib Figure of ``grid`` for ``protocol`` (not saved; ``write_plots`` saves it)."""
    if protocol not in PLOT_PROTOCOLS:
        raise ResultsError(f"--plot supports --protocol {', '.join(PLOT_PROTOCOLS)}, not {protocol}")
    if protocol == "fewshot":
        return plot_curves(grid, plt)
    if protocol in ("xd", "dg"):
        return plot_crossdomain(grid, plt)
    return plot_bars(grid, plt)


def save_figure(fig, out_dir, name, plt, dpi=120, palette=0):
    """Write ``fig`` as ``out_dir/name`` (a file-system-safe name), atomically, and close it; its path.

    ``palette``: a PNG of at most that many colours (0: full colour); a few times smaller, for documents.
    An interrupted or failed write leaves the previous file; a path that cannot be written is a ``ResultsError``.
    """
    path = os.path.join(out_dir, safe_name(name))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    plt.close(fig)
    if palette:
        from PIL import Image

        buffer.seek(0)
        with Image.open(buffer) as image:
            small = image.convert("RGB").quantize(palette, method=Image.Quantize.MEDIANCUT)
        buffer = io.BytesIO()
        small.save(buffer, format="png", optimize=True)
    try:
        with atomic_open(path, "wb") as f:
            f.write(buffer.getvalue())
    except UserError as exc:  # UnwritableFileError: one line naming the file
        raise ResultsError(str(exc)) from None
    return path


def write_plots(grid, protocol, out_dir, plt):
    """The PNG file of ``grid`` under ``out_dir`` (``<protocol>.png``); its path, in a list."""
    return [save_figure(build_figure(grid, protocol, plt), out_dir, f"{protocol}.png", plt)]
