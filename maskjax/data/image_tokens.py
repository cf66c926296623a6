"""Image token ids: the data of MaskGIT-style generative training, and the ``"image_tokens"`` modality.

A VQ tokenizer turns each image into an ``h x w`` grid of codebook ids once (``maskjax
tokenize-images`` calls :func:`write_token_records` / :class:`TokenRecordWriter`); generative
training then reads tokens, not pixels. On disk a dataset is a directory of ArrayRecord shards
(``tokens-00000.array_record``, ...) and ``metadata.json``. Each record is a tiny self-describing
binary (no pickle: reading untrusted shards cannot execute code)::

    bytes 0..3    label, int32 little-endian
    bytes 4..     the h*w token ids, uint16 little-endian, row-major

``metadata.json`` holds the format name and version, ``grid`` [h, w], ``num_records``,
``shards``, ``max_token_id`` and ``max_label`` (measured while writing) and, when the writer was
told, ``codebook_size`` and ``num_classes``.

Examples are ``{"tokens": int32 [h*w], "label": int32}``; batches stack them. ``data.kind``:

- ``array_record_tokens``: ``data.path`` (training) and ``data.eval_path`` (held out), each a
  directory written by :func:`write_token_records`;
- ``synthetic``: :class:`SyntheticTokenSource`, a deterministic stand-in for tests and smoke runs:
  each class has a fixed random token grid and each example replaces a share
  (``data.synthetic_noise``) of its positions with random ids, so a model can learn something.

The config names ``data.grid_size`` (h = w), ``data.codebook_size`` and ``data.num_classes``:
they shape the model, so they are set by the recipe and checked against the records.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import grain
import numpy as np

from maskjax.data.modalities import Modality, register_modality

FORMAT_NAME = "maskjax.image_tokens"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
TOKEN_KINDS = ("array_record_tokens", "synthetic")
MAX_CODEBOOK = 1 << 16      # ids are stored as uint16
DEFAULT_SHARD_SIZE = 100_000
_LABEL = struct.Struct("<i")


# --- the record format ----------------------------------------------------------------------------

def encode_token_record(tokens: np.ndarray, label: int) -> bytes:
    """One record: the label (int32 LE) then the token ids (uint16 LE, row-major)."""
    ids = np.asarray(tokens).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= MAX_CODEBOOK):
        raise ValueError(f"token ids must be in [0, {MAX_CODEBOOK}) to be stored as uint16, got "
                         f"[{ids.min()}, {ids.max()}]")
    return _LABEL.pack(int(label)) + ids.astype("<u2").tobytes()


def decode_token_record(record: bytes, length: int) -> tuple[np.ndarray, int]:
    """Inverse of :func:`encode_token_record`: ``(tokens int32 [length], label)``."""
    if len(record) != _LABEL.size + 2 * length:
        raise ValueError(f"corrupt token record: {len(record)} bytes, expected {_LABEL.size + 2 * length} "
                         f"for {length} tokens")
    (label,) = _LABEL.unpack_from(record, 0)
    tokens = np.frombuffer(record, "<u2", count=length, offset=_LABEL.size).astype(np.int32)
    return tokens, label


def _shard_name(i: int) -> str:
    return f"tokens-{i:05d}.array_record"


def _grid_of(tokens: np.ndarray, grid: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    """``tokens`` as [n, h*w] and its grid: from a [n, h, w] array, ``grid``, or a square length."""
    tokens = np.asarray(tokens)
    if tokens.ndim == 3:
        found = (int(tokens.shape[1]), int(tokens.shape[2]))
        if grid is not None and tuple(grid) != found:
            raise ValueError(f"tokens have grid {found} but grid={tuple(grid)} was given")
        return tokens.reshape(tokens.shape[0], -1), found
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [n, h, w] or [n, h*w], got shape {tokens.shape}")
    if grid is None:
        side = int(round(tokens.shape[1] ** 0.5))
        if side * side != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} tokens per image is not a square grid; pass grid=(h, w)")
        grid = (side, side)
    if grid[0] * grid[1] != tokens.shape[1]:
        raise ValueError(f"grid {tuple(grid)} does not hold {tokens.shape[1]} tokens")
    return tokens, (int(grid[0]), int(grid[1]))


class TokenRecordWriter:
    """Writes token grids into ArrayRecord shards plus ``metadata.json`` (on :meth:`close`).

    Use as a context manager and call :meth:`write` once per batch, so a whole dataset never has
    to sit in memory. The output directory is created; old shards and metadata in it are removed
    first (metadata last-written, so a failed run leaves no metadata over partial shards).
    """

    def __init__(self, path: str | os.PathLike, *, grid: tuple[int, int] | None = None,
                 codebook_size: int | None = None, num_classes: int | None = None,
                 shard_size: int = DEFAULT_SHARD_SIZE, source_info: dict | None = None):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if codebook_size is not None and not 1 <= codebook_size <= MAX_CODEBOOK:
            raise ValueError(f"codebook_size must be in [1, {MAX_CODEBOOK}] (uint16 ids), got {codebook_size}")
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        for name in os.listdir(self.path):
            if name == METADATA_FILE or (name.startswith("tokens-") and name.endswith(".array_record")):
                os.remove(os.path.join(self.path, name))
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        self.codebook_size, self.num_classes = codebook_size, num_classes
        self.shard_size, self.source_info = int(shard_size), dict(source_info or {})
        self.shards: list[str] = []
        self.counts: list[int] = []
        self.max_token_id, self.max_label = -1, -1
        self._writer = None
        self.metadata: dict[str, Any] | None = None   # set by close()

    def write(self, tokens: np.ndarray, labels: np.ndarray) -> None:
        """Appends ``tokens`` [n, h, w] or [n, h*w] (ints in [0, 65536)) with int ``labels`` [n]."""
        flat, grid = _grid_of(tokens, self.grid)
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(flat):
            raise ValueError(f"{len(flat)} token grids but {len(labels)} labels")
        self.grid = grid
        if not len(flat):
            return
        if flat.min() < 0 or flat.max() >= MAX_CODEBOOK:   # checked before anything is written
            raise ValueError(f"token ids must be in [0, {MAX_CODEBOOK}) (uint16), got [{flat.min()}, {flat.max()}]")
        if self.codebook_size is not None and flat.max() >= self.codebook_size:
            raise ValueError(f"token id {flat.max()} is outside the codebook of {self.codebook_size}")
        if self.num_classes is not None and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]")
        self.max_token_id = max(self.max_token_id, int(flat.max()))
        self.max_label = max(self.max_label, int(labels.max()))
        from array_record.python import array_record_module

        for row, label in zip(flat, labels):
            if self._writer is None or self.counts[-1] >= self.shard_size:
                self._close_shard()
                name = _shard_name(len(self.shards))
                # group_size:1: one record per chunk, so a random read decodes one record only.
                self._writer = array_record_module.ArrayRecordWriter(os.path.join(self.path, name), "group_size:1")
                self.shards.append(name)
                self.counts.append(0)
            self._writer.write(encode_token_record(row, int(label)))
            self.counts[-1] += 1

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> dict[str, Any]:
        """Closes the last shard and writes ``metadata.json`` (once); returns the metadata."""
        if self.metadata is not None:
            return self.metadata
        self._close_shard()
        if self.grid is None:
            raise ValueError("no token grid was written and no grid was given: nothing describes the data")
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "grid": list(self.grid),
                "num_records": int(sum(self.counts)), "shards": list(self.shards),
                "max_token_id": self.max_token_id, "max_label": self.max_label,
                "codebook_size": self.codebook_size, "num_classes": self.num_classes,
                "source": self.source_info}
        tmp = os.path.join(self.path, METADATA_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=2)
        os.replace(tmp, os.path.join(self.path, METADATA_FILE))
        self.metadata = meta
        return meta

    def __enter__(self) -> "TokenRecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._close_shard()   # no metadata: the directory is not a readable dataset


def write_token_records(path: str | os.PathLike, tokens: np.ndarray, labels: np.ndarray, *,
                        grid: tuple[int, int] | None = None, codebook_size: int | None = None,
                        num_classes: int | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
                        source_info: dict | None = None) -> dict[str, Any]:
    """Writes ``tokens`` [n, h, w] (or [n, h*w] with ``grid``, or a square length) and ``labels``
    [n] as a token dataset in directory ``path``; returns its metadata. ``codebook_size`` and
    ``num_classes``, when given, are recorded and enforced (module docstring)."""
    with TokenRecordWriter(path, grid=grid, codebook_size=codebook_size, num_classes=num_classes,
                           shard_size=shard_size, source_info=source_info) as writer:
        writer.write(tokens, labels)
    return writer.metadata


def read_token_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The checked ``metadata.json`` of a token dataset directory (or of the file itself)."""
    path = os.fspath(path)
    meta_path = path if os.path.isfile(path) else os.path.join(path, METADATA_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"no {METADATA_FILE} in {path}; expected a directory written by "
                                "`maskjax tokenize-images` (write_token_records)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{meta_path}: not a maskjax image-token dataset (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: unsupported format_version {meta.get('format_version')!r}")
    return meta


