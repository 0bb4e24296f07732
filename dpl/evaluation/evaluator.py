"""Classification evaluator: accuracy, error, macro-F1 (numpy, no sklearn), per-class accuracy.

Printed block (Dassl's, parsed by ``parse_test_res.py``)::

    => result
    * total: 2,500
    * correct: 2,045
    * accuracy: 81.8%
    * error: 18.2%
    * macro_f1: 81.6%

``evaluate()`` returns an ordered dict ``accuracy, error_rate, macro_f1`` (percent); with per-class
results on (``TEST.PER_CLASS_RESULT`` or ``evaluate(per_class=True)``) also ``perclass_accuracy``
(the mean of the per-class accuracies, as in Dassl) and ``per_class`` (a list of
``{"label", "classname", "total", "correct", "accuracy"}`` dicts, one per class seen in the labels).
A long-tail run's evaluator is built with ``groups`` (``{label: "many" | "medium" | "few"}`` of its
training classes, ``dpl.data.datasets.long_tail_groups``): ``evaluate()`` then also returns
``group_accuracy`` (many/medium/few-shot accuracies from the same predictions, whether or not per-class
results are on) and tags each ``per_class`` row with its ``group``.
"""
import os
from collections import OrderedDict

import numpy as np
import torch

from dpl.utils.tools import atomic_open

from .build import EVALUATOR_REGISTRY


