"""One run on several processes (``torchrun``, gloo on the CPU): the same experiment as on one process.

The unit tests check the pieces (sharded sampling, sharded evaluation, the environment). The end-to-end
tests run the protocol scripts as a user does, with ``NPROC=2`` (two real torchrun processes):

- CoOp on two processes ends with the learnable weights of one process with the same global batch (to
  1e-5; the random augmentation is the same too, seeded by each sample's global position) and the same
  accuracy, with one log and one ``results.json``;
- a two-process run stopped by SIGTERM (given to the script, as a scheduler does) stops at one step on
  both processes, refuses to continue on one process, and continues on two to the weights of the
  uninterrupted two-process run;
- a process that fails takes the run down instead of leaving the other waiting;
- DropoutPrompt (random token dropout: each process draws its own noise) trains and evaluates.
"""
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from datagen import make_dataset
from dpl.data.data_manager import check_global_batch, check_training_batches
from dpl.data.samplers import EpochSampler, ShardSampler
from dpl.engine.distributed import DistributedSetupError, World, process_seed, world_from_environment
from dpl.evaluation.evaluator import Classification
from dpl.protocols.methods import ProtocolError
from dpl.protocols.torchrun import processes_requested, torchrun_command
from helpers import SCRIPTS, run_script, script_env, start_until_paused, tiny_config

FAULTS = Path(__file__).resolve().parent / "fault_injection"
RUN = "base2new/train_base/dtd/shots_16/CoOp/vit_b16_ctxv1/seed1"
EPOCHS = 2


# ----- the pieces --------------------------------------------------------------------------------------

def shard_order(sampler_of_rank, world_size, epoch_seed=7, start=0):
    """Each rank's ``(index, seed)`` list for one epoch."""
    shards = []
    for rank in range(world_size):
        sampler = sampler_of_rank(rank)
        sampler.set_epoch(epoch_seed, start)
        shards.append([(int(i), i.seed) for i in sampler])
    return shards


def test_each_process_takes_its_contiguous_share_of_every_global_batch_with_the_seeds_of_one_process():
    order = list(range(100, 123))  # 23 items: 5 global batches of 4, 3 items dropped as drop_last would
    single = [(int(i), i.seed) for i in _started(EpochSampler(order), 7, 0)]
    shards = shard_order(lambda rank: EpochSampler(order, rank=rank, world_size=2, batch_size=2), 2)
    for batch in range(5):
        rebuilt = shards[0][2 * batch:2 * batch + 2] + shards[1][2 * batch:2 * batch + 2]
        assert rebuilt == single[4 * batch:4 * batch + 4]
    assert [len(s) for s in shards] == [10, 10]
    assert len(EpochSampler(order, rank=1, world_size=2, batch_size=2)) == 10
    # resuming after 3 global batches: the start counts global positions
    resumed = shard_order(lambda rank: EpochSampler(order, rank=rank, world_size=2, batch_size=2), 2, start=12)
    assert resumed == [shards[0][6:], shards[1][6:]]


def _started(sampler, epoch_seed, start):
    sampler.set_epoch(epoch_seed, start)
    return sampler


def test_evaluation_shards_are_contiguous_and_cover_the_split_once():
    for length in (0, 1, 7, 360):
        shards = [list(ShardSampler(length, rank, 3)) for rank in range(3)]
        assert sum(shards, []) == list(range(length))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


class GatheringWorld(World):
    """A World whose ``all_gather_objects`` returns what other ranks would have sent."""

    def __init__(self, others, rank=0):
        super().__init__(rank=rank, size=len(others) + 1, backend="gloo")
        object.__setattr__(self, "others", others)

    def all_gather_objects(self, obj):
        parts = list(self.others)
        parts.insert(self.rank, obj)
        return parts


def test_gathered_predictions_count_every_image_once_in_the_split_order():
    from dpl.config import get_cfg_default

    cfg = get_cfg_default()
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0, 2, 2, 1]), 3).float()
    whole = Classification(cfg)
    whole.process(logits, labels)
    expected = whole.evaluate(per_class=True)

    first = Classification(cfg)  # rank 0 evaluated images 0-3, rank 1 images 4-6
    first.process(logits[:4], labels[:4])
    other = (labels[4:].numpy(), logits[4:].argmax(1).numpy())
    first.gather(GatheringWorld([other], rank=0))
    assert (first.num_samples, first.num_correct) == (7, whole.num_correct)
    assert first.evaluate(per_class=True) == expected
    assert np.array_equal(np.concatenate(first._y_true), labels.numpy())


