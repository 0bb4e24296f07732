"""The image feature cache (dpl.evaluation.feature_cache): an evaluation of a model with frozen image features
reads them from disk instead of decoding and encoding the images, with exactly the numbers of the plain path."""
import dataclasses
import os
import threading

import pytest
import torch

import dpl.data.data_manager as data_manager
from dpl.data.data_manager import build_data_loader
from dpl.engine.distributed import World
from dpl.evaluation import feature_cache
from dpl.evaluation.feature_cache import CacheEntry, feature_description, feature_key, image_entries
from dpl.tools.feature_cache import main as cache_main
from helpers import build_trainer_in_process

CONFIGS = {
    "ZeroshotCLIP": "ZeroshotCLIP/vit_b16.yaml",
    "CoOp": "CoOp/vit_b16_ep50_ctxv1.yaml",
    "KgCoOp": "KgCoOp/vit_b16_ep100_ctxv1.yaml",
    "CoCoOp": "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
}
# Long-tail runs add the many/medium/few group accuracies (the evaluator's, from the same predictions).
METRICS = ("accuracy", "error_rate", "macro_f1", "perclass_accuracy", "per_class", "group_accuracy",
           "num_samples", "num_correct")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "feature_cache"
    monkeypatch.setenv(feature_cache.CACHE_ENV, str(folder))
    return folder


def build(tmp_path, weights, trainer, *opts):
    return build_trainer_in_process(tmp_path, weights, trainer, CONFIGS[trainer], "TEST.PER_CLASS_RESULT", "True",
                                    *opts)


def evaluate(trainer):
    """``(test record without timings, predictions [N])`` of one ``test()``."""
    trainer.test()
    record = dict(trainer._test_records["test"])
    predictions = torch.cat([torch.as_tensor(p) for p in trainer.evaluator._y_pred])
    return record, predictions


def metrics(record):
    return {key: record.get(key) for key in METRICS}


def set_cfg(trainer, key, value):
    node, name = trainer.cfg, key.split(".")
    trainer.cfg.defrost()
    for part in name[:-1]:
        node = node[part]
    node[name[-1]] = value
    trainer.cfg.freeze()


def cached_files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----- a hit is the plain path's numbers, without reading an image -----------------------------------------

@pytest.mark.parametrize("trainer_name, opts", [
    ("ZeroshotCLIP", ()), ("CoOp", ("DATASET.IMBALANCE_RATIO", "2")), ("KgCoOp", ()), ("CoCoOp", ()),
])
def test_a_hit_gives_the_plain_numbers_and_reads_no_image(tmp_path, tiny_clip_path, cache_dir, monkeypatch,
                                                          trainer_name, opts):
    trainer = build(tmp_path, tiny_clip_path, trainer_name, *opts)
    assert trainer.model.has_frozen_image_features
    set_cfg(trainer, "TEST.IMAGE_FEATURE_CACHE", False)
    plain, plain_predictions = evaluate(trainer)
    assert plain["feature_cache"] == "off" and cached_files(cache_dir) == []
    set_cfg(trainer, "TEST.IMAGE_FEATURE_CACHE", True)
    miss, miss_predictions = evaluate(trainer)
    assert miss["feature_cache"] == "miss" and len(cached_files(cache_dir)) == 1
    monkeypatch.setattr(data_manager, "read_image", lambda path: pytest.fail(f"an image was read: {path}"))
    hit, hit_predictions = evaluate(trainer)
    assert hit["feature_cache"] == "hit"
    assert metrics(hit) == metrics(miss) == metrics(plain) and plain["num_samples"] == 8
    assert torch.equal(hit_predictions, plain_predictions) and torch.equal(miss_predictions, plain_predictions)
    if opts:
        assert plain["group_accuracy"] is not None


def test_cached_features_give_the_logits_of_forward(tmp_path, tiny_clip_path, cache_dir):
    trainer = build(tmp_path, tiny_clip_path, "CoCoOp")  # its class prompts are conditioned on the features
    images = next(iter(trainer.test_loader))["img"]
    model = trainer.model
    with torch.no_grad():
        torch.testing.assert_close(model.logits_from_image_features(model.encode_image(images)), model(images),
                                   rtol=0, atol=0)


def test_the_results_file_says_where_the_features_came_from(tmp_path, tiny_clip_path, cache_dir):
    from dpl.results.schema import final_test_record, read_results, results_path

    trainer = build(tmp_path, tiny_clip_path, "ZeroshotCLIP")
    trainer.test()
    trainer.test()
    doc = read_results(results_path(trainer.output_dir))
    assert doc["feature_cache"] == "hit" and final_test_record(doc)["feature_cache"] == "hit"


