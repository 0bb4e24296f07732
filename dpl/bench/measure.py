"""One benchmark measurement: build a trainer, time its training steps, read peak memory, time evaluation.

A ``Task`` describes one measurement; ``measure(task)`` runs it in the current process and
``measure_isolated(task)`` in a fresh spawned process, so that each trainer's peak memory is its own
(CPU: peak RSS above the RSS of the built model; CUDA: max allocated above the allocated memory of
the built model).
"""
import contextlib
import ctypes
import ctypes.util
import gc
import io
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from dpl.bench.models import EVAL_ONLY_TRAINERS, bench_cfg, build_bench_trainer

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK_RSS = "5"  # clear_refs command that resets VmHWM to the current RSS (Linux >= 4.0)
MIB = 2 ** 20
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 1 << 20


@dataclass(frozen=True)
class Task:
    """What one measurement runs (picklable, so it can be sent to a spawned process)."""

    trainer: str
    backbone_name: str  # MODEL.BACKBONE.NAME
    weights_path: str  # MODEL.BACKBONE.PATH ("" for a named backbone)
    resolution: int
    device: str
    output_dir: str
    num_classes: int
    batch_size: int
    steps: int  # timed training steps (0: no training)
    warmup: int  # untimed training steps before them
    eval_batch_size: int
    eval_batches: int  # 0: no evaluation
    eval_per_batch_text: bool = False  # also time evaluation that re-encodes the class prompts every batch
    text_chunk_size: int = 0
    text_checkpoint: bool = False
    count_flops: bool = True  # one extra, untimed step under torch's FLOP counter
    threads: int = 0  # torch intra-op threads (0: torch's default)
    seed: int = 0
    verbose: bool = False


# ----- memory -----------------------------------------------------------------------------------
def _status_kib(field):
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} is not in {PROC_STATUS}")


def cpu_peak_memory_supported():
    return PROC_STATUS.exists() and PROC_CLEAR_REFS.exists()