# --- sources --------------------------------------------------------------------------------------

class ArrayRecordTokenSource:
    """A token dataset written by :func:`write_token_records`, as a random-access source.

    Items: ``{"tokens": int32 [h*w], "label": int32}``; attributes ``metadata``, ``grid``.
    """

    def __init__(self, path: str | os.PathLike):
        self.metadata = read_token_metadata(path)
        path = os.fspath(path)
        self.path = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        self.grid = tuple(int(g) for g in self.metadata["grid"])
        self.length = self.grid[0] * self.grid[1]
        shards = [os.path.join(self.path, s) for s in self.metadata["shards"]]
        missing = [s for s in shards if not os.path.isfile(s)]
        if missing:
            raise FileNotFoundError(f"missing token shards in {self.path}: {missing}")
        self._source = grain.sources.ArrayRecordDataSource(shards) if shards else []
        if len(self._source) != self.metadata["num_records"]:
            raise ValueError(f"{self.path}: metadata says {self.metadata['num_records']} records but the shards "
                             f"hold {len(self._source)}")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        tokens, label = decode_token_record(self._source[int(index)], self.length)
        return {"tokens": tokens, "label": np.int32(label)}

    def __repr__(self) -> str:
        return f"ArrayRecordTokenSource(path={self.path!r}, records={len(self)}, grid={self.grid})"


