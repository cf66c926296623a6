"""Evaluators of character language models (masked diffusion and the autoregressive baseline):
held-out bits per character with a standard error, and sample quality against sampling steps.

``char_bits``: the method's held-out negative log-likelihood in bits per character, from its
``eval_stats`` sums (``bits_sum``, ``count``) over the held-out blocks. For a masked diffusion
method that is its negative ELBO, an **upper bound** of the NLL estimated by Monte Carlo over
the masking times (``likelihood_samples`` draws per block, each with its own times and masks);
for the autoregressive model (``EXACT_LIKELIHOOD``) it is the exact NLL and one draw is enough.
``is_bound`` says which. The standard error is over evaluation batches (each the mean of its
draws; every batch has the same number of characters because the last partial one is dropped),
so it covers both the text's and the Monte Carlo's variability. Two reference floors come with
it, as ``uniform_bits_per_char`` (``log2 V``: what any model that ignores its input scores,
and also the ELBO of a denoiser that predicts the uniform distribution) and
``unigram_bits_per_char`` (the held-out cross-entropy under the training text's character
frequencies, add-one smoothed).

``char_samples``: ``num`` sequences from the method's own sampler at each number of sampling
steps in ``steps`` (``<method>.sample_steps``; the autoregressive sampler always takes one
network evaluation per character, so its samples are reported once, at steps = the sample length).
The measure is the total-variation distance between the samples' character-bigram distribution
(pairs inside each sample) and the held-out text's (``bigram_tv_S``; ``unigram_tv_S`` likewise),
next to the mean per-sample character entropy in bits (``entropy_bits_S``, from
:func:`maskjax.masking.diffusion_samplers.sample_entropy`) and the share of positions left masked
(``masked_S``). Why this measure: it needs no second model (an AR judge's NLL of the samples would
tie a row to another row's run), and unlike a generative perplexity it cannot be improved by a
low-entropy sampler: repeating the likeliest characters moves the bigram histogram away from the
text's. Its floor is not 0: ``num`` finite samples of real text are themselves at some distance,
so the same statistics of ``num`` random *training* blocks are reported as ``data_bigram_tv_S``,
``data_unigram_tv_S``, ``data_entropy_bits_S`` (the same for every S, repeated so a table can read
them per column). Samples are printed and saved to ``samples_<S>steps.txt`` in the workdir.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from typing import Sequence

import jax
import numpy as np

from maskjax.core.keys import example_keys
from maskjax.core.mesh import batch_divisor, batch_sharding
from maskjax.eval.features import global_batch, say, to_host
from maskjax.eval.registry import register
from maskjax.progress import progress

# Methods whose eval_stats are an exact NLL (not a bound): one likelihood draw suffices.
EXACT_LIKELIHOOD = ("causal_lm",)
LN2 = math.log(2.0)


# --- n-gram statistics (numpy; ids in [0, V), anything else ignored) ----------------------------------

def unigram_distribution(ids: np.ndarray, vocab: int) -> np.ndarray:
    """[V] character frequencies of ``ids`` (any shape); out-of-vocabulary ids are not counted."""
    flat = np.asarray(ids, np.int64).reshape(-1)
    counts = np.bincount(flat[(flat >= 0) & (flat < vocab)], minlength=vocab)[:vocab].astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def bigram_distribution(ids: np.ndarray, vocab: int) -> np.ndarray:
    """[V * V] frequencies of adjacent pairs ``(a, b)`` (index ``a * V + b``) along the last axis of
    ``ids`` (pairs never cross rows); pairs with an out-of-vocabulary id are not counted.

    int64 arithmetic: the data's uint8 ids would overflow in ``a * V + b``.
    """
    ids = np.asarray(ids, np.int64)
    ids = ids.reshape(-1, ids.shape[-1]) if ids.ndim > 1 else ids[None]
    a, b = ids[:, :-1].reshape(-1), ids[:, 1:].reshape(-1)
    ok = (a >= 0) & (a < vocab) & (b >= 0) & (b < vocab)
    counts = np.bincount(a[ok] * vocab + b[ok], minlength=vocab * vocab).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """``0.5 * sum |p - q|`` of two distributions of the same support."""
    return 0.5 * float(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


def unigram_cross_entropy_bits(train_ids: np.ndarray, test_ids: np.ndarray, vocab: int) -> float:
    """Bits per character of ``test_ids`` under the add-one smoothed character frequencies of ``train_ids``."""
    train = np.asarray(train_ids, np.int64).reshape(-1)
    counts = np.bincount(train[(train >= 0) & (train < vocab)], minlength=vocab)[:vocab] + 1.0
    log_p = np.log2(counts / counts.sum())
    return float(-(unigram_distribution(test_ids, vocab) * log_p).sum())


def mean_entropy_bits(samples: np.ndarray, vocab: int) -> float:
    """Mean over rows of each row's character-histogram entropy, in bits (``sample_entropy`` / ln 2)."""
    from maskjax.masking.diffusion_samplers import sample_entropy

    return float(np.mean(np.asarray(sample_entropy(np.asarray(samples, np.int32), vocab)))) / LN2


