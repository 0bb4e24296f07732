"""``python -m dpl.bench --token-dropout N``: our batched token dropout vs a per-sample reference loop.

``reference_token_dropout`` computes importance-weighted token dropout (``docs/METHOD.md`` §4-§7) the way a
straightforward per-sample implementation does: a Python loop over the sequences of the batch; per sequence
the three importance terms from its own attention maps ``[H, L, L]`` and MAG attention ``[K, L]`` (the global
token and, for text, the padding after EOS removed from both axes), each L1-normalised, averaged, min-max
scaled and mapped linearly to ``[p_min, p_max]``; then a loop over the eligible token rows, each with its own
Bernoulli draw and, when drawn, its own noise ``x_j <- x_j * (1 + sigma * eps_j)``. It does not use
``dpl.drople.token_dropout``; the tests check that it gives the same probabilities as ``TokenDropout``.

The benchmark times the kernels of one layer call on identical inputs at ViT-B/16 shapes: importance, drop
probability, draw and perturbation, from the layer's attention maps and MAG attention. Ours is ``TokenDropout``
on the whole batch; the reference is the loop above. The MAG attention is an input of both: it is the MAG
module's output, which a training step computes anyway for the alignment loss at the same layers (its cost,
the same in both, is reported on its own line).

Shapes: ``N`` sequences, ``H`` heads, ``L`` tokens, ``K`` bridge tokens, ``D`` widths.
"""
import statistics
import time

import torch

from dpl.bench.models import RANDOM_ARCHITECTURES
from dpl.clip.prompted import text_layout, vision_layout
from dpl.drople import AlignmentGuidance, TokenDropout, active_length, attended_positions

MODALITIES = ("vision", "text")
L1_EPS = 1e-8  # §4: S / (sum S + 1e-8)


# --------------------------------------------------------------------------------------------------
# The reference: one sequence at a time
# --------------------------------------------------------------------------------------------------
def reference_positions(modality, length, eos=None, n_ctx=0):
    """(global token, scored positions [S] long, eligible positions [E] long) of one sequence (§4, §7).

    Vision: CLS (0) is global, every other token is scored and eligible. Text: EOS is global, the tokens
    before it are scored, SOS and the ``n_ctx`` context tokens (those before EOS) are eligible.
    """
    if modality == "vision":
        return 0, torch.arange(1, length), torch.arange(1, length)
    return eos, torch.arange(eos), torch.arange(min(n_ctx + 1, eos))


def reference_probability(attn, mag_attn, global_index, scored, p_min, p_max):
    """[S] drop probability of the scored tokens of one sequence. attn [H, L, L], mag_attn [K, L]."""
    inner = attn[:, scored][:, :, scored]  # [H, S, S]: the global token and padding out of both axes
    diagonal = torch.eye(len(scored), dtype=torch.bool)
    # the diagonal is masked before the max; probabilities are >= 0, so 0 never beats another key
    self_score = inner.masked_fill(diagonal, 0.0).amax(dim=-1).mean(dim=0)  # [S]
    global_score = attn[:, global_index, scored].mean(dim=0)  # [S]: the global token's row
    mag_score = mag_attn[:, scored].amax(dim=0)  # [S]: max over the bridge tokens
    terms = [score / (score.sum() + L1_EPS) for score in (self_score, global_score, mag_score)]
    importance = sum(terms) / len(terms)
    spread = importance.max() - importance.min()
    scaled = (importance - importance.min()) / (spread if spread > 0 else 1.0)
    return p_max - scaled * (p_max - p_min)


def reference_perturb(x, probability, eligible, sigma, generator=None, dropped=None, noise=None):
    """Perturb one sequence x [L, D] token row by token row; returns a new tensor.

    probability [L]; eligible [E] positions. Each eligible row draws u ~ U(0, 1) and is multiplied by
    ``1 + sigma * eps``, eps ~ N(0, I_D), when u < p. ``dropped`` [L] bool and ``noise`` [L, D] replace the
    draws (tests); left None, they are drawn from ``generator``.
    """
    x = x.clone()
    for j in eligible.tolist():
        drop = dropped[j] if dropped is not None else torch.rand((), generator=generator) < probability[j]
        if drop:
            eps = noise[j] if noise is not None else torch.randn(x.shape[-1], generator=generator)
            x[j] = x[j] * (1.0 + sigma * eps)
    return x


