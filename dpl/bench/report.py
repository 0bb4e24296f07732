"""The benchmark's table and JSON document: per-trainer numbers with ratios against references of the same run."""
from tabulate import tabulate

REFERENCES = ("PromptSRC", "CoOp")  # ratios are taken against these trainers' rows of the same variant
TARGET_TRAINER, TARGET_REFERENCE, TARGET_RATIO = "DropoutPrompt", "PromptSRC", 1.15
METRICS = {  # ratio name -> result field
    "step": "step_seconds_median",  # wall time
    "step_cpu": "step_cpu_seconds_median",  # process CPU time: steadier than wall time on shared cores
    "flops": "step_gflop",
    "memory": "peak_memory_mib",
}
TARGET_METRICS = (("step", "step time"), ("step_cpu", "step CPU time"), ("flops", "step FLOPs"),
                  ("memory", "peak memory"))


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


def target_check(rows):
    """DropoutPrompt's step time (wall, CPU), FLOPs and peak memory relative to PromptSRC (plain variant), or None."""
    by_key = {(r["trainer"], r["variant"]): r for r in rows}
    row = by_key.get((TARGET_TRAINER, "plain"))
    if row is None or (TARGET_REFERENCE, "plain") not in by_key:
        return None
    check = {"trainer": TARGET_TRAINER, "reference": TARGET_REFERENCE, "max_ratio": TARGET_RATIO}
    for metric in METRICS:
        ratio = row.get(f"{metric}_vs_{TARGET_REFERENCE}")
        check[f"{metric}_ratio"] = ratio
        check[f"{metric}_met"] = None if ratio is None else ratio <= TARGET_RATIO
    return check


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
    for metric, label in TARGET_METRICS:
        ratio, met = check[f"{metric}_ratio"], check[f"{metric}_met"]
        verdict = "n/a" if met is None else ("met" if met else "MISSED")
        parts.append(f"{label} {_fmt(ratio)}x ({verdict})")
    return (f"Target {check['trainer']} <= {check['max_ratio']}x {check['reference']}: " + ", ".join(parts))


def report_text(rows, meta, compare=None, check=None):
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
    if check is not None:
        lines += ["", target_line(check)]
    return "\n".join(lines)


def report_document(rows, meta, compare=None, check=None):
    """The JSON document ``--json`` writes."""
    return {"benchmark": meta, "results": rows, "eval_compare": compare, "targets": check}