def test_a_global_batch_must_divide_among_the_processes_and_fit_the_training_set():
    check_global_batch(8, 2)
    with pytest.raises(ValueError, match=r"DATALOADER.TRAIN_X.BATCH_SIZE 5 is the global batch and does not "
                                         r"divide among 2 processes: use a multiple of 2"):
        check_global_batch(5, 2)
    images = list(range(6))
    loader = torch.utils.data.DataLoader(images, batch_size=4,
                                         sampler=EpochSampler(images, rank=0, world_size=2, batch_size=4))
    with pytest.raises(ValueError, match=r"the training set has 6 images, fewer than one global batch "
                                         r"\(DATALOADER.TRAIN_X.BATCH_SIZE 8\)"):
        check_training_batches(loader, 2)


@pytest.mark.parametrize("argv, message", [
    (["--seed", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "6"],
     "DATALOADER.TRAIN_X.BATCH_SIZE 6 is the global batch and does not divide among 4 processes: use a multiple "
     "of 4, or another number of processes"),
    (["DATALOADER.TRAIN_X.BATCH_SIZE", "8"],
     "a run on 4 processes needs a fixed seed (--seed N or SEED N): each process draws the few-shot sample and "
     "the data order from it"),
])
def test_train_py_refuses_what_several_processes_cannot_run_before_anything_is_written(tmp_path, monkeypatch, capsys,
                                                                                      argv, message):
    import dpl.tools.train

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    code = dpl.tools.train.cli(["--output-dir", str(tmp_path / "out"), "--trainer", "CoOp", *argv])
    assert (code, capsys.readouterr().err) == (2, f"Config error: {message}\n")
    assert not (tmp_path / "out").exists()