class SyntheticTokenSource:
    """Deterministic synthetic token grids: a random prototype grid per class, ``noise`` of the
    positions of each example replaced by random ids. Example ``i`` has label ``i % num_classes``;
    the prototypes follow from ``seed``, the examples from ``(seed, split)`` (no data read, picklable)."""

    def __init__(self, num_examples: int, grid_size: int, codebook_size: int, num_classes: int, *,
                 noise: float = 0.25, seed: int = 0, split: int = 0):
        if num_examples < 1 or grid_size < 1 or codebook_size < 1 or num_classes < 1:
            raise ValueError("synthetic tokens need num_examples, grid_size, codebook_size, num_classes >= 1")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"synthetic noise must be in [0, 1], got {noise}")
        self.num_examples, self.length = int(num_examples), int(grid_size) ** 2
        self.grid = (int(grid_size), int(grid_size))
        self.codebook_size, self.num_classes = int(codebook_size), int(num_classes)
        self.noise, self.seed, self.split = float(noise), int(seed), int(split)
        rng = np.random.default_rng([self.seed, 0])
        self.prototypes = rng.integers(0, self.codebook_size, (self.num_classes, self.length)).astype(np.int32)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"synthetic example {index} out of range for {self.num_examples}")
        label = index % self.num_classes
        rng = np.random.default_rng([self.seed, 1, self.split, index])
        tokens = self.prototypes[label].copy()
        noisy = rng.random(self.length) < self.noise
        tokens[noisy] = rng.integers(0, self.codebook_size, int(noisy.sum()))
        return {"tokens": tokens, "label": np.int32(label)}

    def __repr__(self) -> str:
        return (f"SyntheticTokenSource({self.num_examples} examples, grid={self.grid}, "
                f"codebook={self.codebook_size}, classes={self.num_classes})")


