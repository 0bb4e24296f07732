"""The default config tree: the part of Dassl's defaults that prompt learning uses, plus our keys.

Trainers add their own node (``cfg.TRAINER.<NAME>``) in ``extend_cfg`` next to their class; yacs rejects
keys that do not exist, so every node must be in place before a YAML file is merged. The tree is built
from ``dpl.config.node.CfgNode``, so a float key also takes an integer (``OPTIM.LR 1``).
"""
from .node import CfgNode as CN

_C = CN()
_C.VERSION = 1
_C.OUTPUT_DIR = "./output"
_C.RESUME = ""
_C.SEED = -1
_C.USE_CUDA = True
_C.VERBOSE = True
# Name of the run's trainer config (train.py sets it to the stem of --config-file); stored in results.json.
_C.CONFIG_NAME = ""

###########################
# Input
###########################
_C.INPUT = CN()
_C.INPUT.SIZE = (224, 224)
_C.INPUT.INTERPOLATION = "bilinear"
_C.INPUT.TRANSFORMS = ()
_C.INPUT.NO_TRANSFORM = False
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
_C.INPUT.CROP_PADDING = 4
_C.INPUT.RRCROP_SCALE = (0.08, 1.0)
_C.INPUT.CUTOUT_N = 1
_C.INPUT.CUTOUT_LEN = 16
_C.INPUT.GN_MEAN = 0.0
_C.INPUT.GN_STD = 0.15
_C.INPUT.RANDAUGMENT_N = 2
_C.INPUT.RANDAUGMENT_M = 10
# patch_randaugment (the official DroPLe student view): N ops of RandAugment at magnitude M per PATCH x PATCH tile
_C.INPUT.PATCH_RANDAUGMENT_N = 2
_C.INPUT.PATCH_RANDAUGMENT_M = 7
_C.INPUT.PATCH_RANDAUGMENT_PATCH = 16
# What a frozen image teacher (PromptSRC, DropoutPrompt) sees of a training image: "same" (the student's augmented
# view) or "clean" (CLIP's test preprocessing: the smaller edge resized to the input size, centre crop)
_C.INPUT.TEACHER_VIEW = "same"
_C.INPUT.COLORJITTER_B = 0.4
_C.INPUT.COLORJITTER_C = 0.4
_C.INPUT.COLORJITTER_S = 0.4
_C.INPUT.COLORJITTER_H = 0.1
_C.INPUT.RGS_P = 0.2
_C.INPUT.GB_P = 0.5
_C.INPUT.GB_K = 21

###########################
# Dataset
###########################
_C.DATASET = CN()
_C.DATASET.ROOT = ""
_C.DATASET.NAME = ""
_C.DATASET.SOURCE_DOMAINS = ()
_C.DATASET.TARGET_DOMAINS = ()
_C.DATASET.NUM_LABELED = -1
_C.DATASET.NUM_SHOTS = -1
_C.DATASET.VAL_PERCENT = 0.1
_C.DATASET.STL10_FOLD = -1
_C.DATASET.CIFAR_C_TYPE = ""
_C.DATASET.CIFAR_C_LEVEL = 1
_C.DATASET.ALL_AS_UNLABELED = False
# Base-to-novel protocol: "all", "base" (first ceil(n/2) labels) or "new" (the rest), relabelled.
_C.DATASET.SUBSAMPLE_CLASSES = "all"
# Long-tail protocol: exponential class profile with max/min ratio IMBALANCE_RATIO; 1.0 = off.
_C.DATASET.IMBALANCE_RATIO = 1.0
# A missing split file is an error unless this asks for a new random split to be written.
_C.DATASET.REGENERATE_SPLIT = False

###########################
# Dataloader
###########################
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.K_TRANSFORMS = 1
_C.DATALOADER.RETURN_IMG0 = False
_C.DATALOADER.TRAIN_X = CN()
_C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
_C.DATALOADER.TRAIN_X.N_DOMAIN = 0
_C.DATALOADER.TRAIN_X.N_INS = 16
_C.DATALOADER.TRAIN_U = CN()
_C.DATALOADER.TRAIN_U.SAME_AS_X = True
_C.DATALOADER.TRAIN_U.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_U.BATCH_SIZE = 32
_C.DATALOADER.TRAIN_U.N_DOMAIN = 0
_C.DATALOADER.TRAIN_U.N_INS = 16
_C.DATALOADER.TEST = CN()
_C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
_C.DATALOADER.TEST.BATCH_SIZE = 32

