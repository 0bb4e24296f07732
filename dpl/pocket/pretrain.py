"""Contrastive pretraining of the pocket CLIP on generated coloured-shape scenes (CPU, a few minutes).

    python -m dpl.pocket.pretrain --seed 0 --out dpl/clip/assets/pocket_clip.pt

The model is a ``clip.model.CLIP`` at image resolution 224 (so every upstream config with
``INPUT.SIZE (224, 224)`` runs unchanged) with a large patch (32), 4 blocks per tower and width 64 (one head, which is
what ``clip.model.build_model`` re-infers from a state dict). Each step draws random classes, renders
their scenes, captions each scene with a random template, and minimises CLIP's symmetric contrastive
loss, where every caption of the same class counts as a positive (a batch holds repeated classes).

The file written is a state dict that ``clip.model.build_model`` accepts once densified: fp16 tensors,
and the token embedding as a sparse COO tensor holding only the rows of tokens the captions use
(the other 49k rows are zero), which keeps the file at a few MB.
"""
import argparse
import hashlib
import inspect
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dpl.clip.package import clip
from dpl.pocket.shapes import class_names, generate, pocket_classes

POCKET_CLIP_CONFIG = dict(
    embed_dim=64,
    image_resolution=224,
    vision_layers=4,
    vision_width=64,
    vision_patch_size=32,
    context_length=77,
    vocab_size=49408,
    transformer_width=64,
    transformer_heads=1,
    transformer_layers=4,
)
# Caption templates of pretraining; "a photo of a {}." is also the hand-crafted zero-shot template
# (CUSTOM_TEMPLATES["Pocket"]) and the words of CoOp's default context "a photo of a".
CAPTION_TEMPLATES = (
    "a photo of a {}.",
    "a picture showing a {}.",
    "a picture of a {}",
    "a drawing of a {}.",
    "an image of a {}.",
    "a {}.",
    "a photo of the {}.",
    "a rendering of a {}.",
    "a small {}.",
    "a large {}.",
    "a bad photo of a {}.",
    "a {} in a small image.",
)
ZERO_SHOT_TEMPLATE = "a photo of a {}."
IMAGE_SIZE = 64  # rendered size; the 224 input is an upsampling, as the dataset transform does
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_pocket_clip(seed, layers=POCKET_CLIP_CONFIG["vision_layers"]):
    """A randomly initialised pocket CLIP with ``layers`` blocks per tower."""
    torch.manual_seed(seed)
    return clip.model.CLIP(**{**POCKET_CLIP_CONFIG, "vision_layers": layers, "transformer_layers": layers}).float()


def caption_tokens(templates=CAPTION_TEMPLATES):
    """Token ids of every (class, template) caption: long [n_classes, n_templates, 77]."""
    names = class_names()
    texts = [t.format(name) for name in names for t in templates]
    return clip.tokenize(texts).long().view(len(names), len(templates), -1)


def to_clip_input(images):
    """uint8 [B, 3, s, s] -> normalised float [B, 3, 224, 224] (bicubic upsampling, as the test transform)."""
    size = POCKET_CLIP_CONFIG["image_resolution"]
    x = F.interpolate(images.float() / 255.0, size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return (x.clamp(0, 1) - mean) / std


def encode_captions(model, tokens):
    """``model.encode_text(tokens)`` computed on the prefix up to the longest caption.

    With CLIP's causal mask the feature at the EOS token depends only on the tokens before it, so
    dropping the padding after the longest EOS gives the same features for a fraction of the cost.
    tokens: long [N, 77] -> [N, embed_dim].
    """
    length = int(tokens.argmax(-1).max()) + 1
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]  # [N, L, width]
    mask = model.build_attention_mask()[:length, :length].to(x.dtype)
    x = x.permute(1, 0, 2)  # [L, N, width], the layout of clip.model's blocks
    for block in model.transformer.resblocks:
        y = block.ln_1(x)
        x = x + block.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ model.text_projection


