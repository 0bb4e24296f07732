"""Trainers for the benchmark: the real trainer classes and configs, with synthetic class names and CLIP weights.

A benchmark trainer is the registered trainer class with one hook replaced: ``build_data_loader``
provides ``num_classes`` synthetic class names instead of reading a dataset. Everything else
(config node, ``build_model``, ``build_clip_model``, losses, optimizer, precision) is the trainer's own code.
CLIP weights come from a state-dict file (random weights of a named architecture, written once per
benchmark run) or from a backbone name that ``dpl.clip.load_clip`` resolves (``pocket``).
"""
from pathlib import Path
from types import SimpleNamespace

import torch

from dpl.config import get_cfg_default
from dpl.engine import TRAINER_REGISTRY, extend_cfg_for_all_trainers
from dpl.project import PROJECT_ROOT

# clip.model.CLIP hyper-parameters of the architectures the benchmark can build with random weights.
# Head counts are width // 64, as clip.model.build_model infers them from a state dict.
RANDOM_ARCHITECTURES = {
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12),
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12),
    "tiny": dict(embed_dim=64, image_resolution=32, vision_layers=3, vision_width=128, vision_patch_size=8,
                 context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2,
                 transformer_layers=3),
}
# Architectures loaded by name through dpl.clip (committed weights, no download).
NAMED_ARCHITECTURES = ("pocket",)
ARCHITECTURES = tuple(RANDOM_ARCHITECTURES) + NAMED_ARCHITECTURES

# The shipped config of each trainer that the benchmark runs (base-to-novel settings where they exist).
TRAINER_CONFIGS = {
    "ZeroshotCLIP": "ZeroshotCLIP/vit_b16.yaml",
    "CoOp": "CoOp/vit_b16_ctxv1.yaml",
    "CoCoOp": "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
    "KgCoOp": "KgCoOp/vit_b16_ep100_ctxv1.yaml",
    "IVLP": "IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
    "MaPLe": "MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml",
    "PromptSRC": "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
    "DropoutPrompt": "DropoutPrompt/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
    # the official code's recipe: its teacher sees a fixed clean view, whose features are computed once per image
    "DropoutPrompt-official": "DropoutPrompt/vit_b16_c2_ep20_batch4_4+4ctx_official.yaml",
}
# Rows that run another registered trainer than their name (a recipe of it).
TRAINER_OF_ROW = {"DropoutPrompt-official": "DropoutPrompt"}
EVAL_ONLY_TRAINERS = frozenset({"ZeroshotCLIP"})
# DATASET.NAME for the hand-crafted templates (KgCoOp's teacher, ZeroshotCLIP): ImageNet's "a photo of a {}."
TEMPLATE_DATASET = "ImageNet"


def write_random_weights(arch, directory, seed=0):
    """Write a randomly initialised ``clip.model.CLIP`` of ``arch`` as an fp16 state dict; return its path.

    fp16 halves the file (ViT-B/16: ~300 MB); ``load_clip`` builds the float32 model from it.
    """
    from dpl.clip.package import clip

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = clip.model.CLIP(**RANDOM_ARCHITECTURES[arch])
    finally:
        torch.random.set_rng_state(generator_state)
    state = {name: (t.half() if t.is_floating_point() else t) for name, t in model.state_dict().items()}
    path = Path(directory) / f"random_{arch.replace('/', '-')}.pt"
    torch.save(state, path)
    return path


def input_resolution(arch, weights_path=""):
    """Image side length of ``arch`` (read from the weights for named architectures)."""
    if arch in RANDOM_ARCHITECTURES:
        return RANDOM_ARCHITECTURES[arch]["image_resolution"]
    from dpl.clip import load_clip

    return load_clip(arch, weights_path).visual.input_resolution


def synthetic_classnames(num_classes):
    return [f"object {index}" for index in range(num_classes)]


def bench_cfg(trainer_name, backbone_name, weights_path, resolution, device, output_dir,
              text_chunk_size=0, text_checkpoint=False):
    """The trainer's shipped config with the benchmark's backbone, input size, device and text switch."""
    cfg = get_cfg_default()
    extend_cfg_for_all_trainers(cfg)
    cfg.merge_from_file(str(PROJECT_ROOT / "configs" / "trainers" / TRAINER_CONFIGS[trainer_name]))
    cfg.TRAINER.NAME = TRAINER_OF_ROW.get(trainer_name, trainer_name)
    cfg.DATASET.NAME = TEMPLATE_DATASET
    cfg.MODEL.BACKBONE.NAME = backbone_name
    cfg.MODEL.BACKBONE.PATH = str(weights_path or "")
    cfg.MODEL.TEXT_CHUNK_SIZE = int(text_chunk_size)
    cfg.MODEL.TEXT_CHECKPOINT = bool(text_checkpoint)
    cfg.INPUT.SIZE = (resolution, resolution)
    cfg.USE_CUDA = torch.device(device).type == "cuda"
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.VERBOSE = False
    cfg.freeze()
    return cfg


class SyntheticClasses:
    """Trainer mixin: ``num_classes`` synthetic class names and ``num_images`` training items instead of a
    dataset (no loaders; the items only size what a trainer keeps per training image)."""

    bench_num_classes = 0
    bench_num_images = 1

    def build_data_loader(self):
        classnames = synthetic_classnames(self.bench_num_classes)
        self.dm = SimpleNamespace(dataset=SimpleNamespace(classnames=classnames, train_x=[None] * self.bench_num_images))
        self.train_loader_x = self.train_loader_u = self.val_loader = self.test_loader = None
        self.num_classes = len(classnames)
        self.num_source_domains = 1
        self.lab2cname = dict(enumerate(classnames))


class SyntheticTestSet:
    """Trainer mixin: a test set of image files (``bench_test_items``, ``Datum``s labelled ``0..C-1`` for
    ``bench_classnames``) behind the engine's own evaluation loader and test transform; no training data."""

    bench_classnames = ()
    bench_test_items = ()

    def build_data_loader(self):
        from dpl.data.data_manager import build_data_loader
        from dpl.data.transforms import build_transform

        classnames = list(self.bench_classnames)
        transform = build_transform(self.cfg, is_train=False)
        self.test_loader = build_data_loader(self.cfg, data_source=list(self.bench_test_items),
                                             batch_size=self.cfg.DATALOADER.TEST.BATCH_SIZE, tfm=transform,
                                             is_train=False, world=self.world)
        self.dm = SimpleNamespace(dataset=SimpleNamespace(classnames=classnames), tfm_test=transform)
        self.train_loader_x = self.train_loader_u = self.val_loader = None
        self.num_classes = len(classnames)
        self.num_source_domains = 1
        self.lab2cname = dict(enumerate(classnames))


def build_bench_trainer(cfg, num_classes, num_images=1):
    """The registered trainer ``cfg.TRAINER.NAME`` constructed over ``num_classes`` synthetic classes and
    ``num_images`` training items."""
    trainer_class = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    bench_class = type(f"Bench{trainer_class.__name__}", (SyntheticClasses, trainer_class),
                       {"bench_num_classes": num_classes, "bench_num_images": num_images})
    return bench_class(cfg)


def build_test_set_trainer(cfg, classnames, test_items):
    """The registered trainer ``cfg.TRAINER.NAME`` constructed to evaluate ``test_items`` (``SyntheticTestSet``)."""
    trainer_class = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    bench_class = type(f"BenchTest{trainer_class.__name__}", (SyntheticTestSet, trainer_class),
                       {"bench_classnames": tuple(classnames), "bench_test_items": tuple(test_items)})
    return bench_class(cfg)
