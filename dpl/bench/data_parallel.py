"""``python -m dpl.bench --data-parallel N``: training samples/s of each trainer on 1 and on N processes.

The same global batch either way: one process runs ``forward_backward`` on all of it, N processes (a gloo
process group on the CPU, NCCL on GPUs, one GPU each) each run it on their ``1/N`` with the learnable
tensors' gradients averaged in the backward pass, exactly as ``torchrun train.py`` trains
(``dpl.engine.distributed``). Throughput is the global batch times the timed steps over the slowest
process's wall time for them, measured after a barrier; the speed-up is its ratio to the one-process
number of the same command. On the CPU, each process gets ``--threads`` intra-op threads (1 unless set),
so N processes use N times the cores of one: the row says how many cores each configuration used.
"""
import contextlib
import datetime
import io
import multiprocessing
import os
import socket
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dpl.bench.measure import Task, synthetic_training_batch, training_step_seconds
from dpl.bench.models import EVAL_ONLY_TRAINERS, bench_cfg, build_bench_trainer


@dataclass(frozen=True)
class ParallelTask:
    task: Task  # batch_size: the global batch
    processes: int
    port: int = 0


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_rank(rank, parallel, results):
    """One process of a measurement: join the group, build the trainer, time its share of the steps."""
    task, processes = parallel.task, parallel.processes
    os.environ["LOCAL_RANK"] = str(rank)  # this spawned process's own environment, as torchrun sets it
    torch.set_num_threads(task.threads or 1)
    cuda = torch.device(task.device).type == "cuda"
    if processes > 1:
        if cuda:
            torch.cuda.set_device(rank)
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{parallel.port}",
                                rank=rank, world_size=processes, timeout=datetime.timedelta(minutes=10))
    try:
        results[rank] = _time_steps(task, processes, rank)
    finally:
        if processes > 1:
            dist.destroy_process_group()


def _time_steps(task, processes, rank):
    torch.manual_seed(task.seed)  # the same model on every process
    device = f"cuda:{rank}" if torch.device(task.device).type == "cuda" else task.device
    cfg = bench_cfg(task.trainer, task.backbone_name, task.weights_path, task.resolution, device,
                    task.output_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = build_bench_trainer(cfg, task.num_classes, task.batch_size)
    hooks = trainer.world.average_gradients(trainer.optimized_parameters())
    generator = torch.Generator().manual_seed(task.seed + rank)
    batch = synthetic_training_batch(cfg, task.batch_size // processes, task.num_classes, task.resolution,
                                     trainer.device, generator)
    training_step_seconds(trainer, batch, 0, task.warmup)
    trainer.world.barrier()
    start = time.perf_counter()
    training_step_seconds(trainer, batch, task.steps, 0)
    trainer.world.barrier()  # the slowest process ends the timed steps
    seconds = time.perf_counter() - start
    for hook in hooks:
        hook.remove()
    return seconds


def measure_processes(task, processes):
    """Seconds of ``task.steps`` steps of ``task.batch_size`` images on ``processes`` spawned processes."""
    context = multiprocessing.get_context("spawn")
    parallel = ParallelTask(task, processes, free_port())
    with context.Manager() as manager:
        results = manager.dict()
        workers = [context.Process(target=_run_rank, args=(rank, parallel, results)) for rank in range(processes)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        failed = [w.exitcode for w in workers if w.exitcode != 0]
        if failed:
            raise RuntimeError(f"a benchmark process of {task.trainer} failed (exit codes {failed}); "
                               "run with --verbose for its build log")
        return results[0]


def data_parallel_rows(task_of, trainers, processes):
    """One row per trainer: samples/s on 1 and on ``processes`` processes, and the speed-up."""
    rows = []
    for trainer in trainers:
        if trainer in EVAL_ONLY_TRAINERS:  # nothing to train
            continue
        task = task_of(trainer)
        samples = task.batch_size * task.steps
        one = samples / measure_processes(task, 1)
        many = samples / measure_processes(task, processes)
        rows.append({"trainer": trainer, "global_batch": task.batch_size, "steps": task.steps,
                     "processes": processes, "samples_per_second_1": one, "samples_per_second_n": many,
                     "speedup": many / one})
    return rows


def data_parallel_text(rows, meta):
    """The data-parallel table, with the command, date and load it was measured under."""
    from tabulate import tabulate

    n = rows[0]["processes"] if rows else "N"
    table = [[r["trainer"], r["global_batch"], f"{r['samples_per_second_1']:.2f}", f"{r['samples_per_second_n']:.2f}",
              f"{r['speedup']:.2f}x"] for r in rows]
    headers = ["trainer", "global batch", "samples/s, 1 process", f"samples/s, {n} processes", "speed-up"]
    threads = meta["threads_per_process"]
    lines = [f"{meta['command']}  ({meta['date']}, {meta['device']}, {meta['arch']}, {meta['host']})",
             f"threads per process: {threads}; load average {meta['load_average_start']} -> "
             f"{meta['load_average_end']} on {meta['cpu_count']} cores",
             tabulate(table, headers=headers, disable_numparse=True)]
    return "\n".join(lines)