def contrastive_loss(image_features, class_text_features, labels, logit_scale):
    """Symmetric CLIP loss between a batch of images and one caption of every class.

    image -> text: a softmax over all the class captions (every image meets the captions of its
    colour's other shapes, the hard negatives, at every step); text -> image: a softmax over the
    batch's images for each class present, with a uniform target over that class's images.
    image_features [B, D], class_text_features [n_classes, D], labels long [B].
    """
    image_features = F.normalize(image_features, dim=-1)
    class_text_features = F.normalize(class_text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ class_text_features.t()  # [B, n_classes]
    loss_image = F.cross_entropy(logits, labels)
    positives = F.one_hot(labels, logits.shape[1]).float()  # [B, n_classes]
    present = positives.sum(0) > 0
    per_class = -(positives * logits.log_softmax(0)).sum(0)[present] / positives.sum(0)[present]
    return (loss_image + per_class.mean()) / 2


@torch.no_grad()
def zero_shot_accuracy(model, per_class=20, seed=10_000, template=ZERO_SHOT_TEMPLATE):
    """Zero-shot accuracy (%) with ``template`` on fresh scenes: ``{"base", "new", "all"}``.

    ``base``/``new`` classify among the first/second half of the classes only, as base-to-novel does.
    """
    model.eval()
    n_classes = len(pocket_classes())
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    image_features = F.normalize(model.encode_image(to_clip_input(generate(labels, seed, IMAGE_SIZE))), dim=-1)
    text_tokens = clip.tokenize([template.format(name) for name in class_names()]).long()
    text_features = F.normalize(encode_captions(model, text_tokens), dim=-1)
    scores = image_features @ text_features.t()  # [N, n_classes]
    n_base = math.ceil(n_classes / 2)
    is_base = labels < n_base
    result = {"all": (scores.argmax(1) == labels).float().mean().item() * 100}
    result["base"] = (scores[is_base, :n_base].argmax(1) == labels[is_base]).float().mean().item() * 100
    new_pred = scores[~is_base, n_base:].argmax(1) + n_base
    result["new"] = (new_pred == labels[~is_base]).float().mean().item() * 100
    return result


def compact_state_dict(model, used_token_ids):
    """fp16 state dict; the token embedding becomes a sparse COO tensor of the ``used_token_ids`` rows."""
    state = {k: v.detach().clone().half() for k, v in model.state_dict().items()}
    embedding = state["token_embedding.weight"]  # [vocab, width]
    rows = torch.as_tensor(sorted(set(used_token_ids)), dtype=torch.long)
    kept = torch.zeros_like(embedding)
    kept[rows] = embedding[rows]
    state["token_embedding.weight"] = kept.to_sparse(sparse_dim=1).coalesce()
    return state


def learning_rate(step, steps, base_lr, warmup):
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return 0.5 * base_lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def render_pool(per_class, seed, chunk=512):
    """``per_class`` scenes of every class, rendered once: (uint8 [N, 3, s, s], labels long [N]).

    Rendering is chunked because the rasteriser holds every shape's mask at twice the resolution.
    """
    labels = torch.arange(len(pocket_classes())).repeat(per_class)  # classes interleaved
    chunks = [generate(part, seed + i, IMAGE_SIZE) for i, part in enumerate(labels.split(chunk))]
    return torch.cat(chunks), labels


def random_resized_crop_grid(n, out_size, scale, ratio, gen):
    """Sampling grids of per-sample random resized crops with horizontal flips: [n, out, out, 2].

    Like the trainers' ``random_resized_crop`` + ``random_flip`` views: each crop covers a fraction
    ``U(scale)`` of the image area with a log-uniform aspect ratio in ``ratio`` (sides clamped to the
    image), at a uniform position inside the image, flipped left-right with probability 1/2.
    """
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=gen)
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(n, generator=gen)
    width = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)  # fractions of the image side
    height = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
    # Centres in affine_grid's [-1, 1] coordinates, keeping the crop inside the image.
    centre_x = (1 - width) * (2 * torch.rand(n, generator=gen) - 1)
    centre_y = (1 - height) * (2 * torch.rand(n, generator=gen) - 1)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    return F.affine_grid(theta, (n, 3, out_size, out_size), align_corners=False)