def sample_statistics(samples: np.ndarray, reference_unigram: np.ndarray, reference_bigram: np.ndarray,
                      vocab: int) -> dict:
    """``{"bigram_tv", "unigram_tv", "entropy_bits", "masked"}`` of ``samples`` [N, L] against a reference text."""
    samples = np.asarray(samples, np.int64)
    return {"bigram_tv": total_variation(bigram_distribution(samples, vocab), reference_bigram),
            "unigram_tv": total_variation(unigram_distribution(samples, vocab), reference_unigram),
            "entropy_bits": mean_entropy_bits(samples, vocab),
            "masked": float(np.mean((samples < 0) | (samples >= vocab)))}


# --- data access ----------------------------------------------------------------------------------

def source_ids(source, max_blocks: int | None = None) -> np.ndarray:
    """The characters of a block source as one 1-D array: its whole stream when it has one
    (:class:`~maskjax.data.text.chars.CharBlocks`), else its blocks (up to ``max_blocks``) joined."""
    stream = getattr(source, "stream", None)
    if stream is not None:
        return np.asarray(stream, np.int64)
    n = len(source) if max_blocks is None else min(len(source), max_blocks)
    return np.concatenate([np.asarray(source[i]["input_ids"], np.int64) for i in range(n)])


def _vocab(method) -> int:
    return int(getattr(method, "vocab_size", None) or method.config.model.vocab_size)


# --- held-out bits per character ----------------------------------------------------------------------

def heldout_bits(method, model, source, *, batch_size: int = 32, max_batches: int | None = None,
                 likelihood_samples: int = 1, seed: int = 0, mesh=None, rules=None) -> dict:
    """Held-out bits per character of ``method`` over ``source`` blocks (module docstring).

    Blocks are read in order (the same on every process); the last partial batch is dropped.
    Returns ``bits_per_char``, ``bits_per_char_se`` (with two or more batches), ``nats_per_char``,
    ``perplexity`` (per character; a bound for diffusion), ``characters`` and ``likelihood_samples``.
    """
    batch_size = min(int(batch_size), len(source))
    if batch_size < 1:
        raise ValueError("the held-out source is empty")
    n_batches = len(source) // batch_size
    if max_batches is not None:
        n_batches = min(n_batches, int(max_batches))
    draws = max(1, int(likelihood_samples))
    stats = jax.jit(lambda m, b, k: method.eval_stats(m, b, k, {}))
    sharding = None
    if mesh is not None and batch_size % batch_divisor(mesh, rules) == 0:
        sharding = batch_sharding(mesh, rules)
    base = jax.random.key(seed)
    per_batch, chars = [], 0.0
    bar = progress(total=n_batches, desc="bits/char eval", unit="batch")
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext(), bar:
        for i in range(n_batches):
            rows = [source[j] for j in range(i * batch_size, (i + 1) * batch_size)]
            batch = global_batch({k: np.stack([r[k] for r in rows]) for k in rows[0]}, sharding)
            bits = count = 0.0
            for d in range(draws):  # independent times and masks per draw: fold the draw into the key
                out = jax.device_get(stats(model, batch, example_keys(jax.random.fold_in(base, d), i, batch_size)))
                bits += float(out["bits_sum"])
                count = float(out["count"])
            per_batch.append(bits / draws / max(count, 1.0))
            chars += count
            bar.update(1)
    values = np.asarray(per_batch, np.float64)
    bpc = float(values.mean())
    out = {"bits_per_char": bpc, "nats_per_char": bpc * LN2, "perplexity": math.exp(min(bpc * LN2, 700.0)),
           "characters": chars, "likelihood_samples": float(draws)}
    if len(values) > 1:
        out["bits_per_char_se"] = float(values.std(ddof=1) / math.sqrt(len(values)))
    return out


@register("char_bits")
def char_bits(model, options, ctx) -> dict:
    """Held-out bits per character (a bound for diffusion, exact for the AR model) and its floors.

    Options: ``batch_size`` (32), ``batches`` (all), ``likelihood_samples`` (diffusion: 1 by
    default; exact methods always 1), ``seed`` (0; the run's ``config.seed`` is folded in, so the
    seeds of a table also vary the Monte Carlo draws).
    """
    method = ctx.method
    exact = method.name in EXACT_LIKELIHOOD
    samples = 1 if exact else int(options.get("likelihood_samples", 1))
    seed = int(options.get("seed", 0)) * 1_000_003 + int(ctx.config.get("seed", 0))
    out = heldout_bits(method, model, ctx.eval_source, batch_size=int(options.get("batch_size", 32)),
                       max_batches=options.get("batches", None), likelihood_samples=samples, seed=seed,
                       mesh=ctx.mesh, rules=ctx.rules)
    vocab = _vocab(method)
    out["is_bound"] = 0.0 if exact else 1.0
    out["uniform_bits_per_char"] = math.log2(vocab)
    out["unigram_bits_per_char"] = unigram_cross_entropy_bits(source_ids(ctx.train_source, 20000),
                                                              source_ids(ctx.eval_source), vocab)
    se = f" ± {out['bits_per_char_se']:.4f}" if "bits_per_char_se" in out else ""
    say(f"held-out {'NLL' if exact else 'NELBO (upper bound)'}: {out['bits_per_char']:.4f}{se} bits/char over "
        f"{int(out['characters'])} characters x {samples} draw(s) (uniform {out['uniform_bits_per_char']:.3f}, "
        f"unigram {out['unigram_bits_per_char']:.3f})")
    return out


