"""Training curves as PNG files: ``python -m dpl.tools.curves PATH [--out DIR] [--keyword K]``.

``PATH`` is a run folder (``log.txt`` and/or ``results.json``) or any folder above runs: a config
folder of ``seed1/ seed2/ ...`` or a whole protocol output tree. Written under ``--out`` (default
``PATH/curves``), mirroring the folders below ``PATH``: ``<run>.png`` per run (every logged loss term,
``lambda``, ``lr`` and ``acc`` against epochs, with the evaluations and results.json's final test) and
``seeds_overlay.png`` beside the runs of each folder holding two or more ``seed<N>`` runs (one colour per
seed). Prints the path of each file written; runs without training progress (eval-only) are skipped with
a note on stderr. Exit status 0, or 1 with one ``error: ...`` line (no such folder, nothing to plot,
matplotlib missing).
"""
import argparse
import os
import sys

from dpl.results.curve_figures import write_overlay_figure, write_run_figure
from dpl.results.curves import find_runs, read_training_curves, seed_groups
from dpl.results.errors import ResultsError
from dpl.results.layout import CURVES_DIR
from dpl.results.plots import import_pyplot

EXIT_INTERRUPTED = 130  # as shells report a process stopped by SIGINT

OVERLAY_NAME = "seeds_overlay.png"


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m dpl.tools.curves", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a run folder, or a folder above runs (config folder, protocol output tree)")
    parser.add_argument("--out", help=f"where the PNG files go (default: PATH/{CURVES_DIR})")
    parser.add_argument("--keyword", default="accuracy",
                        help="the '* <keyword>: X%%' metric of evaluations and results.json (default: accuracy)")
    return parser


def placement(folder, root, out):
    """(output folder, file stem) of ``folder``: its place below ``root`` mirrored under ``out``."""
    rel = os.path.relpath(folder, root)
    if rel == os.curdir:
        return out, os.path.basename(os.path.abspath(root))
    return os.path.join(out, os.path.dirname(rel)), os.path.basename(rel)


def read_plottable(runs, keyword):
    """{run: TrainingCurves} of the runs with training progress; a note on stderr for each other run."""
    plottable = {}
    for run in runs:
        curves = read_training_curves(run, keyword)
        if curves.has_progress:
            plottable[run] = curves
        else:
            why = "eval-only run" if curves.eval_only_logs else "no training progress lines in its logs"
            print(f"note: {run}: {why}: no curves", file=sys.stderr)
    return plottable


def write_all(plottable, root, out, plt):
    """Write the per-run figures, then the seed overlays; yield each path as it is written."""
    above = os.path.dirname(os.path.abspath(root))  # titles: the folder names from PATH's own name down
    for run, curves in plottable.items():
        folder, stem = placement(run, root, out)
        yield write_run_figure(curves, folder, f"{stem}.png", plt, title=os.path.relpath(run, above))
    for parent, members in seed_groups(list(plottable)).items():
        if len(members) < 2:
            continue
        rel = os.path.relpath(parent, root)
        folder = out if rel == os.curdir else os.path.join(out, rel)
        labelled = [(os.path.basename(run), plottable[run]) for run in members]
        yield write_overlay_figure(labelled, folder, OVERLAY_NAME, plt, os.path.relpath(parent, above))


def run(args):
    path = args.path.rstrip(os.sep) or os.sep
    if not os.path.exists(path):
        raise ResultsError(f"{path}: no such folder")
    if not os.path.isdir(path):
        raise ResultsError(f"{path}: not a folder (give the run folder that holds it)")
    out = args.out or os.path.join(path, CURVES_DIR)
    plt = import_pyplot()  # before any work: a missing matplotlib fails at once
    plottable = read_plottable(find_runs(path, skip={os.path.realpath(out)}), args.keyword)
    if not plottable:
        raise ResultsError(f"{path}: no log.txt or results.json with training progress here or below")
    for written in write_all(plottable, path, out, plt):
        print(written, flush=True)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ResultsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # every file is written whole or not at all: the same command redraws them
        print("Interrupted: the figures printed above are complete; run the same command again for all",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
