"""One run on several processes: data parallelism for runs started by ``torchrun``.

``torchrun --nproc_per_node N train.py ...`` starts N copies of ``train.py`` with ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` set; ``train.py`` joins them into one process group (NCCL on GPUs, gloo on CPUs) and
every part of the engine asks the run's ``World`` what it shares:

- **Batches.** ``DATALOADER.TRAIN_X.BATCH_SIZE`` stays the global batch: each process takes its
  contiguous ``1/N`` of every global batch of the single-process order (``dpl.data.samplers.EpochSampler``),
  with the augmentation seed of each sample's global position, so a config is the same experiment on any
  number of processes and an exact resume stays exact.
- **Gradients.** Only learnable tensors (the optimizers' parameters) are averaged, each as soon as its
  gradient is accumulated in the backward pass (``average_gradients``); frozen CLIP has no gradient. Every
  optimizer step therefore sees the same gradient on every process, and the learnable tensors, the
  optimizer and schedules, and method state computed from them (PromptSRC's prompt aggregation,
  DropoutPrompt's lambda) stay identical. Averaging per-process mean losses equals the single-process mean
  over the global batch for losses that are means over samples (cross-entropy, PromptSRC's L1 and KL);
  a loss computed over a batch as a whole (DropoutPrompt's MAG alignment over the classes of a batch) is
  computed on each process's share.
- **Randomness.** A run on several processes needs a fixed ``SEED`` (``train.py`` refuses ``--seed -1``):
  every process draws the same few-shot sample, data order and initial weights from it (the learnable
  tensors are also broadcast from rank 0 at the start). Then each process draws from its own stream
  (``process_seed(seed, rank)``): DropoutPrompt's token-dropout noise differs per process, for its own
  samples. Checkpoints hold every process's random states, so a run resumes exactly, and only on the same
  number of processes.
- **Evaluation.** Each process evaluates a contiguous shard of the split; the predictions are gathered so
  that the metrics count every image exactly once, on every process.
- **Files.** Rank 0 alone writes the log, checkpoints, ``results.json`` and TensorBoard; it builds the data
  first (the few-shot split cache is written once) while the others wait, then they read it.
- **Stopping.** A stop signal (SIGINT, SIGTERM, SIGUSR2) is agreed at every step boundary (the largest
  signal number any process received), so all processes stop at the same step with one checkpoint.
- **Failures.** A process that fails exits; its peers' next collective fails (gloo: the connection is
  closed; ``PeerFailedError``, one line) or ``torchrun`` stops them (SIGTERM to the others when one fails,
  then SIGKILL after its shutdown timeout).
"""
import contextlib
import dataclasses
import datetime
import hashlib
import os

import torch
import torch.distributed as dist

from .errors import UserError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
PEER_GONE_WORDS = ("gloo", "NCCL", "Connection closed", "Connection reset")
# How long a collective waits for the slowest process: rank 0 may build a first few-shot split of ImageNet
# while the others wait at a barrier (torch's defaults: 10 minutes for NCCL, 30 for gloo). A process that
# fails is noticed long before: gloo's connection closes, and torchrun stops the others.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=1)


class DistributedSetupError(UserError):
    """The environment describes a process group this run cannot join."""


class PeerFailedError(UserError):
    """A collective failed: another process of the run has stopped (its own error says why)."""


def _peer_gone(exc):
    """Whether ``exc`` says a peer of a collective is gone: NCCL raises ``DistError``s, gloo a plain
    ``RuntimeError`` naming gloo or the closed connection. Other errors (a bug) keep their traceback."""
    return isinstance(exc, dist.DistError) or any(word in str(exc) for word in PEER_GONE_WORDS)