def test_prompted_vision_models_never_use_the_cache(tmp_path, tiny_clip_path, cache_dir):
    from dpl.prompting import CoOpModel

    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "IVLP", "IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml")
    assert not trainer.model.has_frozen_image_features
    trainer.test()
    assert "feature_cache" not in trainer._test_records["test"] and cached_files(cache_dir) == []

    class OwnImageFeatures(CoOpModel):  # inherits the flag, but not frozen CLIP's encode_image
        def encode_image(self, images):
            return super().encode_image(images) * 2

    assert CoOpModel.FROZEN_IMAGE_FEATURES and not CoOpModel.has_frozen_image_features.fget(
        OwnImageFeatures.__new__(OwnImageFeatures))


# ----- what the key holds --------------------------------------------------------------------------------

def _images(folder, count=3):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (folder / f"{index}.jpg").write_bytes(bytes(10 + index))
    return [dataclasses.make_dataclass("D", ["impath"])(str(folder / f"{index}.jpg")) for index in range(count)]


def _transform(size=224, interpolation="bicubic", mean=(0.48145466, 0.4578275, 0.40821073)):
    from dpl.config import get_cfg_default
    from dpl.data.transforms import build_transform

    cfg = get_cfg_default()
    cfg.INPUT.SIZE, cfg.INPUT.INTERPOLATION, cfg.INPUT.PIXEL_MEAN = (size, size), interpolation, mean
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "normalize")
    return feature_cache.describe_transform(build_transform(cfg, is_train=False))


