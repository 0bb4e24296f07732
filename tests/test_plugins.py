"""Plugins: an upstream-style Dassl checkout (tests/fixtures/upstream_coop, written for these tests) runs
unchanged through ``train.py --plugin``; ``dassl`` resolves to ``dpl`` only in such a process; the checkout's
``clip`` and ours stay apart; few-shot caches are read by both sides; builders only look names up.

Loading a plugin changes the process (import finders, the name ``clip``), so every test that loads one runs
Python in a subprocess.
"""
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from dpl.data.datasets.datum import Datum
from dpl.data.datasets.fewshot_cache import read_upstream_cache
from dpl.project import PROJECT_ROOT
from dpl.utils.registry import Registry
from helpers import run_script, script_env, tiny_config

CHECKOUT = PROJECT_ROOT / "tests" / "fixtures" / "upstream_coop"
TRAIN_PY = PROJECT_ROOT / "train.py"


@pytest.fixture(scope="module")
def upstream_weights(tmp_path_factory):
    """Weights of the checkout's own tiny model, saved as upstream code expects to find them (a state dict)."""
    spec = importlib.util.spec_from_file_location("upstream_tiny_model", CHECKOUT / "clip" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.TinyCLIP(embed_dim=16, width=32, vocab_size=512, context_length=32, patch_size=8)
    path = tmp_path_factory.mktemp("upstream_weights") / "tiny_upstream.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def dtd_root(tmp_path):
    from datagen import make_dataset

    make_dataset(tmp_path / "data", "dtd", n_classes=4, per_class=6)
    return tmp_path / "data"


def python(code, *, cwd, env=None):
    """Run ``code`` in a fresh interpreter (the project importable, as after ``pip install -e .``)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env=env)


def train(*args, cwd, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(TRAIN_PY), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env)


def upstream_args(root, out, weights, *extra, trainer="CoOp"):
    return ["--root", root, "--seed", "1", "--trainer", trainer, "--output-dir", out,
            "--dataset-config-file", PROJECT_ROOT / "configs/datasets/dtd.yaml",
            "--config-file", PROJECT_ROOT / "configs/trainers/CoOp/vit_b16_ep50.yaml", *extra,
            "MODEL.BACKBONE.PATH", weights, "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "2", "OPTIM.MAX_EPOCH", "2", "OPTIM.WARMUP_EPOCH", "0",
            "DATASET.NUM_SHOTS", "4", "USE_CUDA", "False"]


# ----- the checkout through train.py ---------------------------------------------------------------
def test_checkout_trains_and_evaluates_unchanged(tmp_path, dtd_root, upstream_weights):
    out = tmp_path / "out"
    before = {path: path.read_bytes() for path in CHECKOUT.rglob("*.py")}
    proc = train("--plugin", CHECKOUT, *upstream_args(dtd_root, out, upstream_weights,
                                                     "DATASET.SUBSAMPLE_CLASSES", "base"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert f"Plugin {CHECKOUT} (sha256 " in log and "with its own clip) loaded" in log
    assert log.count("Trainer CoOp: using ") == 1 and f"{CHECKOUT}/trainers/coop.py, which replaces the project's" in log
    assert log.count("Dataset DescribableTextures: using ") == 1
    assert "epoch [2/2]" in log and "* accuracy: " in log
    assert (out / "prompt_learner" / "model.pth.tar-2").is_file()
    sources = json.loads((out / "results.json").read_text())["identity"]["sources"]
    assert sources["trainer"]["module"] == "trainers.coop" and sources["dataset"]["module"] == "datasets.dtd"
    assert len(sources["trainer"]["sha256"]) == 64 and sources["dataset"]["sha256"] == sources["trainer"]["sha256"]

    new = tmp_path / "test_new"  # base -> new through the checkout's own load_model
    proc = train("--plugin", CHECKOUT, *upstream_args(dtd_root, new, upstream_weights, "--eval-only", "--model-dir",
                                                     out, "--load-epoch", "2", "DATASET.SUBSAMPLE_CLASSES", "new"),
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (new / "log.txt").read_text()
    assert "upstream load_model: prompt_learner <- " in log and "(epoch 2)" in log and "* accuracy: " in log
    assert {path: path.read_bytes() for path in CHECKOUT.rglob("*.py")} == before  # no edit to its files


def test_a_plugin_run_never_takes_over_the_projects_run(tmp_path, dtd_root, upstream_weights, tiny_clip_path):
    """Same trainer name, same config, same folder: the plugin's code is another experiment (its sha256)."""
    out = tmp_path / "out"
    ours = train(*upstream_args(dtd_root, out, tiny_clip_path), cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr[-3000:]
    theirs = train("--plugin", CHECKOUT, *upstream_args(dtd_root, out, upstream_weights), cwd=tmp_path)
    assert theirs.returncode != 0
    assert "sources" in theirs.stderr and len(theirs.stderr.strip().splitlines()) == 1, theirs.stderr


def test_a_second_plugin_replaces_the_first_with_one_log_line(tmp_path, dtd_root, upstream_weights):
    second = tmp_path / "my_textures.py"
    second.write_text(textwrap.dedent("""
        import json, os
        from dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase

        @DATASET_REGISTRY.register()
        class DescribableTextures(DatasetBase):
            def __init__(self, cfg):
                folder = os.path.join(cfg.DATASET.ROOT, "dtd")
                with open(os.path.join(folder, "split_zhou_DescribableTextures.json")) as f:
                    split = json.load(f)
                items = {part: [Datum(os.path.join(folder, "images", p), l, 0, c) for p, l, c in rows]
                         for part, rows in split.items()}
                print(f"my textures: {len(items['train'])} training images")
                super().__init__(train_x=items["train"], val=items["val"], test=items["test"])
    """))
    out = tmp_path / "out"
    proc = train("--plugin", CHECKOUT, "--plugin", second, *upstream_args(dtd_root, out, upstream_weights),
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    lines = [line for line in log.splitlines() if line.startswith("Dataset DescribableTextures: using ")]
    assert lines == [f"Dataset DescribableTextures: using {second}, which replaces {CHECKOUT}/datasets/dtd.py"]
    assert "my textures: " in log


def test_plugins_from_the_environment_and_a_missing_path(tmp_path, dtd_root, upstream_weights):
    out = tmp_path / "out"
    proc = train(*upstream_args(dtd_root, out, upstream_weights), cwd=tmp_path,
                 env={"DPL_PLUGINS": os.pathsep.join(["", str(CHECKOUT)])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Trainer CoOp: using " in (out / "log.txt").read_text()

    proc = train("--plugin", tmp_path / "nowhere", *upstream_args(dtd_root, tmp_path / "o2", upstream_weights),
                 cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"Config error: --plugin {tmp_path / 'nowhere'}: no such file or folder\n"
    assert not (tmp_path / "o2").exists()


def test_a_plugin_that_calls_cuda_without_a_gpu_is_one_line(tmp_path, dtd_root, upstream_weights):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    checkout = tmp_path / "gpu_only"
    (checkout / "trainers").mkdir(parents=True)
    (checkout / "trainers" / "needs_gpu.py").write_text(textwrap.dedent("""
        import torch
        from dassl.engine import TRAINER_REGISTRY, TrainerX

        @TRAINER_REGISTRY.register()
        class NeedsGPU(TrainerX):
            def build_model(self):
                self.model = torch.nn.Linear(2, 2).cuda()
    """))
    proc = train("--plugin", checkout, *upstream_args(dtd_root, tmp_path / "out", upstream_weights,
                                                      trainer="NeedsGPU"), cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: the plugin {checkout} needs a GPU: "), proc.stderr
    assert "needs_gpu.py:8 (self.model = torch.nn.Linear(2, 2).cuda()) uses CUDA" in lines[0]


def test_plugin_paths_that_cannot_be_plugins_are_one_line_config_errors(tmp_path, dtd_root, upstream_weights):
    fork = tmp_path / "fork"  # e.g. a fork of this project: its dpl/ must not replace ours
    (fork / "trainers").mkdir(parents=True)
    (fork / "dpl").mkdir()
    (fork / "dpl" / "__init__.py").write_text("")
    broken = tmp_path / "my.broken.plugin.py"
    broken.write_text("raise RuntimeError('not today')\n")
    for plugin, message in ((fork, f"Config error: --plugin {fork}: its package dpl/ would replace the dpl this "
                                   "project runs on; "),
                            (broken, f"Config error: --plugin {broken} failed to import (RuntimeError: not today)")):
        proc = train("--plugin", plugin, *upstream_args(dtd_root, tmp_path / "out", upstream_weights), cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "out").exists()

    dotted = tmp_path / "my.textures.v2.py"  # a dotted file name is still one module
    dotted.write_text("from dassl.data.datasets import DATASET_REGISTRY, DatasetBase\n\n"
                      "@DATASET_REGISTRY.register()\nclass DottedTextures(DatasetBase):\n    pass\n")
    proc = python(f"""
        from dpl.plugins import load_plugins
        from dpl.data.datasets import DATASET_REGISTRY
        load_plugins([{str(dotted)!r}])
        print(DATASET_REGISTRY.get("DottedTextures").__module__)
    """, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip().startswith("dpl_plugin_my_textures_v2_"), proc.stderr


# ----- the process a plugin runs in --------------------------------------------------------------
def test_both_clip_packages_in_one_process(tmp_path):
    proc = python(f"""
        import os, sys
        import dpl.clip.package as ours
        from dpl.clip.weights import POCKET_PATH, resolve_clip_weights
        from dpl.plugins import LOADED, load_plugins

        load_plugins([{str(CHECKOUT)!r}])

        def late_import():  # a function-level import after start-up, as upstream trainers do
            import clip
            from clip import clip as clip_module
            return clip, clip_module

        theirs, theirs_module = late_import()
        assert theirs.__file__.startswith({str(CHECKOUT)!r}), theirs.__file__
        assert "site-packages" in ours.clip.__file__ and ours.clip is not theirs
        assert hasattr(ours.clip.model, "VisionTransformer") and not hasattr(theirs, "VisionTransformer")
        # the vendored clip gets this project's weights: pocket by name (a dense copy of the compact file, which
        # upstream build_model cannot read), MODEL.BACKBONE.PATH when set
        import torch
        from dpl.clip.weights import clip_cache_dir, read_clip_state_dict
        dense = theirs_module._download(theirs_module._MODELS["pocket"], os.path.expanduser("~/.cache/clip"))
        assert os.path.dirname(dense) == str(clip_cache_dir()), dense
        copy, original = torch.load(dense, weights_only=True), read_clip_state_dict(POCKET_PATH)
        assert copy.keys() == original.keys() and all(torch.equal(copy[k], original[k]) for k in copy)
        assert not any(t.is_sparse for t in copy.values())
        import shutil
        student = shutil.copy(dense, "student.pt")
        class Backbone: NAME, PATH = "ViT-B/16", os.path.abspath(student)
        class Model: BACKBONE = Backbone
        class Cfg: MODEL = Model
        LOADED.weights.configure(Cfg)
        assert theirs_module._download(theirs_module._MODELS["ViT-B/16"]) == os.path.abspath(student)
        assert theirs_module._download(theirs_module._MODELS["pocket"]) == dense  # another backbone: not PATH
        # our loader still builds from OpenAI's package
        from dpl.clip.weights import load_clip_with_info
        model, info = load_clip_with_info("pocket")
        assert type(model).__module__ == "clip.model" and sys.modules["clip"] is theirs
        # the checkout's datasets/ is private: Hugging Face's name stays free
        assert "datasets" not in sys.modules or not getattr(sys.modules["datasets"], "__file__", "").startswith({str(CHECKOUT)!r})
        print("ok")
    """, cwd=tmp_path, env={"DPL_CLIP_CACHE": str(tmp_path / "clip_cache")})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_dassl_resolves_to_dpl_only_where_plugins_load(tmp_path):
    proc = python("""
        import importlib
        import dpl, dpl.engine
        try:
            import dassl
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("importing dpl made dassl importable")
        from dpl.plugins.dassl_alias import install_dassl_alias
        install_dassl_alias()
        from dassl.engine import TRAINER_REGISTRY, TrainerX
        from dassl.data.datasets import DatasetBase
        from dassl.data.datasets.base_dataset import Datum
        from dassl.utils import load_checkpoint
        import dpl.engine, dpl.data.datasets
        assert TRAINER_REGISTRY is dpl.engine.TRAINER_REGISTRY and TrainerX is dpl.engine.TrainerX
        assert DatasetBase is dpl.data.datasets.DatasetBase
        names = {}
        exec("from dassl.utils import *", names)
        assert "mkdir_if_missing" in names and "load_checkpoint" in names
        assert Datum.__module__ == "dassl.data.datasets.base_dataset" and issubclass(Datum, dpl.data.datasets.Datum)
        try:
            import dassl.modeling
        except ModuleNotFoundError as err:
            assert "has no dpl.modeling" in str(err), err
        else:
            raise SystemExit("dassl.modeling imported")
        print("ok")
    """, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr[-3000:]


def test_an_upstream_train_py_keeps_what_it_registered(tmp_path):
    """Upstream train.py files import their trainers and datasets, then call the builders: look-up only."""
    proc = python(f"""
        import sys
        from dpl.plugins.dassl_alias import install_dassl_alias
        install_dassl_alias()
        sys.path.insert(0, {str(CHECKOUT)!r})  # as running upstream's train.py from its checkout
        from dassl.config import get_cfg_default
        from dassl.engine import TRAINER_REGISTRY, build_trainer
        from dassl.data.datasets import DATASET_REGISTRY
        import datasets.dtd
        import trainers.coop

        theirs = TRAINER_REGISTRY.get("CoOp")
        assert theirs.__module__ == "trainers.coop"
        # a look-up miss imports the project's folders: its CoOp and DescribableTextures yield to theirs
        try:
            from dassl.data.datasets import build_dataset
            cfg = get_cfg_default()
            cfg.DATASET.NAME = "OxfordPets"
            cfg.DATASET.ROOT = {str(tmp_path)!r}
            build_dataset(cfg)
        except Exception as err:
            assert "KeyError" not in type(err).__name__, err
        assert TRAINER_REGISTRY.get("CoOp") is theirs
        assert DATASET_REGISTRY.get("DescribableTextures").__module__ == "datasets.dtd"
        assert "KgCoOp" in TRAINER_REGISTRY.registered_names()
        print("ok")
    """, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-3000:]


# ----- registry rules ------------------------------------------------------------------------------
def _class(name, module):
    return type(name, (), {"__module__": module})


def test_registry_precedence():
    registry = Registry("TRAINER")
    ours = _class("CoOp", "dpl_trainers.coop")
    plugin = _class("CoOp", "dpl_plugin_x_12345678_trainers.coop")
    later = _class("CoOp", "dpl_plugin_y_87654321_trainers.coop")
    registry.register(ours)
    registry.register(plugin)
    assert registry.get("CoOp") is plugin and registry.overrides == {"CoOp": (plugin, ours)}
    registry.register(later)
    assert registry.get("CoOp") is later and registry.overrides["CoOp"] == (later, plugin)

    users = Registry("DATASET")
    theirs = _class("DTD", "datasets.dtd")
    users.register(theirs)
    users.register(_class("DTD", "dpl_datasets.dtd"))  # the project's file imported later yields
    assert users.get("DTD") is theirs
    with pytest.raises(KeyError, match='already registered'):  # two classes of the user's own code: Dassl's rule
        users.register(_class("DTD", "my_code.dtd"))


# ----- few-shot caches, both directions ---------------------------------------------------------
DASSL_STANDIN = '''
class Datum:
    """Dassl's Datum as it pickles: a plain object with these attributes in its __dict__."""

    def __init__(self, impath="", label=0, domain=0, classname=""):
        self._impath, self._label, self._domain, self._classname = impath, label, domain, classname
'''


def _dassl_standin(folder):
    package = folder / "dassl" / "data" / "datasets"
    package.mkdir(parents=True)
    for init in (folder / "dassl", folder / "dassl" / "data", package):
        (init / "__init__.py").write_text("")
    (package / "base_dataset.py").write_text(DASSL_STANDIN)
    return folder


def test_a_cache_a_plugin_writes_is_read_by_dassl_and_by_us(tmp_path):
    cache = tmp_path / "shot_1-seed_1.pkl"
    image = tmp_path / "dtd" / "images" / "a" / "a_0001.jpg"
    written = python(f"""
        import pickle
        from dpl.plugins.dassl_alias import install_dassl_alias
        install_dassl_alias()
        from dassl.data.datasets import Datum  # what an upstream loader running as a plugin gets
        items = [Datum(impath={str(image)!r}, label=2, classname="a")]
        with open({str(cache)!r}, "wb") as f:
            pickle.dump({{"train": items, "val": items}}, f, protocol=pickle.HIGHEST_PROTOCOL)
    """, cwd=tmp_path)
    assert written.returncode == 0, written.stderr

    standin = _dassl_standin(tmp_path / "standin")
    read_by_dassl = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import pickle, sys
        sys.path.insert(0, {str(standin)!r})
        data = pickle.load(open({str(cache)!r}, "rb"))
        item = data["train"][0]
        print(type(item).__module__, item._impath, item._label, item._domain, item._classname)
    """)], capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "")})
    assert read_by_dassl.returncode == 0, read_by_dassl.stderr
    assert read_by_dassl.stdout.split() == ["dassl.data.datasets.base_dataset", str(image), "2", "0", "a"]

    train, val = read_upstream_cache(str(cache), str(tmp_path / "dtd"), [], [])
    assert train == val == [Datum(str(image), 2, 0, "a")]


def test_a_cache_dassl_writes_and_one_of_our_datums_are_read_by_us(tmp_path):
    image = str(tmp_path / "dtd" / "images" / "b.jpg")
    standin = _dassl_standin(tmp_path / "standin")
    by_dassl = tmp_path / "by_dassl.pkl"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import pickle, sys
        sys.path.insert(0, {str(standin)!r})
        from dassl.data.datasets.base_dataset import Datum
        items = [Datum({image!r}, 1, 0, "b")]
        pickle.dump({{"train": items, "val": items}}, open({str(by_dassl)!r}, "wb"), protocol=2)
    """)], capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stderr
    assert read_upstream_cache(str(by_dassl), str(tmp_path / "dtd"), [], [])[0] == [Datum(image, 1, 0, "b")]

    by_dpl = tmp_path / "by_dpl.pkl"  # a loader that imported our Datum directly (no dassl in sight)
    by_dpl.write_bytes(pickle.dumps({"train": [Datum(image, 1, 0, "b")], "val": []}))
    assert read_upstream_cache(str(by_dpl), str(tmp_path / "dtd"), [], [])[0] == [Datum(image, 1, 0, "b")]
    assert pickle.loads(pickle.dumps(Datum(image, 1, 0, "b"))) == Datum(image, 1, 0, "b")


def test_our_loader_reads_the_cache_the_checkout_wrote(tmp_path, dtd_root, upstream_weights, tiny_clip_path):
    proc = train("--plugin", CHECKOUT, *upstream_args(dtd_root, tmp_path / "theirs", upstream_weights),
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cache = dtd_root / "dtd" / "split_fewshot" / "shot_4-seed_1.pkl"
    assert cache.is_file()
    proc = train(*upstream_args(dtd_root, tmp_path / "ours", tiny_clip_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "ours" / "log.txt").read_text()
    assert f"Loading preprocessed few-shot data from {cache}" in log


# ----- results next to ours -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_checkout_run_by_the_scripts_lands_in_the_same_table(tmp_path, dtd_root, upstream_weights,
                                                               tiny_clip_path):
    out = tmp_path / "out"
    configs = tmp_path / "configs"
    ours = script_env(dtd_root, out, CFG=tiny_config(configs / "ours", "CoOp", "vit_b16_ctxv1", tiny_clip_path))
    theirs = script_env(dtd_root, out, TAG="upstream", DPL_PLUGINS=str(CHECKOUT),
                        CFG=tiny_config(configs / "theirs", "CoOp", "vit_b16_ctxv1", upstream_weights))
    for env in (ours, theirs):
        for script in ("base2new_train.sh", "base2new_test.sh"):
            proc = run_script(f"coop/{script}", "dtd", 1, env=env, cwd=tmp_path)
            assert proc.returncode == 0, f"{script}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    again = run_script("coop/base2new_train.sh", "dtd", 1, env=theirs, cwd=tmp_path)  # planned with the plugin
    assert again.returncode == 0 and "Skip: the run in " in again.stdout, again.stdout[-2000:] + again.stderr
    table = subprocess.run([sys.executable, str(PROJECT_ROOT / "parse_results.py"), "--protocol", "base2new",
                            str(out / "base2new"), "--format", "json"], capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    (row,) = json.loads(table.stdout)["rows"]
    cells = {(cell["group"], cell["column"]): cell for cell in row["cells"]}
    for method in ("CoOp", "CoOp [upstream]"):
        assert cells[method, "Base"]["n"] == 1 and cells[method, "New"]["n"] == 1, cells
        assert cells[method, "HM"]["mean"] is not None