@contextlib.contextmanager
def collective():
    """Turn the error of a collective whose peer is gone (gloo: connection closed; NCCL: a backend error or
    timeout) into one line; the failing process prints its own error."""
    try:
        yield
    except RuntimeError as exc:
        if not _peer_gone(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PeerFailedError(f"another process of this run stopped, so this one stops too (the other's own "
                              f"error says why; here: {first[:160]}); run the same command again to continue "
                              "from the last checkpoint") from exc


def process_seed(seed, rank):
    """A 32-bit seed (what NumPy takes) for process ``rank``'s random streams, from the run's seed alone."""
    digest = hashlib.sha256(f"dpl-process:{seed}:{rank}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclasses.dataclass(frozen=True)
class World:
    """The processes of one run: this one's ``rank`` among ``size``. ``World()`` is a single process,
    for which every collective is the identity (no process group is needed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def distributed(self):
        return self.size > 1

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def device(self):
        """Where collectives' tensors live: NCCL needs this process's GPU."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    # ----- collectives (no-ops on one process) ---------------------------------------------------------
    def barrier(self):
        if self.distributed:
            with collective():
                dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (writing what the others then read); the others wait, then run it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def all_gather_objects(self, obj):
        """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
        if not self.distributed:
            return [obj]
        gathered = [None] * self.size
        with collective():
            dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        with collective():
            dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    @torch.no_grad()
    def broadcast_(self, tensors):
        """Overwrite ``tensors`` with rank 0's values, in place."""
        if not self.distributed:
            return
        for tensor in tensors:
            buffer = tensor.detach().to(self.device)
            with collective():
                dist.broadcast(buffer, src=0)
            tensor.copy_(buffer)

    def max_int(self, value):
        """The largest ``value`` over the processes."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        with collective():
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def mean_of(self, values):
        """``values`` (a dict) with its numbers averaged over the processes (other values are kept)."""
        if not self.distributed:
            return values
        keys = [k for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        with collective():
            dist.all_reduce(tensor)
        means = (tensor / self.size).tolist()
        return {**values, **dict(zip(keys, means))}

    def average_gradients(self, params):
        """Average each of ``params``' gradients over the processes as soon as the backward pass has
        accumulated it; returns the hook handles (``handle.remove()`` ends it).

        Every process must run the same backward graph (the same learnable tensors receive a gradient),
        as DistributedDataParallel requires too.
        """
        if not self.distributed:
            return []
        device, size = self.device, self.size

        def average(param):
            grad = param.grad
            buffer = grad if grad.device == device else grad.to(device)
            with collective():
                dist.all_reduce(buffer)
            buffer.div_(size)
            if buffer is not grad:
                grad.copy_(buffer)

        return [p.register_post_accumulate_grad_hook(average) for p in params]


SINGLE_PROCESS = World()


def world_from_environment(environ=None):
    """The ``World`` that ``torchrun``'s variables describe (``World()`` without them)."""
    environ = os.environ if environ is None else environ
    if environ.get("WORLD_SIZE", "1").strip() in ("", "0", "1"):  # some clusters export WORLD_SIZE=1 alone
        return SINGLE_PROCESS
    try:
        values = {name: int(environ[name]) for name in TORCHRUN_VARIABLES}
    except KeyError as exc:
        raise DistributedSetupError(f"WORLD_SIZE is set but {exc.args[0]} is not: start the run with torchrun "
                                    "(or set RANK, WORLD_SIZE and LOCAL_RANK together)") from None
    except ValueError as exc:
        raise DistributedSetupError(f"torchrun's variables must be integers: {exc}") from None
    rank, size, local_rank = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if size < 1 or not 0 <= rank < size:
        raise DistributedSetupError(f"RANK={rank} and WORLD_SIZE={size} describe no process group")
    return World(rank=rank, size=size, local_rank=local_rank)


def current_world():
    """The ``World`` of the process group this process joined (``World()`` when it joined none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE_PROCESS
    return World(rank=dist.get_rank(), size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", 0)), backend=dist.get_backend())


@contextlib.contextmanager
def process_group(world, use_cuda):
    """Join ``world``'s process group for the block (NCCL when CUDA is used, else gloo); yields the joined
    ``World`` (``world`` itself for a single process, which joins nothing)."""
    if not world.distributed:
        yield world
        return
    nccl = use_cuda and torch.cuda.is_available()
    if nccl:
        if world.local_rank >= torch.cuda.device_count():
            raise DistributedSetupError(f"LOCAL_RANK {world.local_rank} but only {torch.cuda.device_count()} GPUs "
                                        "are visible: start at most that many processes per node")
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if nccl else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield current_world()
    finally:
        dist.destroy_process_group()
