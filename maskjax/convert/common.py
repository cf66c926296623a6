"""Shared conversion machinery: error types, tensor transforms and a rule-driven key mapping.

A converter is a list of :class:`Rule` s. Each rule ties one maskjax variable (a path such as
``("encoder", "blocks", "0", "attn", "qkv", "kernel")``) to one or more source tensors (PyTorch
state-dict keys) with a pair of exact transforms (transpose, reshape, concatenate, split). The
same list drives both directions, so a round trip is exact by construction, and every error can
name the source key it is about.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from maskjax.errors import UserError

Path = tuple[str, ...]


class ConversionError(UserError, ValueError):
    """A checkpoint cannot be converted; the message names the offending key."""


class MissingKeyError(ConversionError):
    """The checkpoint lacks a tensor the target architecture needs."""


class UnexpectedKeyError(ConversionError):
    """The checkpoint holds tensors the target architecture has no place for."""


class ShapeMismatchError(ConversionError):
    """A tensor's shape differs from what the target architecture expects."""


class ArchitectureMismatchError(ConversionError):
    """The checkpoint is a different architecture (size, patch, kind) than the one requested."""


class JsonSpec:
    """JSON (de)serialisation of a converted-model spec dataclass; ``SPEC_NAME`` names it in errors."""

    SPEC_NAME = "model-spec"

    def to_json(self) -> str:
        """JSON text of the spec."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """Spec from a dict (unknown fields are an error, so typos do not pass silently)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.SPEC_NAME} field(s) {unknown}; known: {sorted(names)}")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One maskjax variable <-> one or more source tensors, with exact transforms both ways."""

    path: Path
    keys: tuple[str, ...]
    to_maskjax: Callable[..., np.ndarray]
    to_source: Callable[[np.ndarray], tuple[np.ndarray, ...]]


# --- transforms (written with array methods only, so they also run on abstract shapes) ---------

def copy_rule(path: Path, key: str) -> Rule:
    """Same tensor on both sides (biases, LayerNorm weights, tokens, position embeddings)."""
    return Rule(path, (key,), lambda x: x, lambda x: (x,))


def linear_rule(path: Path, key: str) -> Rule:
    """torch Linear weight [out, in] <-> maskjax kernel [in, out]."""
    return Rule(path, (key,), lambda w: w.T, lambda k: (k.T,))


def conv_patch_rule(path: Path, key: str, patch: int, in_chans: int) -> Rule:
    """Stride-p Conv2d weight [D, C, p, p] <-> PatchEmbed kernel [p*p*C, D] in (row, col, channel) order."""

    def to_maskjax(w):
        return w.transpose(2, 3, 1, 0).reshape(patch * patch * in_chans, w.shape[0])

    def to_source(k):
        return (k.reshape(patch, patch, in_chans, k.shape[-1]).transpose(3, 2, 0, 1),)

    return Rule(path, (key,), to_maskjax, to_source)


def qkv_weight_rule(path: Path, keys: tuple[str, str, str]) -> Rule:
    """Separate query/key/value Linear weights [D, D] <-> one qkv kernel [D, 3D] (q | k | v columns)."""

    def to_source(k):
        d = k.shape[-1] // 3
        return k[:, :d].T, k[:, d:2 * d].T, k[:, 2 * d:].T

    return Rule(path, keys, lambda q, k, v: np.concatenate([q, k, v], axis=0).T, to_source)


def qkv_bias_rule(path: Path, keys: tuple[str, str, str]) -> Rule:
    """Separate query/key/value biases [D] <-> one qkv bias [3D]."""

    def to_source(b):
        d = b.shape[0] // 3
        return b[:d], b[d:2 * d], b[2 * d:]

    return Rule(path, keys, lambda q, k, v: np.concatenate([q, k, v], axis=0), to_source)


# --- nested <-> flat trees ---------------------------------------------------------------------

def hf_layer_body_rules(src: str, dst: Path) -> list[Rule]:
    """Attention output, MLP and LayerNorm rules of one HF ViT-style layer (``src``) <-> a ``Block``.

    HF's ViT, ViT-MAE and VideoMAE layers share these names; they differ only in the q/k/v biases.
    """
    rules = []
    for name, layer in (("attention.output.dense", "attn.proj"), ("intermediate.dense", "mlp.fc1"),
                        ("output.dense", "mlp.fc2")):
        path = dst + tuple(layer.split("."))
        rules += [linear_rule(path + ("kernel",), f"{src}.{name}.weight"),
                  copy_rule(path + ("bias",), f"{src}.{name}.bias")]
    for name, norm in (("layernorm_before", "norm1"), ("layernorm_after", "norm2")):
        rules += [copy_rule(dst + (norm, "scale"), f"{src}.{name}.weight"),
                  copy_rule(dst + (norm, "bias"), f"{src}.{name}.bias")]
    return rules


