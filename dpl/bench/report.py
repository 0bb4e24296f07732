"""The benchmark's table and JSON document: per-trainer numbers with ratios against references of the same run,
and, only for the targets a user asks for (``--target``), a met / MISSED verdict per ratio."""
import datetime
import math
import os
import platform
import re
import sys
from dataclasses import dataclass

import torch

from tabulate import tabulate

REFERENCES = ("PromptSRC", "CoOp")  # ratios are taken against these trainers' rows of the same variant
METRICS = {  # ratio name -> result field
    "step": "step_seconds_median",  # wall time
    "step_cpu": "step_cpu_seconds_median",  # process CPU time: steadier than wall time on shared cores
    "flops": "step_gflop",
    "memory": "peak_memory_mib",
}
METRIC_LABELS = {"step": "step time", "step_cpu": "step CPU time", "flops": "step FLOPs", "memory": "peak memory"}
TARGET_VARIANT = "plain"  # targets compare the rows without the text-encoding switches
TARGET_FORM = "TRAINER/REFERENCE[:METRIC]<=RATIO"
_TARGET = re.compile(r"(?P<trainer>[^/:<=\s]+)/(?P<reference>[^/:<=\s]+)(?::(?P<metric>[a-z_]+))?<=(?P<ratio>\S+)")


@dataclass(frozen=True)
class Target:
    """At most ``max_ratio`` times the reference: ``trainer``'s value of each of ``metrics`` divided by
    ``reference``'s, in the plain variant (the table's ``x <reference>`` ratios)."""

    trainer: str
    reference: str
    max_ratio: float
    metrics: tuple = tuple(METRICS)

    @property
    def text(self):
        metric = f":{self.metrics[0]}" if len(self.metrics) == 1 else ""
        return f"{self.trainer}/{self.reference}{metric}<={self.max_ratio:g}"


def parse_target(text):
    """The ``Target`` of ``TRAINER/REFERENCE[:METRIC]<=RATIO``; a ``ValueError`` naming ``text`` and the form."""
    match = _TARGET.fullmatch(text.strip())
    example = f"expected {TARGET_FORM}, e.g. DropoutPrompt/PromptSRC<=1.15 (METRIC: {', '.join(METRICS)}; default all)"
    if not match:
        raise ValueError(f"{text!r}: {example}")
    metric = match.group("metric")
    if metric is not None and metric not in METRICS:
        raise ValueError(f"{text!r}: unknown METRIC {metric!r}; {example}")
    try:
        ratio = float(match.group("ratio"))
    except ValueError:
        ratio = None
    if ratio is None or not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"{text!r}: RATIO must be a positive number; {example}")
    return Target(match.group("trainer"), match.group("reference"), ratio, (metric,) if metric else tuple(METRICS))


def load_average():
    """The 1-, 5- and 15-minute load averages, rounded (None where the OS has none)."""
    return [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None


def bench_command(argv=None):
    """The command line a report prints next to its numbers."""
    return "python -m dpl.bench " + " ".join(sys.argv[1:] if argv is None else argv)


def machine_meta(command, load_start):
    """When, where and by what a measurement ran (every mode's JSON ``meta`` starts from this); call it after
    measuring, with the load average taken before."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command,
        "host": platform.node(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "load_average_start": load_start, "load_average_end": load_average(),
    }


def variant_of(result):
    """How the class prompts were encoded: ``plain`` or e.g. ``chunk 100 + checkpoint``."""
    parts = []
    if result["text_chunk_size"]:
        parts.append(f"chunk {result['text_chunk_size']}")
    if result["text_checkpoint"]:
        parts.append("checkpoint")
    return " + ".join(parts) or "plain"


def _ratio(value, reference):
    if value is None or not reference:
        return None
    return value / reference


def add_ratios(results):
    """Each result with ``variant`` and ``<metric>_vs_<reference>`` for the references of its variant."""
    by_key = {(r["trainer"], variant_of(r)): r for r in results}
    rows = []
    for result in results:
        variant = variant_of(result)
        row = dict(result, variant=variant)
        for reference in REFERENCES:
            ref = by_key.get((reference, variant))
            for metric, field in METRICS.items():
                row[f"{metric}_vs_{reference}"] = _ratio(result.get(field), ref.get(field) if ref else None)
        rows.append(row)
    return rows


def target_check(rows, target):
    """``target``'s ratios (plain variant) and whether each is met (None: a value is missing, e.g. the
    step time of a trainer that does not train); None when either trainer has no plain row."""
    by_key = {(r["trainer"], r["variant"]): r for r in rows}
    row, ref = by_key.get((target.trainer, TARGET_VARIANT)), by_key.get((target.reference, TARGET_VARIANT))
    if row is None or ref is None:
        return None
    check = {"target": target.text, "trainer": target.trainer, "reference": target.reference,
             "max_ratio": target.max_ratio}
    for metric in target.metrics:
        ratio = _ratio(row.get(METRICS[metric]), ref.get(METRICS[metric]))
        check[f"{metric}_ratio"] = ratio
        check[f"{metric}_met"] = None if ratio is None else ratio <= target.max_ratio
    return check


def target_checks(rows, targets):
    """The checks of the targets that have both trainers' rows."""
    return [check for check in (target_check(rows, target) for target in targets) if check is not None]