def test_the_key_changes_with_everything_that_determines_the_features(tmp_path):
    datums = _images(tmp_path / "images")
    base = dict(weights_sha256="a" * 64, dataset="DescribableTextures", split="test", images=image_entries(datums),
                transform=_transform(), reader="dpl.data.data_manager.DatasetWrapper", precision="fp32",
                device_type="cpu")
    key = feature_key(feature_description(**base))
    assert key == feature_key(feature_description(**base)) and len(key) == 64  # stable
    assert _transform() == _transform(mean=[0.48145466, 0.4578275, 0.40821073])  # a list or a tuple: the same
    changes = {
        "weights": dict(weights_sha256="b" * 64), "dataset": dict(dataset="EuroSAT"), "split": dict(split="val"),
        "size": dict(transform=_transform(size=256)),
        "interpolation": dict(transform=_transform(interpolation="bilinear")),
        "normalisation": dict(transform=_transform(mean=(0.5, 0.5, 0.5))), "precision": dict(precision="fp16"),
        "device": dict(device_type="cuda"), "order": dict(images=image_entries(datums[::-1])),
        "fewer images": dict(images=image_entries(datums[:2])),
    }
    for what, change in changes.items():
        assert feature_key(feature_description(**dict(base, **change))) != key, what
    stat = os.stat(datums[1].impath)
    os.utime(datums[1].impath, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: same size, new mtime
    assert feature_key(feature_description(**dict(base, images=image_entries(datums)))) != key
    touched = feature_key(feature_description(**dict(base, images=image_entries(datums))))
    with open(datums[2].impath, "ab") as handle:  # rewritten with other content
        handle.write(b"x")
    os.utime(datums[2].impath, ns=(stat.st_atime_ns, os.stat(datums[2].impath).st_mtime_ns))
    assert feature_key(feature_description(**dict(base, images=image_entries(datums)))) not in (key, touched)


def test_a_touched_image_or_other_weights_are_a_miss(tmp_path, tiny_clip_path, cache_dir):
    trainer = build(tmp_path, tiny_clip_path, "ZeroshotCLIP")
    first, predictions = evaluate(trainer)
    image = trainer.test_loader.dataset.data_source[3].impath
    os.utime(image, ns=(os.stat(image).st_atime_ns, os.stat(image).st_mtime_ns + 1000))
    touched, touched_predictions = evaluate(trainer)
    assert (first["feature_cache"], touched["feature_cache"]) == ("miss", "miss")
    assert torch.equal(touched_predictions, predictions) and len(cached_files(cache_dir)) == 2
    other = dataclasses.replace(trainer.weights_info, sha256="0" * 64)
    trainer.weights_info = other
    assert evaluate(trainer)[0]["feature_cache"] == "miss" and len(cached_files(cache_dir)) == 3


# ----- switched off -------------------------------------------------------------------------------------

def test_switched_off_by_the_config_or_the_environment_nothing_is_written(tmp_path, tiny_clip_path, cache_dir,
                                                                          monkeypatch):
    trainer = build(tmp_path, tiny_clip_path, "CoOp", "TEST.IMAGE_FEATURE_CACHE", "False")
    assert evaluate(trainer)[0]["feature_cache"] == "off" and not cache_dir.exists()
    set_cfg(trainer, "TEST.IMAGE_FEATURE_CACHE", True)
    monkeypatch.setenv(feature_cache.CACHE_ENV, "off")
    assert evaluate(trainer)[0]["feature_cache"] == "off" and not cache_dir.exists()


def test_the_folder_defaults_to_the_users_cache():
    assert feature_cache.cache_folder({"DPL_FEATURE_CACHE": " OFF "}) is None
    assert str(feature_cache.cache_folder({"DPL_FEATURE_CACHE": "/c"})) == "/c"
    assert str(feature_cache.cache_folder({"XDG_CACHE_HOME": "/x"})) == "/x/dpl/image_features"
    home = os.path.expanduser("~")
    assert str(feature_cache.cache_folder({})) == os.path.join(home, ".cache", "dpl", "image_features")


def test_the_test_session_never_writes_to_the_users_cache():
    folder = feature_cache.cache_folder()
    assert folder is not None and not str(folder).startswith(os.path.join(os.path.expanduser("~"), ".cache"))


# ----- the file: atomic, the umask's mode, unusable files recomputed -------------------------------------

def _entry(folder, images=4, dataset="DescribableTextures", split="test"):
    description = feature_description("c" * 64, dataset, split, [[f"/i/{n}.jpg", 1, 1] for n in range(images)],
                                      None, "reader", "fp32", "cpu")
    return CacheEntry(folder, description)


def test_a_write_is_atomic_respects_the_umask_and_concurrent_writers_agree(tmp_path):
    entry = _entry(tmp_path / "cache")
    features = torch.randn(4, 8)
    old_umask = os.umask(0o027)
    try:
        threads = [threading.Thread(target=entry.write, args=(features,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        os.umask(old_umask)
    assert os.listdir(tmp_path / "cache") == [entry.path.name]  # no temporary file left
    assert (entry.path.stat().st_mode & 0o777) == 0o640
    assert torch.equal(entry.read(), features)
    meta, _ = feature_cache.read_cache_file(entry.path)
    assert meta["num_images"] == 4 and meta["dim"] == 8 and meta["weights_sha256"] == "c" * 64
    assert {"dataset", "split", "precision", "device_type", "created"} <= set(meta)


@pytest.mark.parametrize("damage", ["truncated", "not torch", "other format", "other shape"])
def test_an_unusable_file_is_one_line_and_read_as_absent(tmp_path, capsys, damage):
    entry = _entry(tmp_path)
    entry.write(torch.randn(4, 8))
    if damage == "truncated":
        entry.path.write_bytes(entry.path.read_bytes()[:100])
    elif damage == "not torch":
        entry.path.write_text("hello")
    elif damage == "other format":
        torch.save({"format": 0, "features": torch.zeros(4, 8), "meta": {}}, entry.path)
    else:
        _entry(tmp_path, images=3).write(torch.randn(3, 8))
        os.replace(_entry(tmp_path, images=3).path, entry.path)
    capsys.readouterr()
    assert entry.read() is None
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"Image feature cache: cannot use {entry.path} (") and line.endswith(
        "); encoding the images again")


def test_a_damaged_file_is_recomputed_and_replaced(tmp_path, tiny_clip_path, cache_dir, capsys):
    trainer = build(tmp_path, tiny_clip_path, "KgCoOp")
    first, predictions = evaluate(trainer)
    (path,) = cache_dir.iterdir()
    path.write_bytes(path.read_bytes()[:200])
    again, again_predictions = evaluate(trainer)
    assert again["feature_cache"] == "miss" and "cannot use" in capsys.readouterr().out
    assert metrics(again) == metrics(first) and torch.equal(again_predictions, predictions)
    assert evaluate(trainer)[0]["feature_cache"] == "hit"


def test_an_unwritable_folder_is_one_line_and_the_evaluation_goes_on(tmp_path, tiny_clip_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(feature_cache.CACHE_ENV, str(blocker / "cache"))
    trainer = build(tmp_path, tiny_clip_path, "ZeroshotCLIP")
    record, _ = evaluate(trainer)
    assert record["feature_cache"] == "miss" and record["num_samples"] == 8
    assert "Image feature cache: Cannot write " in capsys.readouterr().out


def test_rows_are_put_in_split_order_only_when_every_image_has_one():
    rows = torch.arange(10.0).reshape(5, 2)
    shards = [(torch.tensor([3, 4]), rows[3:]), (torch.tensor([0, 1, 2]), rows[:3])]
    assert torch.equal(feature_cache.rows_in_split_order(shards, 5), rows)
    assert feature_cache.rows_in_split_order(shards[:1], 5) is None
    assert feature_cache.rows_in_split_order(shards + [(torch.tensor([0]), rows[:1])], 5) is None


# ----- several processes: each evaluates its shard ---------------------------------------------------------

class _Exchange:
    """``all_gather_objects`` between threads standing for the processes of a run."""

    def __init__(self, size):
        self.barrier = threading.Barrier(size, timeout=120)
        self.slots = [None] * size

    def all_gather(self, rank, obj):
        self.slots[rank] = obj
        self.barrier.wait()
        gathered = list(self.slots)
        self.barrier.wait()
        return gathered


@dataclasses.dataclass(frozen=True)
class _ThreadWorld(World):
    exchange: _Exchange = None

    def all_gather_objects(self, obj):
        return self.exchange.all_gather(self.rank, obj)


def _sharded(trainers):
    """Give each trainer its rank of a 2-process world and its shard of the test set."""
    exchange = _Exchange(len(trainers))
    for rank, trainer in enumerate(trainers):
        trainer.world = _ThreadWorld(rank=rank, size=len(trainers), exchange=exchange)
        trainer.test_loader = build_data_loader(trainer.cfg, data_source=trainer.dm.dataset.test, batch_size=3,
                                                tfm=trainer.dm.tfm_test, is_train=False, world=trainer.world)


def _evaluate_together(trainers):
    results = [None] * len(trainers)

    def run(rank):
        results[rank] = evaluate(trainers[rank])

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(len(trainers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result is not None for result in results)
    return results


def test_two_processes_write_the_split_in_order_and_read_their_shards(tmp_path, tiny_clip_path, cache_dir):
    single = build(tmp_path / "one", tiny_clip_path, "CoOp")
    expected, _ = evaluate(single)
    (single_file,) = cache_dir.iterdir()
    single_features = feature_cache.read_cache_file(single_file)[1]
    single_file.unlink()
    trainers = [build(tmp_path / "one", tiny_clip_path, "CoOp") for _ in range(2)]  # the same images
    _sharded(trainers)
    for outcome in ("miss", "hit"):
        for record, _ in _evaluate_together(trainers):
            assert record["feature_cache"] == outcome and metrics(record) == metrics(expected), outcome
        (written,) = cache_dir.iterdir()
        torch.testing.assert_close(feature_cache.read_cache_file(written)[1], single_features)


def test_a_hit_on_one_process_only_is_a_miss_on_all(tmp_path, tiny_clip_path, cache_dir):
    trainers = [build(tmp_path, tiny_clip_path, "ZeroshotCLIP") for _ in range(2)]
    expected, _ = evaluate(trainers[0])  # writes the file: rank 0 will find it
    _sharded(trainers)
    entry_of = trainers[1].feature_cache_entry
    trainers[1].feature_cache_entry = lambda loader, split: dataclasses.replace(
        entry_of(loader, split), folder=tmp_path / "elsewhere")  # rank 1 does not
    for record, _ in _evaluate_together(trainers):
        assert record["feature_cache"] == "miss" and metrics(record) == metrics(expected)


# ----- python -m dpl.tools.feature_cache -----------------------------------------------------------------

def test_list_and_clear(cache_dir, capsys):
    _entry(cache_dir, dataset="DescribableTextures").write(torch.randn(4, 8))
    _entry(cache_dir, dataset="EuroSAT", split="val", images=2).write(torch.randn(2, 8))
    (cache_dir / ".leftover.pt.123.abcd.tmp").write_text("")  # a writer killed mid-write
    assert cache_main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("2 files, ") and lines[-1].endswith(f" in {cache_dir}")
    assert lines[0].startswith("DescribableTextures  test  4 images  ") and " weights cccccccccccc  " in lines[0]
    assert lines[1].startswith("EuroSAT  val  2 images  ") and lines[1].endswith(".pt")

    assert cache_main(["clear", "--dataset", "Nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("feature_cache: no cached features of dataset 'Nope' in ")
    assert "(cached: DescribableTextures, EuroSAT)" in err
    assert cache_main(["clear", "--dataset", "EuroSAT"]) == 0
    assert capsys.readouterr().out.startswith("removed 1 file (")
    assert cache_main(["clear"]) == 0
    assert capsys.readouterr().out.startswith("removed 2 files (") and os.listdir(cache_dir) == []


def test_the_command_refuses_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(feature_cache.CACHE_ENV, "off")
    assert cache_main(["list"]) == 1
    assert capsys.readouterr().err == ("feature_cache: the image feature cache is off (DPL_FEATURE_CACHE=off): "
                                       "unset DPL_FEATURE_CACHE or point it at a folder\n")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(feature_cache.CACHE_ENV, str(tmp_path / "file"))
    assert cache_main(["clear"]) == 1
    assert "is not a folder: point DPL_FEATURE_CACHE at the cache folder" in capsys.readouterr().err
    monkeypatch.setenv(feature_cache.CACHE_ENV, str(tmp_path / "none_yet"))
    assert cache_main(["list"]) == 0 and capsys.readouterr().out.startswith("0 files, 0 B in ")