def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def fix_mmap_threshold():
    """Serve every allocation >= 1 MiB by its own mmap, returned to the OS on free (glibc only).

    glibc otherwise raises its mmap threshold after large frees and keeps later tensors in the heap,
    whose freed pages stay resident: the peak RSS would then count memory that is no longer live.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def _release_free_memory():
    """Collect garbage and hand freed heap pages back to the OS, so the RSS baseline is the live memory."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class PeakMemory:
    """Peak memory above a baseline taken at ``start()``: CUDA max allocated, or CPU peak RSS (VmHWM)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.baseline = None

    @property
    def kind(self):
        return "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss"

    def start(self):
        _release_free_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        elif cpu_peak_memory_supported():
            PROC_CLEAR_REFS.write_text(RESET_PEAK_RSS)
            self.baseline = _status_kib("VmRSS") * 1024
        return self

    def read(self):
        """(peak above the baseline, absolute peak) in MiB; (None, None) where it cannot be measured."""
        if self.baseline is None:
            return None, None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _status_kib("VmHWM") * 1024
        return (peak - self.baseline) / MIB, peak / MIB


# ----- timing -----------------------------------------------------------------------------------
def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device, fn):
    """(wall seconds, process CPU seconds, result) of ``fn()``.

    CPU seconds (all threads) stay comparable between trainers when other processes share the cores.
    """
    _synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    _synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def synthetic_batch(batch_size, num_classes, resolution, device, generator):
    """Random images ``[B, 3, R, R]`` and labels ``[B]`` on ``device``."""
    images = torch.randn(batch_size, 3, resolution, resolution, generator=generator)
    labels = torch.randint(num_classes, (batch_size,), generator=generator)
    return images.to(device), labels.to(device)


def synthetic_training_batch(cfg, batch_size, num_classes, resolution, device, generator):
    """A training batch as the data loader yields it: ``img``, ``label``, and under ``INPUT.TEACHER_VIEW clean``
    the teacher's view ``img_teacher`` and the items' dataset ``index`` (items ``0 .. B-1``, the same every step:
    the steady state of a teacher-feature cache, from the second epoch on)."""
    images, labels = synthetic_batch(batch_size, num_classes, resolution, device, generator)
    batch = {"img": images, "label": labels}
    if cfg.INPUT.TEACHER_VIEW == "clean":
        batch["img_teacher"] = torch.randn(batch_size, 3, resolution, resolution, generator=generator)
        batch["index"] = torch.arange(batch_size)
    return batch


def training_step_seconds(trainer, batch, steps, warmup):
    """(wall, CPU) seconds of each timed ``forward_backward`` (forward, backward, optimizer step) after
    ``warmup`` untimed steps."""
    trainer.set_model_mode("train")
    wall, cpu = [], []
    for index in range(warmup + steps):
        elapsed, cpu_elapsed, _ = _timed(trainer.device, lambda: _train_step(trainer, batch))
        if index >= warmup:
            wall.append(elapsed)
            cpu.append(cpu_elapsed)
    return wall, cpu


def _train_step(trainer, batch):
    return trainer.forward_backward(batch)


def training_step_flops(trainer, batch):
    """FLOPs of one ``forward_backward`` as counted by ``torch.utils.flop_counter`` (matmuls, convolutions,
    attention): a load-independent measure of the compute a trainer adds."""
    from torch.utils.flop_counter import FlopCounterMode

    trainer.set_model_mode("train")
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        _train_step(trainer, batch)
    return counter.get_total_flops()


@torch.no_grad()
def evaluation_seconds(trainer, batches, per_batch_text=False):
    """(total, class-prompt encoding) seconds to classify ``batches`` as ``ClipPromptTrainer.test`` does:
    the class prompts encoded once, then ``model(images, text_features)`` per batch. ``per_batch_text``
    re-encodes them for every batch (``model(images)``, the upstream Dassl/CoOp evaluation); the
    encoding is then inside the total and reported as None."""
    model = trainer.model
    trainer.set_model_mode("eval")
    with trainer.autocast():
        text_seconds, text_features = None, None
        if not per_batch_text:
            text_seconds, _, text_features = _timed(trainer.device, model.encode_text)
        images_seconds, _, _ = _timed(trainer.device, lambda: [model(x, text_features=text_features) for x in batches])
    return images_seconds + (text_seconds or 0.0), text_seconds


# torch's FLOP counter knows the CUDA attention kernels but not the CPU one that scaled_dot_product_attention
# (and so every CLIP block) runs on: counted like the others, attention is in every trainer's CPU count.
def _cpu_attention_forward_flops(query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out, query, key, value)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_forward_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


# ----- one measurement --------------------------------------------------------------------------
def measure(task):
    """Run ``task`` in this process; a dict of its settings and results (seconds, MiB, images/s)."""
    threads = torch.get_num_threads()
    if task.threads:
        torch.set_num_threads(task.threads)
    try:
        return dict(_measure(task), threads=torch.get_num_threads())
    finally:
        torch.set_num_threads(threads)


def _measure(task):
    torch.manual_seed(task.seed)
    cfg = bench_cfg(task.trainer, task.backbone_name, task.weights_path, task.resolution, task.device,
                    task.output_dir, task.text_chunk_size, task.text_checkpoint)
    log = io.StringIO()
    with contextlib.nullcontext() if task.verbose else contextlib.redirect_stdout(log):
        trainer = build_bench_trainer(cfg, task.num_classes, task.batch_size)
    device = trainer.device
    generator = torch.Generator().manual_seed(task.seed)
    result = dict(asdict(task), device=str(device), precision=trainer.precision,
                  learnable_parameters=sum(p.numel() for p in trainer.model.learnable_parameters()))
    if task.steps > 0 and task.trainer not in EVAL_ONLY_TRAINERS:
        batch = synthetic_training_batch(cfg, task.batch_size, task.num_classes, task.resolution, device, generator)
        memory = PeakMemory(device).start()
        wall, cpu = training_step_seconds(trainer, batch, task.steps, task.warmup)
        peak, peak_total = memory.read()
        result.update(step_seconds=wall, step_seconds_median=statistics.median(wall), step_cpu_seconds=cpu,
                      step_cpu_seconds_median=statistics.median(cpu), peak_memory_mib=peak,
                      peak_memory_total_mib=peak_total, memory_kind=memory.kind)
        if task.count_flops:
            result.update(step_gflop=training_step_flops(trainer, batch) / 1e9)
        del batch
    if task.eval_batches > 0:
        batches = [synthetic_batch(task.eval_batch_size, task.num_classes, task.resolution, device, generator)[0]
                   for _ in range(task.eval_batches)]
        images = task.eval_batch_size * task.eval_batches
        seconds, text_seconds = evaluation_seconds(trainer, batches)
        result.update(eval_seconds=seconds, eval_text_seconds=text_seconds, eval_images_per_second=images / seconds)
        if task.eval_per_batch_text:
            seconds, _ = evaluation_seconds(trainer, batches, per_batch_text=True)
            result.update(eval_per_batch_text_seconds=seconds,
                          eval_per_batch_text_images_per_second=images / seconds)
    return result


def measure_isolated(task):
    """``measure(task)`` in a freshly spawned Python process (its own peak RSS and CUDA context)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=fix_mmap_threshold) as pool:
        return pool.submit(measure, task).result()