def flatten(tree: Mapping) -> dict[Path, np.ndarray]:
    """Nested dict -> {path tuple (string keys): leaf}."""
    out: dict[Path, np.ndarray] = {}

    def walk(node, prefix):
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, prefix + (str(k),))
        elif node is not None:
            out[prefix] = node

    walk(tree, ())
    return out


def unflatten(flat: Mapping[Path, np.ndarray]) -> dict:
    """{path tuple: leaf} -> nested dict with string keys."""
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return out


def fmt_path(path: Path) -> str:
    """A maskjax variable path as it is written in messages: ``encoder/blocks/0/attn/qkv/kernel``."""
    return "/".join(path)


def _shape(x) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _preview(keys: Sequence[str], n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def expected_source_shapes(rules: Iterable[Rule], shapes: Mapping[Path, tuple[int, ...]]) -> dict[str, tuple]:
    """Source-side shape of every key the rules read, derived from the maskjax shapes (no data)."""
    out: dict[str, tuple] = {}
    for rule in rules:
        abstract = jax.ShapeDtypeStruct(shapes[rule.path], np.float32)
        for key, s in zip(rule.keys, jax.eval_shape(rule.to_source, abstract)):
            out[key] = _shape(s)
    return out


def apply_rules(state_dict: Mapping[str, np.ndarray], rules: Sequence[Rule],
                shapes: Mapping[Path, tuple[int, ...]], *, what: str,
                ignore: Callable[[str], bool] = lambda key: False) -> dict[Path, np.ndarray]:
    """Source state dict -> flat maskjax variables, checking every key and shape first.

    Raises :class:`MissingKeyError`, :class:`ShapeMismatchError` or :class:`UnexpectedKeyError`
    naming the keys (and both shapes); ``what`` describes the target in those messages.
    Keys for which ``ignore(key)`` is true are allowed to be left over.
    """
    expected = expected_source_shapes(rules, shapes)
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise MissingKeyError(f"checkpoint is missing {len(missing)} key(s) needed for {what}: "
                              f"{_preview(missing)}")
    wrong = [(k, _shape(state_dict[k]), s) for k, s in expected.items() if _shape(state_dict[k]) != s]
    if wrong:
        lines = "; ".join(f"{k!r}: checkpoint has shape {a}, {what} expects {b}" for k, a, b in wrong[:8])
        more = f" (and {len(wrong) - 8} more)" if len(wrong) > 8 else ""
        raise ShapeMismatchError(f"shape mismatch for {len(wrong)} key(s): {lines}{more}")
    unexpected = [k for k in state_dict if k not in expected and not ignore(k)]
    if unexpected:
        raise UnexpectedKeyError(f"checkpoint has {len(unexpected)} key(s) that {what} has no place for: "
                                 f"{_preview(unexpected)}")
    out = {}
    for rule in rules:
        value = rule.to_maskjax(*(np.asarray(state_dict[k]) for k in rule.keys))
        out[rule.path] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def invert_rules(flat: Mapping[Path, np.ndarray], rules: Sequence[Rule]) -> dict[str, np.ndarray]:
    """Flat maskjax variables -> source state dict (the exact inverse of :func:`apply_rules`)."""
    covered = {r.path for r in rules}
    extra = [fmt_path(p) for p in flat if p not in covered]
    if extra:
        raise ConversionError(f"maskjax variables without a source key (converter bug or a different "
                              f"model): {_preview(extra)}")
    out: dict[str, np.ndarray] = {}
    for rule in rules:
        if rule.path not in flat:
            raise MissingKeyError(f"maskjax parameters lack {fmt_path(rule.path)!r} "
                                  f"(needed for {', '.join(rule.keys)})")
        values = rule.to_source(np.asarray(flat[rule.path]))
        for key, value in zip(rule.keys, values):
            out[key] = np.ascontiguousarray(value)
    return out


def block_count(keys: Iterable[str], prefix: str) -> int:
    """Number of ``{prefix}{i}.`` blocks in ``keys`` (checks they are numbered 0..n-1)."""
    found = set()
    for key in keys:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    if found and found != set(range(len(found))):
        raise ConversionError(f"blocks under {prefix!r} are not numbered 0..{len(found) - 1}: {sorted(found)}")
    return len(found)