###########################
# Model
###########################
_C.MODEL = CN()
_C.MODEL.INIT_WEIGHTS = ""
_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = ""
_C.MODEL.BACKBONE.PRETRAINED = True
# Explicit CLIP weights file (OpenAI TorchScript archive or a state dict); empty = cache, then download.
_C.MODEL.BACKBONE.PATH = ""
# Trainable class-prompt encoding for many classes (e.g. ImageNet base, 500): encode at most
# TEXT_CHUNK_SIZE prompts at a time (0 = all at once) and/or recompute the text blocks' activations
# in the backward pass (TEXT_CHECKPOINT). Same features and gradients, less peak memory.
_C.MODEL.TEXT_CHUNK_SIZE = 0
_C.MODEL.TEXT_CHECKPOINT = False
_C.MODEL.HEAD = CN()
_C.MODEL.HEAD.NAME = ""
_C.MODEL.HEAD.HIDDEN_LAYERS = ()
_C.MODEL.HEAD.ACTIVATION = "relu"
_C.MODEL.HEAD.BN = True
_C.MODEL.HEAD.DROPOUT = 0.0

###########################
# Optimization
###########################
_C.OPTIM = CN()
_C.OPTIM.NAME = "adam"
_C.OPTIM.LR = 0.0003
_C.OPTIM.WEIGHT_DECAY = 5e-4
_C.OPTIM.MOMENTUM = 0.9
_C.OPTIM.SGD_DAMPNING = 0.0  # a float, so that 0.5 merges (an int default rejects floats)
_C.OPTIM.SGD_NESTEROV = False
_C.OPTIM.RMSPROP_ALPHA = 0.99
_C.OPTIM.ADAM_BETA1 = 0.9
_C.OPTIM.ADAM_BETA2 = 0.999
_C.OPTIM.STAGED_LR = False
_C.OPTIM.NEW_LAYERS = ()
_C.OPTIM.BASE_LR_MULT = 0.1
_C.OPTIM.LR_SCHEDULER = "single_step"
_C.OPTIM.STEPSIZE = (-1,)
_C.OPTIM.GAMMA = 0.1
_C.OPTIM.MAX_EPOCH = 10
_C.OPTIM.WARMUP_EPOCH = -1
_C.OPTIM.WARMUP_TYPE = "linear"
_C.OPTIM.WARMUP_CONS_LR = 1e-5
_C.OPTIM.WARMUP_MIN_LR = 1e-5
_C.OPTIM.WARMUP_RECOUNT = True

###########################
# Train
###########################
_C.TRAIN = CN()
_C.TRAIN.CHECKPOINT_FREQ = 0  # numbered checkpoints every N epochs (0: the last epoch only), as Dassl
# Interrupt-safe: a "last" checkpoint (model-last.pth.tar, replaced atomically) is written at every epoch
# end whatever CHECKPOINT_FREQ says, and also every CHECKPOINT_ITERS training steps when > 0 (long
# epochs, e.g. ImageNet); a mid-epoch one resumes at that step exactly.
_C.TRAIN.CHECKPOINT_ITERS = 0
_C.TRAIN.PRINT_FREQ = 10
_C.TRAIN.COUNT_ITER = "train_x"
# Deterministic algorithms, no cudnn.benchmark, seeded data-loader workers.
_C.TRAIN.DETERMINISTIC = False
# What a run does when its output dir already holds a checkpoint: "resume", "skip" (if finished) or "error".
_C.TRAIN.IF_EXISTS = "resume"

###########################
# Test
###########################
_C.TEST = CN()
_C.TEST.EVALUATOR = "Classification"
_C.TEST.PER_CLASS_RESULT = False
_C.TEST.COMPUTE_CMAT = False
_C.TEST.NO_TEST = False
_C.TEST.SPLIT = "test"
_C.TEST.FINAL_MODEL = "last_step"
# Trainers whose image features are frozen CLIP's (ZeroshotCLIP, CoOp, KgCoOp, CoCoOp) read the test set's
# image features from a disk cache (dpl.evaluation.feature_cache; folder $DPL_FEATURE_CACHE) instead of
# decoding and encoding every image again. Same numbers either way; False always encodes the images.
_C.TEST.IMAGE_FEATURE_CACHE = True

###########################
# Trainer (each trainer adds its node in extend_cfg)
###########################
_C.TRAINER = CN()
_C.TRAINER.NAME = ""


def get_cfg_default():
    """A fresh copy of the default config tree."""
    return _C.clone()