def macro_f1_score(y_true, y_pred):
    """Macro F1 in [0, 1] over the labels present in ``y_true`` (sklearn's ``labels=np.unique(y_true)``)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = np.unique(y_true)
    size = int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    true_count = np.bincount(y_true, minlength=size)[labels]
    pred_count = np.bincount(y_pred, minlength=size)[labels]
    hits = np.bincount(y_true[y_true == y_pred], minlength=size)[labels]
    # F1 = 2 TP / (|predicted| + |true|); a label never predicted and never hit scores 0 (sklearn's convention)
    denom = true_count + pred_count
    f1 = np.divide(2.0 * hits, denom, out=np.zeros(len(labels)), where=denom > 0)
    return float(f1.mean()) if len(labels) else 0.0


class EvaluatorBase:
    def __init__(self, cfg):
        self.cfg = cfg

    def reset(self):
        raise NotImplementedError

    def process(self, mo, gt):
        raise NotImplementedError

    def evaluate(self):
        raise NotImplementedError


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Accumulates predictions batch by batch; ``evaluate()`` prints and returns the metrics."""

    def __init__(self, cfg, lab2cname=None, groups=None, **kwargs):
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self._groups = groups  # {label: group name} of a long-tail run's training classes, else None
        self.reset()

    def reset(self):
        self._y_true = []
        self._y_pred = []
        self.num_samples = 0
        self.num_correct = 0
        self._writes_files = True

    def gather(self, world):
        """Combine the predictions of the processes of ``world`` (a ``dpl.engine.distributed.World``), each
        of which processed its contiguous shard of the split, in rank order: the split's order. Every
        process then evaluates all of them; only rank 0 writes files."""
        empty = np.zeros(0, dtype=np.int64)
        parts = world.all_gather_objects(self._arrays() if self._y_true else (empty, empty))  # a shard may be empty
        self._y_true = [y_true for y_true, _ in parts]
        self._y_pred = [y_pred for _, y_pred in parts]
        y_true, y_pred = self._arrays()
        self.num_samples = len(y_true)
        self.num_correct = int((y_true == y_pred).sum())
        self._writes_files = world.is_main

    def process(self, mo, gt):
        """``mo`` [N, C] logits (or a tuple whose first item is), ``gt`` [N] labels."""
        if isinstance(mo, (tuple, list)):
            mo = mo[0]
        pred = mo.max(1)[1]
        self.num_correct += int(pred.eq(gt).sum().item())
        self.num_samples += gt.shape[0]
        self._y_true.append(gt.detach().cpu().numpy().astype(np.int64))
        self._y_pred.append(pred.detach().cpu().numpy().astype(np.int64))

    def per_class_results(self):
        """One dict per label present in the ground truth: label, classname, total, correct, accuracy (%)."""
        y_true, y_pred = self._arrays()
        labels = np.unique(y_true)
        size = int(labels.max(initial=0)) + 1
        total = np.bincount(y_true, minlength=size)[labels]
        correct = np.bincount(y_true[y_true == y_pred], minlength=size)[labels]
        names = self._lab2cname or {}
        return [
            {
                "label": int(label),
                "classname": names.get(int(label), ""),
                "total": int(n),
                "correct": int(c),
                "accuracy": 100.0 * c / n,
            }
            for label, n, c in zip(labels, total, correct)
        ]

    def group_accuracy(self):
        """Mean per-class accuracy (%) of the classes of each group; prints ``* many-shot accuracy: 71.3%``.

        Returns ``{name: accuracy or None}`` in ``LONG_TAIL_GROUPS`` order (None: no tested class in that
        group), or None without groups or when a tested label has none (the split's classes are not the
        training classes: e.g. a new-class test).
        """
        groups = self._groups
        if not groups:
            return None
        rows = self.per_class_results()
        if any(row["label"] not in groups for row in rows):
            return None
        from dpl.data.datasets import LONG_TAIL_GROUPS  # here: evaluation must import without the data stack

        accuracies = OrderedDict()
        for name in LONG_TAIL_GROUPS:
            in_group = [row["accuracy"] for row in rows if groups[row["label"]] == name]
            accuracies[name] = float(np.mean(in_group)) if in_group else None
            shown = f"{accuracies[name]:.1f}%" if in_group else "n/a (no tested class in this group)"
            print(f"* {name}-shot accuracy: {shown}")
        return accuracies

    def _arrays(self):
        if not self._y_true:
            raise RuntimeError("Classification.evaluate(): no predictions were processed (empty data loader?)")
        return np.concatenate(self._y_true), np.concatenate(self._y_pred)

    def evaluate(self, per_class=None):
        if per_class is None:
            per_class = self.cfg.TEST.PER_CLASS_RESULT
        y_true, y_pred = self._arrays()
        acc = 100.0 * self.num_correct / self.num_samples
        results = OrderedDict(
            [("accuracy", acc), ("error_rate", 100.0 - acc), ("macro_f1", 100.0 * macro_f1_score(y_true, y_pred))]
        )
        print(
            "=> result\n"
            f"* total: {self.num_samples:,}\n"
            f"* correct: {self.num_correct:,}\n"
            f"* accuracy: {results['accuracy']:.1f}%\n"
            f"* error: {results['error_rate']:.1f}%\n"
            f"* macro_f1: {results['macro_f1']:.1f}%"
        )
        if per_class:
            rows = self.per_class_results()
            print("=> per-class result")
            for row in rows:
                print(
                    f"* class: {row['label']} ({row['classname']})\t"
                    f"total: {row['total']:,}\tcorrect: {row['correct']:,}\tacc: {row['accuracy']:.1f}%"
                )
            mean_acc = float(np.mean([row["accuracy"] for row in rows]))
            print(f"* average: {mean_acc:.1f}%")
            results["perclass_accuracy"] = mean_acc
            results["per_class"] = rows
        if self.cfg.TEST.COMPUTE_CMAT and self._writes_files:
            self._save_confusion_matrix(y_true, y_pred)
        self._add_group_accuracy(results)
        return results

    def _add_group_accuracy(self, results):
        """Long-tail runs: ``group_accuracy`` in ``results``, and each ``per_class`` row tagged with its group."""
        accuracies = self.group_accuracy()
        if accuracies is None:
            return
        results["group_accuracy"] = accuracies
        for row in results.get("per_class", ()):
            row["group"] = self._groups[row["label"]]

    def _save_confusion_matrix(self, y_true, y_pred):
        size = int(max(y_true.max(), y_pred.max())) + 1
        counts = np.bincount(y_true * size + y_pred, minlength=size * size).reshape(size, size).astype(np.float64)
        rows = counts.sum(1, keepdims=True)
        cmat = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)  # normalised over true labels
        save_path = os.path.join(self.cfg.OUTPUT_DIR, "cmat.pt")
        with atomic_open(save_path, "wb") as f:
            torch.save(torch.from_numpy(cmat), f)
        print(f"Confusion matrix is saved to {save_path}")