def augmented_clip_input(images, gen, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
    """uint8 [B, 3, s, s] -> normalised random resized crops with flips, float [B, 3, 224, 224].

    One ``grid_sample`` crops, flips and upsamples the whole batch (bilinear: the bicubic kernel costs
    about twice as much on a CPU, and the evaluation still uses bicubic, as the trainers' test transform).
    """
    size = POCKET_CLIP_CONFIG["image_resolution"]
    grid = random_resized_crop_grid(images.shape[0], size, scale, ratio, gen)
    x = F.grid_sample(images.float() / 255.0, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return (x - mean) / std


def build_optimizer(model, lr, weight_decay, logit_scale_lr):
    """AdamW: weight decay on matrices only; the logit scale in its own group with ``logit_scale_lr``.

    At the shared lr the (log) logit scale can move only ~lr per step, so it stayed near its
    initial 14 within a short run; a larger lr lets the temperature follow the loss.
    """
    groups = {"decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if name != "logit_scale":
            groups["decay" if param.ndim >= 2 and "embedding" not in name else "no_decay"].append(param)
    return torch.optim.AdamW([
        {"params": groups["decay"], "weight_decay": weight_decay, "lr": lr, "base_lr": lr},
        {"params": groups["no_decay"], "weight_decay": 0.0, "lr": lr, "base_lr": lr},
        {"params": [model.logit_scale], "weight_decay": 0.0, "lr": logit_scale_lr, "base_lr": logit_scale_lr},
    ])


def pretrain(seed=0, layers=POCKET_CLIP_CONFIG["vision_layers"], steps=400, batch_size=32, lr=3e-3,
             weight_decay=0.05, warmup=50, logit_scale_lr=0.02, pool_per_class=96, crop_scale=(0.5, 1.0),
             log_every=20, eval_every=0, log=print):
    """Train the pocket CLIP from ``seed``; returns the float32 model.

    Scenes come from a pool of ``pool_per_class`` renders per class (rendered once: rendering costs
    about a third of a training step), each step seeing fresh random resized crops and flips of them.
    """
    model = build_pocket_clip(seed, layers)
    tokens = caption_tokens()  # [n_classes, n_templates, 77]
    n_classes, n_templates, _ = tokens.shape
    optimizer = build_optimizer(model, lr, weight_decay, logit_scale_lr)
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    pool, pool_labels = render_pool(pool_per_class, int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    log(f"rendered a pool of {len(pool)} scenes in {time.time() - start:.0f}s")
    for step in range(steps):
        model.train()
        index = torch.randint(0, len(pool), (batch_size,), generator=gen)
        labels = pool_labels[index]
        template_index = torch.randint(0, n_templates, (n_classes,), generator=gen)  # a caption per class
        images = augmented_clip_input(pool[index], gen, scale=crop_scale)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, group["base_lr"], warmup)
        image_features = model.encode_image(images)
        class_text_features = encode_captions(model, tokens[torch.arange(n_classes), template_index])
        loss = contrastive_loss(image_features, class_text_features, labels, model.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps} loss {loss.item():.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                f"scale {model.logit_scale.exp().item():.1f} elapsed {time.time() - start:.0f}s")
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            accuracy = zero_shot_accuracy(model, per_class=10)
            log(f"step {step + 1}: zero-shot base {accuracy['base']:.1f}% new {accuracy['new']:.1f}%")
    return model.eval()


def used_token_ids():
    """Every token id in the pretraining captions and the zero-shot template (SOS/EOS included)."""
    zero_shot = clip.tokenize([ZERO_SHOT_TEMPLATE.format(name) for name in class_names()]).long()
    ids = torch.cat([caption_tokens().flatten(), zero_shot.flatten()]).unique()
    return ids[ids != 0].tolist()


def save_weights(model, out):
    """Write the compact state dict atomically and its ``<stem>.sha256`` beside it; return the digest."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.part")
    torch.save(compact_state_dict(model, used_token_ids()), partial)
    partial.replace(out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.with_suffix(".sha256").write_text(f"{digest}  {out.name}\n")
    return digest


def _log(line):
    print(line, flush=True)  # runs are long: show progress at once even when stdout is a file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = inspect.signature(pretrain).parameters
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=defaults["steps"].default)
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"].default)
    parser.add_argument("--lr", type=float, default=defaults["lr"].default)
    parser.add_argument("--logit-scale-lr", type=float, default=defaults["logit_scale_lr"].default)
    parser.add_argument("--pool-per-class", type=int, default=defaults["pool_per_class"].default,
                        help="scenes rendered per class once, then seen through random crops and flips")
    parser.add_argument("--eval-every", type=int, default=0, help="zero-shot check every N steps (0: only at the end)")
    parser.add_argument("--layers", type=int, default=POCKET_CLIP_CONFIG["vision_layers"], help="blocks per tower")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest on a shared machine; results depend on it slightly)")
    parser.add_argument("--out", required=True, help="weights file to write, e.g. dpl/clip/assets/pocket_clip.pt")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    args = parser.parse_args(argv)
    if Path(args.out).exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to overwrite it")
    torch.set_num_threads(args.threads)
    model = pretrain(seed=args.seed, layers=args.layers, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                     logit_scale_lr=args.logit_scale_lr, pool_per_class=args.pool_per_class,
                     eval_every=args.eval_every, log=_log)
    accuracy = zero_shot_accuracy(model)
    _log(f"zero-shot accuracy ({ZERO_SHOT_TEMPLATE!r}): base {accuracy['base']:.1f}% "
          f"new {accuracy['new']:.1f}% all {accuracy['all']:.1f}%")
    digest = save_weights(model, args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 2**20:.2f} MiB, sha256 {digest})")


if __name__ == "__main__":
    main()
