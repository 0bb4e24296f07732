#!/usr/bin/env python
"""Read run results and print seed summaries or protocol tables.

Upstream mode (the CLI of CoOp's ``parse_test_res.py``, same output)::

    python parse_results.py output/base2new/train_base/dtd/shots_16/CoOp/vit_b16_ep50_ctxv1
    python parse_results.py DIR --test-log          # eval-only runs (end signal "=> result")
    python parse_results.py DIR --multi-exp --ci95  # DIR/<experiment>/<seed>/...

Protocol tables (trainers side by side, mean ± std over seeds, missing seeds listed)::

    python parse_results.py --protocol base2new output/base2new            # Base / New / HM
    python parse_results.py --protocol xd output                             # ImageNet -> 10 datasets
    python parse_results.py --protocol dg output                             # ImageNet -> V2/Sketch/A/R
    python parse_results.py --protocol fewshot output/few_shot
    python parse_results.py --protocol longtail output/long_tail/imb10       # + many/medium/few groups
    ... --format {text,markdown,csv,json} --plot DIR --strict --seeds 1 2 3

Where a number comes from, per run folder: ``results.json`` (written by every ``test()`` of this code
base) when it holds a test-split result; else ``log.txt``; else the newest ``log.txt-<timestamp>``
that holds a result (upstream Dassl starts such a file when a run is restarted). In a log, the value
is the last ``* <keyword>: <number>%`` line after the end signal (``Finish training`` or Dassl's older
``Finished training``; ``=> result`` with ``--test-log``). Protocol tables pick the end signal per log:
eval-only runs (``eval_only: True`` in the printed arguments) use ``=> result``.

Layouts read by the tables (what the scripts under ``scripts/`` write)::

    base2new / longtail  ROOT/{train_base,test_base,test_new}/<dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>
    xd / dg              ROOT/<source>/<Trainer>/<tag>/seed<S>  (training run; tag = <cfg>_16shots)
                         ROOT/evaluation/<Trainer>/<tag>/<dataset>/seed<S>
    fewshot              ROOT/<dataset>/<Trainer>/<cfg>_<K>shots/seed<S>

``python parse_results.py --run-status RUN_DIR`` prints where a run's result is (exit 0) or why
there is none (exit 3). Config folders named ``<cfg>@<variant>`` (a run whose options changed the
experiment, or a ``TAG``) and base-to-novel runs with other than 16 shots are rows of their own:
``DropoutPrompt [IMPORTANCE=uniform]``, ``CoOp [shots_4]``.

``--plot DIR`` writes one PNG per protocol, ``DIR/<protocol>.png`` (``dpl.results.plots``), error bars =
the table's spread (std, or the 95% interval with ``--ci95``).
"""
import argparse
import os
import sys

from dpl.results import plots, runs
from dpl.results.errors import ResultsError
from dpl.results.render import FORMATS, render
from dpl.results.tables import PROTOCOLS, TableOptions, build_table
from dpl.results.upstream import SummaryOptions, summarize_seeds

STATUS_NOT_FINISHED = 3  # --run-status: the run has no final result


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", nargs="?", default="", help="folder of seed folders (upstream mode) or protocol root")
    p.add_argument("--root", default="", help="protocol root (same as the positional directory)")
    p.add_argument("--ci95", action="store_true", help="95%% confidence interval instead of std")
    p.add_argument("--test-log", action="store_true", help="logs of eval-only runs: end signal '=> result'")
    p.add_argument("--multi-exp", action="store_true", help="each sub-folder is an experiment of seed folders")
    p.add_argument("--keyword", default="accuracy", help="metric name in '* <keyword>: X%%' (default accuracy)")
    p.add_argument("--no-json", action="store_true", help="ignore results.json, read logs only")
    p.add_argument("--strict", action="store_true", help="missing seeds/runs are an error (exit 1)")
    p.add_argument("--protocol", choices=list(PROTOCOLS),
                   help="print a protocol table instead of one directory's seed summary")
    p.add_argument("--format", choices=list(FORMATS), default="text")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds every run must have (default: those found)")
    p.add_argument("--datasets", nargs="+", help="datasets (rows / targets) to show, in this order")
    p.add_argument("--source", default="imagenet", help="source dataset for --protocol xd/dg")
    p.add_argument("--title", default="", help="table title")
    p.add_argument("--plot", metavar="DIR", help="also write PNG charts to DIR (needs matplotlib)")
    p.add_argument("--run-status", metavar="RUN_DIR", help="print where RUN_DIR's result is; exit 3 if none")
    return p


def print_run_status(args, out):
    """For scripts: exit 0 and where the result is when the run is finished, else 3 and the reason."""
    finished, line = runs.run_status(args.run_status, args.keyword)
    print(line, file=out)
    return 0 if finished else STATUS_NOT_FINISHED


def print_protocol_table(args, out):
    """The table on ``out``; missing runs on stderr too when the table is CSV; plot paths on stderr."""
    if not args.directory or not os.path.isdir(args.directory):
        raise ResultsError(f"protocol root not found: {args.directory!r}")
    if args.plot and args.protocol not in plots.PLOT_PROTOCOLS:
        raise ResultsError(f"--plot supports --protocol {', '.join(plots.PLOT_PROTOCOLS)}, not {args.protocol}")
    plt = plots.import_pyplot() if args.plot else None  # fail before any work when matplotlib is missing
    grid = build_table(TableOptions(args.protocol, args.directory, args.keyword, args.ci95, args.seeds,
                                    args.datasets, args.title, args.source))
    if args.strict and grid.missing:
        raise ResultsError(f"{len(grid.missing)} missing run(s) (--strict): " + "; ".join(grid.missing))
    out.write(render(grid, args.format))
    if args.format == "csv" and grid.missing:
        print(f"warning: {len(grid.missing)} missing run(s): " + "; ".join(grid.missing), file=sys.stderr)
    for path in plots.write_plots(grid, args.protocol, args.plot, plt) if args.plot else []:
        print(f"plot: {path}", file=sys.stderr)
    return 0


def print_seed_summary(args, out):
    options = SummaryOptions(args.keyword, args.test_log, not args.no_json, args.ci95, args.multi_exp, args.strict)
    summarize_seeds(args.directory, options, out)
    return 0


def main(argv=None, out=None):
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    args.directory = args.directory or args.root
    try:
        if args.run_status:
            return print_run_status(args, out)
        if args.protocol:
            return print_protocol_table(args, out)
        return print_seed_summary(args, out)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