def test_torchrun_variables_describe_the_world():
    assert world_from_environment({}) == World() == world_from_environment({"WORLD_SIZE": "1"})
    world = world_from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank, world.is_main, world.distributed) == (1, 2, 1, False, True)
    with pytest.raises(DistributedSetupError, match="WORLD_SIZE is set but RANK is not"):
        world_from_environment({"WORLD_SIZE": "2"})
    with pytest.raises(DistributedSetupError, match="RANK=2 and WORLD_SIZE=2 describe no process group"):
        world_from_environment({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert len({process_seed(1, rank) for rank in range(4)}) == 4 and process_seed(1, 0) < 2**32


def test_nproc_gives_the_processes_of_each_run():
    assert processes_requested({}) == 1 and processes_requested({"NPROC": "4"}) == 4
    for bad in ("0", "two", "-1"):
        with pytest.raises(ProtocolError, match=f"NPROC={bad}: give the number of processes per run"):
            processes_requested({"NPROC": bad})
    command = torchrun_command(2, ["--seed", "1"])
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "--shutdown-timeout=300", "--module", "dpl.tools.train", "--seed", "1"]


def test_a_world_of_one_process_needs_no_process_group():
    world = World()
    assert world.all_gather_objects(3) == [3] and world.broadcast_object(4) == 4 and world.max_int(5) == 5
    assert world.mean_of({"loss": 1.5, "name": "x"}) == {"loss": 1.5, "name": "x"}
    assert world.average_gradients([torch.zeros(2, requires_grad=True)]) == []


# ----- two processes, end to end -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_clip_path):
    root = tmp_path_factory.mktemp("distributed")
    make_dataset(root / "data", "dtd", n_classes=4, per_class=16)  # 2 base classes x 8 training images
    config = tiny_config(root / "configs", "CoOp", "vit_b16_ctxv1", tiny_clip_path, epochs=EPOCHS, batch_size=4)
    return root, config


def env_for(setup, output, processes=1, **extra):
    root, config = setup
    env = script_env(root / "data", output, CFG=config, PYTHONPATH=FAULTS, **extra)
    if processes > 1:
        env["NPROC"] = str(processes)
    return env


def train(setup, output, processes=1, **extra):
    return run_script("coop/base2new_train.sh", "dtd", 1, env=env_for(setup, output, processes, **extra))


def final(output):
    run_dir = output / RUN
    weights = torch.load(run_dir / "prompt_learner" / f"model.pth.tar-{EPOCHS}", weights_only=True)["state_dict"]
    return weights, json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def one_process(setup, tmp_path_factory):
    output = tmp_path_factory.mktemp("one")
    proc = train(setup, output)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return final(output)


@pytest.fixture(scope="module")
def two_processes(setup, tmp_path_factory):
    output = tmp_path_factory.mktemp("two")
    proc = train(setup, output, processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return output, proc


@pytest.mark.slow
def test_two_processes_train_the_weights_and_accuracy_of_one_with_the_same_global_batch(one_process, two_processes):
    output, proc = two_processes
    assert "Running on 2 processes: torchrun --nproc_per_node 2" in proc.stdout
    weights, results = final(output)
    expected_weights, expected = one_process
    assert weights.keys() == expected_weights.keys()
    for name in weights:
        torch.testing.assert_close(weights[name], expected_weights[name], rtol=0, atol=1e-5)
    assert results["accuracy"] == expected["accuracy"] and results["macro_f1"] == expected["macro_f1"]
    assert results["num_samples"] == expected["num_samples"]  # every test image once
    assert (results["environment"]["processes"], expected["environment"]["processes"]) == (2, 1)
    # one log, rank 0's: every line once, with the processes named
    log = (output / RUN / "log.txt").read_text()
    assert log.count("Processes: 2 (torchrun), gloo") == 1
    assert log.count("Checkpoint saved to") == EPOCHS
    assert sorted(p.name for p in (output / RUN).iterdir() if p.suffix == ".json") == ["results.json"]
    assert log.count(f"epoch [{EPOCHS}/{EPOCHS}] batch [4/4]") == 1  # 16 images / global batch 4


@pytest.mark.slow
def test_a_stopped_two_process_run_continues_on_two_processes_only_and_ends_where_an_uninterrupted_one_does(
        setup, two_processes, tmp_path):
    output = tmp_path / "out"
    paused = tmp_path / "paused"
    # rank 0 waits after step 3 of epoch 2 while rank 1 goes on to the next step boundary; then SIGTERM
    # reaches the script, which hands it to torchrun, which hands it to both processes
    env = env_for(setup, output, 2, DPL_TEST_PAUSE=f"2:3:{paused}", DPL_TEST_RANK="0")
    proc = start_until_paused(["bash", str(SCRIPTS / "coop/base2new_train.sh"), "dtd", "1"], env, paused)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    last = output / RUN / "prompt_learner" / "model-last.pth.tar"
    assert f"Interrupted by SIGTERM: its last checkpoint {last} is kept" in err
    assert err.count("Interrupted by SIGTERM") == 1  # rank 0's line; rank 1 stopped at the same step
    checkpoint = torch.load(last, weights_only=True)
    assert (checkpoint["epoch"], checkpoint["batch"]) == (1, 3)
    assert checkpoint["trainer_state"]["world_size"] == 2 and len(checkpoint["trainer_state"]["rng_per_process"]) == 2

    proc = train(setup, output)  # one process cannot continue the random streams of two
    assert proc.returncode == 1
    assert (f"Error: {last} was written by a run on 2 processes, this run has 1: continue it with torchrun "
            "--nproc_per_node 2 train.py ... (NPROC=2 for the scripts)") in proc.stderr

    proc = train(setup, output, processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming in epoch 2 after its first 3 batches" in (output / RUN / "log.txt").read_text()
    weights, results = final(output)
    expected_weights, expected = final(two_processes[0])
    for name in weights:
        assert torch.equal(weights[name], expected_weights[name]), name
    assert results["accuracy"] == expected["accuracy"]


@pytest.mark.slow
def test_a_failing_process_takes_the_run_down_instead_of_leaving_the_other_waiting(setup, tmp_path):
    output = tmp_path / "out"
    env = env_for(setup, output, 2, DPL_TEST_FAIL="1:2", DPL_TEST_RANK="1")
    start = time.time()
    proc = subprocess.run(["bash", str(SCRIPTS / "coop/base2new_train.sh"), "dtd", "1"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "RuntimeError: injected failure after step 1:2" in proc.stderr  # rank 1's own error
    assert "Error: another process of this run stopped, so this one stops too" in proc.stderr  # rank 0's
    assert time.time() - start < 120  # not a collective's timeout (30 minutes)
    assert not (output / RUN / ".run.lock").exists()


@pytest.mark.slow
def test_dropout_prompt_trains_and_evaluates_on_two_processes(setup, tiny_clip_path, tmp_path):
    root, _ = setup
    config = tiny_config(root / "dpl-configs", "DropoutPrompt", "vit_b16_c2_ep20_batch4_4+4ctx", tiny_clip_path,
                         epochs=1, batch_size=4)
    output = tmp_path / "out"
    env = script_env(root / "data", output, CFG=config, NPROC="2")
    proc = run_script("dpl/base2new_train.sh", "dtd", 1, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = output / "base2new/train_base/dtd/shots_16/DropoutPrompt/vit_b16_c2_ep20_batch4_4+4ctx/seed1"
    results = json.loads((run / "results.json").read_text())
    assert 0 <= results["accuracy"] <= 100
    log = (run / "log.txt").read_text()
    assert "Data parallel: 2 processes (gloo)" in log and "loss_re" in log
    proc = run_script("dpl/base2new_test.sh", "dtd", 1, env=env)  # the evaluation is sharded too
    assert proc.returncode == 0, proc.stderr[-3000:]
    tested = output / "base2new/test_new/dtd/shots_16/DropoutPrompt/vit_b16_c2_ep20_batch4_4+4ctx/seed1"
    split = json.loads((root / "data/dtd/split_zhou_DescribableTextures.json").read_text())
    new_class_images = sum(1 for _, label, _ in split["test"] if label >= 2)  # classes 2 and 3 of 4 are new
    assert json.loads((tested / "results.json").read_text())["num_samples"] == new_class_images