def reference_token_dropout(x, attn, mag_attention, dropout, modality, tokenized=None, n_ctx=0, generator=None,
                            dropped=None, noise=None):
    """Importance-weighted gaussian token dropout of a batch, one sequence at a time.

    x [N, L, D]; attn [N, H, L, L]; ``mag_attention(i, tokens [L_i, D]) -> [K, L_i]`` gives sequence i's MAG
    attention over its tokens up to EOS (text) or all of them (vision); ``dropout``: a ``TokenDropout`` whose
    p_min, p_max and sigma are used; tokenized [N, L] ids (text: EOS = argmax). ``dropped`` [N, L] and
    ``noise`` [N, L, D] replace the draws (tests). Returns (perturbed x [N, L, D], probability [N, L], 0 on
    tokens that are not eligible).
    """
    outputs, probabilities = [], []
    for i in range(x.shape[0]):
        eos = int(tokenized[i].argmax()) if modality == "text" else None
        global_index, scored, eligible = reference_positions(modality, x.shape[1], eos, n_ctx)
        active = x.shape[1] if modality == "vision" else eos + 1  # MAG attends up to EOS
        probability_scored = reference_probability(attn[i], mag_attention(i, x[i, :active]), global_index, scored,
                                                   dropout.p_min, dropout.p_max)
        by_position = torch.zeros(x.shape[1])
        by_position[scored] = probability_scored
        probability = torch.zeros(x.shape[1])
        probability[eligible] = by_position[eligible]  # eligible tokens are scored ones
        outputs.append(reference_perturb(x[i], probability, eligible, dropout.sigma, generator,
                                         None if dropped is None else dropped[i], None if noise is None else noise[i]))
        probabilities.append(probability)
    return torch.stack(outputs), torch.stack(probabilities)


def per_sample_mag(mag, modality):
    """``mag_attention`` for ``reference_token_dropout``: the MAG module on one sequence's tokens."""
    def attention(i, tokens):
        with torch.no_grad():
            return mag(tokens[None], modality)[0][0]  # [K, L_i]
    return attention


# --------------------------------------------------------------------------------------------------
# Inputs at ViT-B/16 shapes
# --------------------------------------------------------------------------------------------------
ARCH = RANDOM_ARCHITECTURES["ViT-B/16"]
N_CTX, VISION_PROMPTS, MAG_TOKENS = 4, 4, 64  # the DropoutPrompt config's 4 + 4 prompts, 64 bridge tokens
SOS_ID, EOS_ID = ARCH["vocab_size"] - 2, ARCH["vocab_size"] - 1  # EOS has the largest id