def token_data_section(**overrides):
    """The ``config.data`` section of the token modality, defaults first (``overrides`` win).

    ``kind`` (array_record_tokens | synthetic), ``path`` / ``eval_path`` (token dataset
    directories), ``grid_size``, ``codebook_size``, ``num_classes``, the synthetic source's
    ``synthetic_examples`` / ``synthetic_eval_examples`` / ``synthetic_noise`` / ``synthetic_seed``, and the pipeline's
    ``shuffle_seed`` / ``num_workers`` / ``num_train_examples``.
    """
    import ml_collections
    from ml_collections import config_dict

    d = ml_collections.ConfigDict(dict(
        kind="array_record_tokens", grid_size=16, codebook_size=1024, num_classes=1000,
        synthetic_examples=1024, synthetic_eval_examples=256, synthetic_noise=0.25, synthetic_seed=0,
        num_workers=0, shuffle_seed=0))
    d.path = config_dict.placeholder(str)
    d.eval_path = config_dict.placeholder(str)
    d.num_train_examples = config_dict.placeholder(int)
    for key, value in overrides.items():
        d[key] = value
    return d


def synthetic_token_data(config, *, examples: int = 256, eval_examples: int = 64) -> None:
    """Points ``config.data`` (a :func:`token_data_section`) at :class:`SyntheticTokenSource` data of the
    config's grid, codebook and classes: smoke runs and tests read no files."""
    d = config.data
    d.kind = "synthetic"
    d.path = None
    d.eval_path = None
    d.synthetic_examples, d.synthetic_eval_examples = int(examples), int(eval_examples)