def _fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(seconds):
    return None if seconds is None else seconds * 1000


def results_table(rows):
    """Markdown table: wall/CPU step time, FLOPs and peak memory with ratios, evaluation throughput."""
    headers = ["trainer", "text encoding", "step ms", "x PromptSRC", "x CoOp", "CPU ms", "x PromptSRC", "GFLOP",
               "x PromptSRC", "peak MiB", "x PromptSRC", "x CoOp", "eval img/s"]
    body = []
    for row in rows:
        body.append([
            row["trainer"], row["variant"],
            _fmt(_ms(row.get("step_seconds_median")), 0), _fmt(row["step_vs_PromptSRC"]), _fmt(row["step_vs_CoOp"]),
            _fmt(_ms(row.get("step_cpu_seconds_median")), 0), _fmt(row["step_cpu_vs_PromptSRC"]),
            _fmt(row.get("step_gflop"), 1), _fmt(row["flops_vs_PromptSRC"]),
            _fmt(row.get("peak_memory_mib"), 0), _fmt(row["memory_vs_PromptSRC"]), _fmt(row["memory_vs_CoOp"]),
            _fmt(row.get("eval_images_per_second"), 1),
        ])
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def eval_compare_summary(result):
    """Throughput of once-per-evaluation vs per-batch class-prompt encoding (one ``measure`` result)."""
    once, per_batch = result["eval_images_per_second"], result["eval_per_batch_text_images_per_second"]
    text = result["eval_text_seconds"]
    batch_seconds = (result["eval_seconds"] - text) / result["eval_batches"]  # images only, per batch
    return {
        "trainer": result["trainer"],
        "num_classes": result["num_classes"],
        "eval_batch_size": result["eval_batch_size"],
        "eval_batches": result["eval_batches"],
        "once_images_per_second": once,
        "per_batch_images_per_second": per_batch,
        "speedup": once / per_batch,
        "text_encoding_seconds": text,
        "batch_seconds": batch_seconds,
        # a full test set has many batches: once-per-evaluation then saves one encoding per batch
        "speedup_per_batch_amortised": (text + batch_seconds) / batch_seconds,
    }


def eval_compare_line(summary):
    return (f"Evaluation, {summary['trainer']} at {summary['num_classes']} classes, {summary['eval_batches']} "
            f"batches of {summary['eval_batch_size']}: class prompts encoded once per evaluation "
            f"{summary['once_images_per_second']:.1f} img/s vs per batch {summary['per_batch_images_per_second']:.1f}"
            f" img/s ({summary['speedup']:.2f}x; {summary['speedup_per_batch_amortised']:.2f}x per batch once the "
            f"encoding ({summary['text_encoding_seconds']:.2f} s) is amortised over a full test set)")


def target_line(check):
    parts = []
    for metric, label in METRIC_LABELS.items():
        if f"{metric}_ratio" not in check:
            continue
        ratio, met = check[f"{metric}_ratio"], check[f"{metric}_met"]
        verdict = "n/a" if met is None else ("met" if met else "MISSED")
        parts.append(f"{label} {_fmt(ratio)}x ({verdict})")
    return f"Target {check['trainer']} <= {check['max_ratio']:g}x {check['reference']}: " + ", ".join(parts)


def report_text(rows, meta, compare=None, checks=()):
    lines = [
        f"dpl.bench {meta['date']}  arch {meta['arch']}  device {meta['device']}  batch {meta['batch_size']}  "
        f"classes {meta['num_classes']}  steps {meta['steps']} (+{meta['warmup']} warm-up)  "
        f"threads {meta['torch_threads']}  "
        f"load {meta['load_average_start']} -> {meta['load_average_end']}",
        f"memory: {meta['memory_kind']} above the built model",
        "",
        results_table(rows),
    ]
    if compare is not None:
        lines += ["", eval_compare_line(compare)]
    if checks:
        lines += [""] + [target_line(check) for check in checks]
    return "\n".join(lines)


def report_document(rows, meta, compare=None, checks=()):
    """The JSON document ``--json`` writes (``targets``: the checks of ``--target``, empty without one)."""
    return {"benchmark": meta, "results": rows, "eval_compare": compare, "targets": list(checks)}