def shape(modality, count):
    """(N, H, L, D) of one layer call."""
    if modality == "vision":
        width = ARCH["vision_width"]
        tokens = 1 + (ARCH["image_resolution"] // ARCH["vision_patch_size"]) ** 2 + VISION_PROMPTS
        return count, width // 64, tokens, width  # CLIP's heads are width // 64
    return count, ARCH["transformer_heads"], ARCH["context_length"], ARCH["transformer_width"]


def synthetic_tokenized(count, generator):
    """[C, 77] ids of "SOS ctx*n_ctx name . EOS pad": class names of 1..6 tokens, so EOS positions differ."""
    ids = torch.zeros(count, ARCH["context_length"], dtype=torch.long)
    for row in range(count):
        name = int(torch.randint(1, 7, (), generator=generator))
        body = torch.randint(1, SOS_ID, (N_CTX + name + 1,), generator=generator)  # ctx, name, "."
        ids[row, :len(body) + 2] = torch.cat([torch.tensor([SOS_ID]), body, torch.tensor([EOS_ID])])
    return ids


def random_attention(count, heads, length, causal, generator):
    """[N, H, L, L] softmax of random logits (causal for text, as CLIP's text attention)."""
    logits = 2.0 * torch.randn(count, heads, length, length, generator=generator)
    if causal:
        logits = logits.masked_fill(~torch.ones(length, length, dtype=torch.bool).tril(), -torch.inf)
    return logits.softmax(dim=-1)


def layer_inputs(modality, count, seed=0):
    """{"x", "attn", "tokenized", "layout"} of one layer call with ``count`` sequences."""
    generator = torch.Generator().manual_seed(seed)
    n, heads, length, width = shape(modality, count)
    x = torch.randn(n, length, width, generator=generator)
    attn = random_attention(n, heads, length, modality == "text", generator)
    if modality == "vision":
        return dict(x=x, attn=attn, tokenized=None, layout=vision_layout(n, length, VISION_PROMPTS, x.device))
    tokenized = synthetic_tokenized(n, generator)
    # the end of the last EOS on the host, as the class-prompt buffers give it to a training step
    return dict(x=x, attn=attn, tokenized=tokenized,
                layout=text_layout(tokenized, N_CTX, active_length=int(tokenized.argmax(dim=-1).max()) + 1))


def bench_mag(seed=0):
    torch.manual_seed(seed)
    return AlignmentGuidance(MAG_TOKENS, ARCH["vision_width"], ARCH["transformer_width"])


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------
def batched_mag_attention(mag, modality, inputs):
    """[N, K, L'] MAG attention of the whole batch over each sequence's attended positions, as the hook computes
    it: over the first L' = ``active_length`` positions (text: up to the last EOS, vision: all)."""
    layout, x = inputs["layout"], inputs["x"]
    length = active_length(layout, x.shape[1])
    return mag(x[:, :length], modality, attended_positions(layout, length))[0]


def layer_calls(modality, inputs, dropout, mag, seed=0):
    """{"ours": f, "reference": f}: the token-dropout kernels of one layer call each on ``inputs`` (the MAG
    attention given), returning the perturbed tokens."""
    generator = torch.Generator().manual_seed(seed)
    mag_attn = batched_mag_attention(mag, modality, inputs)

    def ours():
        return dropout(inputs["x"], inputs["layout"], inputs["attn"], mag_attn)

    def reference():
        return reference_token_dropout(inputs["x"], inputs["attn"], lambda i, tokens: mag_attn[i, :, :tokens.shape[0]],
                                       dropout, modality, inputs["tokenized"], N_CTX, generator)[0]

    return {"ours": ours, "reference": reference}


def mag_attention_ms(modality, inputs, mag, repeats):
    """Median wall ms of the batched MAG attention of one layer call (not part of either kernel)."""
    return 1e3 * time_calls({"mag": lambda: batched_mag_attention(mag, modality, inputs)}, repeats)["mag"][0]


def time_calls(calls, repeats, warmup=1):
    """{name: (wall seconds per call, process CPU seconds per call)}, medians; calls interleaved so that a
    change of machine load reaches both."""
    times = {name: ([], []) for name in calls}
    for rep in range(warmup + repeats):
        for name, call in calls.items():
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            if rep >= warmup:
                times[name][0].append(time.perf_counter() - wall)
                times[name][1].append(time.process_time() - cpu)
    return {name: (statistics.median(walls), statistics.median(cpus)) for name, (walls, cpus) in times.items()}


def token_dropout_rows(repeats, batch_size, num_classes, seed=0):
    """One row per modality: per-call ms (wall and process CPU) of ours and the reference, and their ratios."""
    dropout, mag = TokenDropout(), bench_mag(seed)
    rows = []
    with torch.no_grad():
        for modality in MODALITIES:
            count = batch_size if modality == "vision" else num_classes
            inputs = layer_inputs(modality, count, seed)
            times = time_calls(layer_calls(modality, inputs, dropout, mag, seed), repeats)
            (ours, ours_cpu), (ref, ref_cpu) = times["ours"], times["reference"]
            rows.append({
                "modality": modality, "shape": list(shape(modality, count)), "mag_tokens": MAG_TOKENS,
                "mag_attention_ms": mag_attention_ms(modality, inputs, mag, repeats),
                "repeats": repeats, "ours_ms": 1e3 * ours, "reference_ms": 1e3 * ref,
                "ours_cpu_ms": 1e3 * ours_cpu, "reference_cpu_ms": 1e3 * ref_cpu,
                "ratio": ref / ours, "cpu_ratio": ref_cpu / ours_cpu if ours_cpu > 0 else None,
            })
    return rows


def profiles_text(batch_size, num_classes, calls=5, rows=12, seed=0):
    """torch.profiler tables (top operators by self CPU time) of both paths, per modality."""
    from torch.profiler import ProfilerActivity, profile

    dropout, mag = TokenDropout(), bench_mag(seed)
    parts = []
    with torch.no_grad():
        for modality in MODALITIES:
            inputs = layer_inputs(modality, batch_size if modality == "vision" else num_classes, seed)
            for name, call in layer_calls(modality, inputs, dropout, mag, seed).items():
                call()  # warm-up outside the profile
                wall = time.perf_counter()
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(calls):
                        call()
                wall = (time.perf_counter() - wall) / calls
                events = prof.key_averages()
                operators = sum(event.self_cpu_time_total for event in events) / calls / 1e3  # us -> ms
                parts.append(f"\nProfile, {modality}, {name} ({calls} calls): operators' self CPU time "
                             f"{operators:.2f} ms of {1e3 * wall:.2f} ms wall per call under the profiler, which "
                             f"adds a cost per operator call (the rest: Python, dispatch, profiler)\n"
                             + events.table(sort_by="self_cpu_time_total", row_limit=rows))
    return "\n".join(parts)


def token_dropout_text(rows, meta):
    lines = ["Token dropout kernels (importance, probability, draw, perturbation), one layer call: batched "
             "(TokenDropout) vs per-sample reference loop",
             f"{meta['date']}  {meta['command']}",
             f"host {meta['host']} ({meta['cpu_count']} CPUs), torch {meta['torch']}, {meta['torch_threads']} "
             f"threads, load average {meta['load_average']}",
             "", "| modality | N x H x L x D | ours ms | reference ms | x ours | ours CPU ms | reference CPU ms "
                 "| x ours (CPU) |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cpu_ratio = "n/a" if row["cpu_ratio"] is None else f"{row['cpu_ratio']:.2f}"
        lines.append(f"| {row['modality']} | {' x '.join(map(str, row['shape']))} | {row['ours_ms']:.2f} | "
                     f"{row['reference_ms']:.2f} | {row['ratio']:.2f} | {row['ours_cpu_ms']:.2f} | "
                     f"{row['reference_cpu_ms']:.2f} | {cpu_ratio} |")
    lines.append(f"(medians of {rows[0]['repeats']} calls each, interleaved; K = {rows[0]['mag_tokens']} bridge "
                 f"tokens; 'x ours' = reference / ours)")
    lines.append("MAG attention, an input of both (the MAG module's, shared with its loss): "
                 + ", ".join(f"{row['modality']} {row['mag_attention_ms']:.2f} ms" for row in rows))
    return "\n".join(lines)