def open_token_source(data, split: str):
    """The source of ``split`` ("train" or "eval") that a ``config.data`` section describes."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if data.kind == "synthetic":
        n = data.synthetic_examples if split == "train" else data.synthetic_eval_examples
        # The held-out split draws other examples around the same class prototypes.
        return SyntheticTokenSource(n, data.grid_size, data.codebook_size, data.num_classes,
                                    noise=data.synthetic_noise, seed=data.synthetic_seed, split=int(split == "eval"))
    path = data.path if split == "train" else (data.eval_path or data.path)
    return ArrayRecordTokenSource(path)


class TokenFields(grain.transforms.Map):
    """grain map: keeps ``tokens`` (int32 [L]) and ``label`` (int32), fresh copies."""

    def map(self, element: dict) -> dict:
        """The two fields of one example."""
        return {"tokens": np.array(element["tokens"], np.int32), "label": np.int32(element["label"])}


def make_token_pipeline(source: Any, *, global_batch: int, train: bool, seed: int, num_workers: int = 0,
                        process_index: int | None = None, process_count: int | None = None,
                        num_epochs: int | None = None, drop_remainder: bool = True):
    """This process's grain dataset of token batches ``{"tokens": int32 [b, L], "label": int32 [b]}``.

    The image/text pipelines' conventions (:func:`maskjax.data.pipeline.process_shard`): a
    per-process strided shard, a shuffle reseeded every epoch when training, drop remainder,
    repeat forever when training and one ordered pass otherwise, a checkpointable iterator.
    """
    from maskjax.data.pipeline import batch_and_iterate, process_shard

    ds, process_index, per_process_batch = process_shard(
        source, global_batch=global_batch, seed=seed, process_index=process_index, process_count=process_count,
        num_epochs=num_epochs, num_workers=num_workers, drop_remainder=drop_remainder, unit="token grids")
    if train:
        # Per-process seed; repeat() past the first epoch reseeds the shuffle.
        ds = ds.shuffle(seed=int(np.random.SeedSequence([seed, process_index, 0]).generate_state(1)[0]))
    ds = ds.map(TokenFields())
    return batch_and_iterate(ds, per_process_batch, train=train, num_epochs=num_epochs, num_workers=num_workers,
                             drop_remainder=drop_remainder)


@register_modality("image_tokens")
class ImageTokenModality(Modality):
    """Token grids of images (module docstring) for generative token models such as MaskGIT."""

    def open_source(self, config, split: str):
        """The token source of ``split``: ArrayRecord directories or the synthetic stand-in."""
        return open_token_source(config.data, split)

    def make_pipeline(self, config, source, *, train: bool):
        """Shuffled, repeated per-process batches for training; one ordered pass for evaluation."""
        d = config.data
        return make_token_pipeline(source, global_batch=config.global_batch, train=train, seed=d.shuffle_seed,
                                   num_workers=d.num_workers)

    def batch_spec(self, config) -> dict:
        """``tokens`` i32[B, grid_size**2] and ``label`` i32[B]."""
        import jax
        import jax.numpy as jnp

        b, length = int(config.global_batch), int(config.data.grid_size) ** 2
        return {"tokens": jax.ShapeDtypeStruct((b, length), jnp.int32),
                "label": jax.ShapeDtypeStruct((b,), jnp.int32)}

    def synthetic_batch(self, config, spec: dict, seed: int = 0) -> dict:
        """Uniformly random ids in the codebook and labels in the classes (no data read)."""
        out = super().synthetic_batch(config, spec, seed)
        rng = np.random.default_rng(seed)
        d = config.data
        return {"tokens": rng.integers(0, int(d.codebook_size), out["tokens"].shape).astype(np.int32),
                "label": rng.integers(0, int(d.num_classes), out["label"].shape).astype(np.int32)}

    def take_examples(self, config, source, indices):
        """``({"tokens": int32 [n, L]}, labels int32 [n])``."""
        items = [source[int(i)] for i in indices]
        return ({"tokens": np.stack([it["tokens"] for it in items]).astype(np.int32)},
                np.asarray([it["label"] for it in items], np.int32))

    def check(self, config, errors: list[str]) -> None:
        """Known kind, sizes in range, and ArrayRecord data that matches the config's grid, codebook
        and classes (read from each directory's ``metadata.json``)."""
        d = config.data
        for field in ("grid_size", "codebook_size", "num_classes"):
            if not isinstance(d.get(field), int) or d.get(field) < 1:
                errors.append(f"data.{field} must be an int >= 1, got {d.get(field)!r}")
                return
        if d.codebook_size > MAX_CODEBOOK:
            errors.append(f"data.codebook_size {d.codebook_size} exceeds {MAX_CODEBOOK} (token ids are uint16)")
        if d.kind == "synthetic":
            if not 0.0 <= d.get("synthetic_noise", 0.0) <= 1.0:
                errors.append(f"data.synthetic_noise must be in [0, 1], got {d.synthetic_noise}")
            return
        if d.kind != "array_record_tokens":
            errors.append(f"unknown data.kind {d.kind!r} for image tokens; use one of {TOKEN_KINDS}")
            return
        if not d.get("path"):
            errors.append("data.path is not set (a token directory written by `maskjax tokenize-images`)")
        for field in ("path", "eval_path"):
            if d.get(field):
                errors.extend(_metadata_problems(d, field))


def _metadata_problems(d, field: str) -> list[str]:
    """Why the token directory at ``data.<field>`` does not fit the config (empty: it fits)."""
    path = d[field]
    try:
        meta = read_token_metadata(path)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as e:
        return [f"data.{field}: {e}"]
    problems = []
    if list(meta["grid"]) != [d.grid_size, d.grid_size]:
        problems.append(f"data.{field} {path!r} holds {meta['grid'][0]}x{meta['grid'][1]} token grids but "
                        f"data.grid_size is {d.grid_size}")
    codebook = meta.get("codebook_size")
    if (codebook is not None and codebook != d.codebook_size) or meta.get("max_token_id", -1) >= d.codebook_size:
        problems.append(f"data.{field} {path!r} was tokenized with a codebook of {codebook} (largest id "
                        f"{meta.get('max_token_id')}) but data.codebook_size is {d.codebook_size}")
    if meta.get("max_label", -1) >= d.num_classes:
        problems.append(f"data.{field} {path!r} has labels up to {meta['max_label']} but data.num_classes is "
                        f"{d.num_classes}")
    return problems
