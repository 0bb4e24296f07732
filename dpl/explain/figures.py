"""Figures of an ``Explanation``: per-patch maps of the images and a bar chart of the class prompts' tokens.

Each drawing function returns the matplotlib Figure (saving is the caller's), so the arrays behind a figure can be
read back from its axes. Every map is the array ``explain`` recorded, unchanged: patch ``(i, j)`` of an image is
token ``1 + i * grid + j`` (CLS first, visual prompts after the patches, both not drawn).
"""
import numpy as np
import torch

from dpl.drople.token_dropout import l1_normalise
from dpl.engine.errors import UserError

from .maps import TERM_TITLES, mean_over_layers

PANEL_TITLES = {**TERM_TITLES, "importance": "importance (combined)", "probability": "drop probability"}


def select_layer(maps_by_layer, layer):
    """The ``TokenMaps`` of ``layer`` (an int), or the mean over the recorded layers (``"mean"``)."""
    if layer == "mean":
        return mean_over_layers(maps_by_layer)
    if layer not in maps_by_layer:
        raise UserError(f"--layer {layer}: tokens are dropped after layers {sorted(maps_by_layer)} only; "
                        "choose one of them or 'mean'")
    return maps_by_layer[layer]


def select_modalities(explanation, layer):
    """``{"vision": TokenMaps, "text": TokenMaps}`` at ``layer`` for the modalities that drop tokens there (a
    run may drop in one modality only, or after other layers in each); a ``UserError`` when none does."""
    chosen = {modality: select_layer(maps, layer)
              for modality, maps in (("vision", explanation.vision), ("text", explanation.text))
              if maps and (layer == "mean" or layer in maps)}
    if not chosen:
        raise UserError(f"--layer {layer}: tokens are dropped after vision layers {sorted(explanation.vision)} and "
                        f"text layers {sorted(explanation.text)} only; choose one of them or 'mean'")
    return chosen


def layer_title(layer):
    return "mean over the dropping layers" if layer is None else f"after layer {layer}"


def patch_grid(values, grid):
    """``[N, grid, grid]`` numpy array of the patch tokens of ``values`` ``[N, L]`` (row-major, as CLIP's conv)."""
    return values[:, 1:1 + grid * grid].reshape(-1, grid, grid).numpy()


def map_arrays(maps):
    """``{name: [N, L] tensor}``: each recorded term ("cls", "self", "mag"), "importance" (if any), "probability"."""
    arrays = {name: maps.terms[name] for name in TERM_TITLES if name in maps.terms}
    if maps.importance is not None:
        arrays["importance"] = maps.importance
    arrays["probability"] = maps.probability
    return arrays


def panel_title(name, maps):
    """A panel's title; a term the run's importance source leaves out says so (it is drawn, not used)."""
    unused = name in TERM_TITLES and maps.importance is not None and name not in maps.used
    return PANEL_TITLES[name] + (" (not used)" if unused else "")


def vision_panels(maps, grid):
    """``[(title, [N, grid, grid])]``: each importance term, the combined importance (if any) and the probability."""
    return [(panel_title(name, maps), patch_grid(values, grid)) for name, values in map_arrays(maps).items()]


def image_figure(images, panels, captions, heading, plt):
    """One row per image: the image, then each panel's map drawn over a faded copy of it.

    images: ``[N, H, W, 3]`` floats in [0, 1]; panels: ``vision_panels``; captions: one line per image.
    """
    rows, cols = len(images), 1 + len(panels)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.2 * rows + 0.5), squeeze=False)
    for row, image in enumerate(images):
        height, width = image.shape[:2]
        axes[row][0].imshow(image)
        axes[row][0].set_title(captions[row], fontsize=7)
        for col, (title, maps) in enumerate(panels, start=1):
            ax = axes[row][col]
            ax.imshow(image.mean(axis=-1), cmap="gray", alpha=0.35)
            shown = ax.imshow(maps[row], cmap="magma", alpha=0.75, interpolation="nearest",
                              extent=(0, width, height, 0))
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
            if row == 0:
                ax.set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(heading, fontsize=8)
    return fig


def text_figure(token_labels, maps, class_rows, classnames, heading, plt):
    """One bar chart per class prompt of ``class_rows``: the combined importance of its scored tokens (bars,
    left axis; the terms' mean when the source uses none) and the drop probability (dots, right axis)."""
    fig, axes = plt.subplots(len(class_rows), 1, figsize=(7, 1.7 * len(class_rows) + 0.6), squeeze=False)
    for ax, row in zip(axes[:, 0], class_rows):
        labels = token_labels[row]
        positions = np.arange(len(labels))
        importance = text_importance(maps, row, len(labels))
        ax.bar(positions, importance, color="#4c72b0", label="importance")
        ax.set_xticks(positions, labels, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("importance", fontsize=7)
        ax.set_title(classnames[row], fontsize=8, loc="left")
        eligible = maps.eligible[row, :len(labels)].numpy()  # only these tokens can be dropped
        twin = ax.twinx()
        twin.plot(positions[eligible], maps.probability[row, :len(labels)].numpy()[eligible], "o", color="#c44e52",
                  label="drop probability")
        twin.set_ylim(0, 1)
        twin.set_ylabel("drop prob.", fontsize=7)
    handles = [axes[0, 0].containers[0], fig.axes[-1].lines[0]]  # above the first chart, right of its title
    axes[0, 0].legend(handles, ["importance", "drop probability (tokens that can be dropped)"], loc="lower right",
                      bbox_to_anchor=(1.0, 1.0), fontsize=7, ncol=2, frameon=False)
    fig.suptitle(heading, fontsize=8)
    fig.tight_layout()
    return fig


def text_importance(maps, row, length):
    """The bars of ``text_figure``: ``I`` of the first ``length`` tokens of ``row``; without importance (the
    uniform source) the mean of the L1-normalised terms, which is what ``full`` would use."""
    if maps.importance is not None:
        return maps.importance[row, :length].numpy()
    scored = maps.scored[row:row + 1, :length]
    terms = [l1_normalise(t[row:row + 1, :length], scored) for t in maps.terms.values()]
    return torch.stack(terms).mean(dim=0)[0].numpy()