# --- sample quality against the number of steps -------------------------------------------------------

def has_step_count(method) -> bool:
    """Whether the method's sampler takes a number of steps (``<method>.sample_steps``)."""
    return "sample_steps" in method.config.get(method.name, {})


def with_sample_steps(method, steps: int):
    """A copy of ``method`` whose sampler runs ``steps`` steps (its config copied, never mutated)."""
    config = copy.deepcopy(method.config)
    with config.unlocked():
        config[method.name].sample_steps = int(steps)
    return type(method)(config)


def draw_samples(method, model, num: int, seed: int, mesh=None) -> np.ndarray:
    """``method.sample(model, key, num)`` as numpy [num, L] (jitted; on the model's mesh)."""
    fn = jax.jit(lambda m, k: method.sample(m, k, num))
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        return to_host(fn(model, jax.random.key(seed)))


def save_samples(path: str, samples: np.ndarray) -> None:
    """Writes one decoded sample per line (a leftover mask prints as ``_``)."""
    from maskjax.data.text import chars

    with open(path, "w") as f:
        for row in np.asarray(samples):
            f.write(chars.decode(row) + "\n")


def sample_quality(method, model, *, steps: Sequence[int], num: int, seed: int, train_source, eval_source,
                   mesh=None, workdir: str | None = None, show: int = 2) -> dict:
    """The ``char_samples`` metrics (module docstring) for each entry of ``steps``."""
    from maskjax.data.text import chars

    vocab = _vocab(method)
    reference = source_ids(eval_source)
    ref_uni, ref_bi = unigram_distribution(reference, vocab), bigram_distribution(reference, vocab)
    length = method.sample_length()
    # The finite-sample floor: `num` random training blocks of the sample length, same statistics.
    train = source_ids(train_source, 20000)
    starts = np.random.default_rng(seed).integers(0, len(train) - length, num)
    floor = sample_statistics(np.stack([train[s:s + length] for s in starts]), ref_uni, ref_bi, vocab)
    runs = [(int(s), with_sample_steps(method, s)) for s in steps] if has_step_count(method) else [(length, method)]
    out: dict[str, float] = {}
    for count, sampler in runs:
        samples = draw_samples(sampler, model, num, seed, mesh)
        for key, value in sample_statistics(samples, ref_uni, ref_bi, vocab).items():
            out[f"{key}_{count}"] = value
        if workdir and jax.process_index() == 0:
            save_samples(os.path.join(workdir, f"samples_{count}steps.txt"), samples)
        say(f"samples, {count} steps: bigram TV {out[f'bigram_tv_{count}']:.3f} (real text "
            f"{floor['bigram_tv']:.3f}), entropy {out[f'entropy_bits_{count}']:.2f} bits")
        for row in samples[:show]:
            say("  " + chars.decode(row))
    for count in sorted({int(s) for s in steps} | {c for c, _ in runs}):
        for key, value in floor.items():
            out[f"data_{key}_{count}"] = value
    return out


@register("char_samples")
def char_samples(model, options, ctx) -> dict:
    """Sample quality vs sampling steps (module docstring).

    Options: ``steps`` ((8, 32, 128)), ``num`` samples (64), ``seed`` (0; ``config.seed`` folded in),
    ``show`` (samples printed per step count, 2).
    """
    seed = int(options.get("seed", 0)) * 1_000_003 + int(ctx.config.get("seed", 0))
    steps = tuple(int(s) for s in options.get("steps", (8, 32, 128)))
    return sample_quality(ctx.method, model, steps=steps, num=int(options.get("num", 64)), seed=seed,
                          train_source=ctx.train_source, eval_source=ctx.eval_source, mesh=ctx.mesh,
                          workdir=ctx.workdir, show=int(options.get("show", 2)))


__all__ = ["EXACT_LIKELIHOOD", "bigram_distribution", "char_bits", "char_samples", "draw_samples",
           "has_step_count", "heldout_bits", "mean_entropy_bits", "sample_quality", "sample_statistics",
           "source_ids", "total_variation", "unigram_cross_entropy_bits", "unigram_distribution",
           "with_sample_steps"]
