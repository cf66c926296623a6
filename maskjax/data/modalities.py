"""Input pipelines by modality: how the trainer opens a method's data without knowing the method.

A method declares ``modality = "image"`` (the default), ``"video"``, ``"audio"`` or ``"text"``;
the trainer asks :func:`get_modality` for the matching :class:`Modality`, which opens the train /
eval sources from ``config.data``, builds the grain pipeline of host batches, checks the data
fields before anything is compiled, gives evaluators examples (``take_examples``) and gives
``bench``/``fitcheck`` the batch layout (``batch_spec``, ``synthetic_batch``).

Modalities register themselves (``@register_modality``): the built-in ones live in this module
and in ``maskjax/data/<name>/modality.py``, which :func:`get_modality` finds by walking the
package; a package outside maskjax adds one under the ``maskjax.modalities`` entry-point group.
"""

from __future__ import annotations

import os
from typing import Any, Callable

_REGISTRY: dict[str, Callable[[], "Modality"]] = {}


class Modality:
    """The data side of one kind of input; subclasses fill in every method."""

    name = "?"

    def prepare(self, config, workdir: str) -> None:
        """One-time work before the run (e.g. training a vocabulary); may fill config fields."""

    def open_source(self, config, split: str) -> Any:
        """The random-access source of ``split`` ("train" or "eval")."""
        raise NotImplementedError

    def make_pipeline(self, config, source, *, train: bool) -> Any:
        """The grain dataset of per-process host batches (dicts of numpy arrays)."""
        raise NotImplementedError

    def check(self, config, errors: list[str]) -> None:
        """Appends a message to ``errors`` for each problem in ``config.data``."""

    def batch_spec(self, config) -> dict:
        """Global shapes and dtypes of one training batch (``jax.ShapeDtypeStruct`` by key)."""
        raise NotImplementedError(f"the {self.name!r} modality has no batch_spec")

    def synthetic_batch(self, config, spec: dict, seed: int = 0) -> dict:
        """This process's share of a batch of random values with ``spec``'s shapes (no data read).

        Floats are standard normal, integers 0 except ``label`` (0 or 1); override for inputs
        with structure (token ids).
        """
        import jax
        import numpy as np

        rng = np.random.default_rng(seed)
        share = jax.process_count()
        out = {}
        for name, s in spec.items():
            shape = (s.shape[0] // share,) + tuple(s.shape[1:])
            if np.issubdtype(s.dtype, np.floating):
                out[name] = rng.standard_normal(shape, dtype=np.float32).astype(s.dtype)
            elif name.endswith("label"):
                out[name] = rng.integers(0, 2, shape).astype(s.dtype)
            else:
                out[name] = np.zeros(shape, s.dtype)
        return out

    def take_examples(self, config, source, indices) -> tuple[Any, Any]:
        """``(inputs, labels)`` of ``source[indices]`` with eval preprocessing (evaluators).

        ``inputs`` is the numpy array the method's encoder takes (batch axis first).
        """
        raise NotImplementedError(f"the {self.name!r} modality has no example loader for evaluators")


def register_modality(name: str):
    """Class decorator registering a :class:`Modality` under ``name``."""

    def wrap(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_modality(name: str) -> Modality:
    """The registered modality ``name`` (clear error listing the known ones)."""
    _import_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown data modality {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]()


def _import_builtin() -> None:
    # Every `modality` module of a sub-package of maskjax.data, plus entry-point plugins; found by
    # walking the package, so this module imports none of them (no cycle, no hand-kept list).
    from maskjax import plugins

    plugins.discover_named("maskjax.data", "modality", plugins.MODALITIES)


IMAGE_KINDS = ("folder", "array_record", "tfds")


@register_modality("image")
class ImageModality(Modality):
    """Images from folders/tars, ArrayRecord shards or TFDS, through ``make_image_pipeline``."""

    def open_source(self, config, split: str):
        """``data.path`` at ``data.split`` for train; ``data.eval_path`` (or path) at ``data.eval_split``."""
        from maskjax.data.sources import open_image_source

        d = config.data
        path = d.path if split == "train" else (d.eval_path or d.path)
        name = d.split if split == "train" else d.eval_split
        return open_image_source(d.kind, path=path, split=None if d.kind == "array_record" else name,
                                 name=d.name, data_dir=d.data_dir)

    def make_pipeline(self, config, source, *, train: bool):
        """MAE pre-training augmentation on the training split (``data.augment``)."""
        from maskjax.data.bad_records import DEFAULT_MAX_BAD_FRACTION
        from maskjax.data.pipeline import make_image_pipeline

        d = config.data
        return make_image_pipeline(source, global_batch=config.global_batch, image_size=d.image_size,
                                   train=train, seed=d.shuffle_seed, augment=d.augment if train else "none",
                                   num_workers=d.num_workers, crop_pct=d.crop_pct,
                                   max_bad_fraction=d.get("max_bad_fraction", DEFAULT_MAX_BAD_FRACTION))

    def batch_spec(self, config) -> dict:
        """``image`` f32[B, S, S, C] and ``label`` i32[B]."""
        import jax
        import jax.numpy as jnp

        b, s, c = int(config.global_batch), int(config.data.image_size), int(config.get("model", {}).get("in_chans", 3))
        return {"image": jax.ShapeDtypeStruct((b, s, s, c), jnp.float32),
                "label": jax.ShapeDtypeStruct((b,), jnp.int32)}

    def take_examples(self, config, source, indices):
        """Resized, center-cropped, normalised images [n, S, S, 3] and int labels."""
        from maskjax.data.pipeline import take_arrays

        return take_arrays(source, indices, config.data.image_size, crop_pct=config.data.crop_pct)

    def check(self, config, errors: list[str]) -> None:
        """Paths exist (and a folder path is a directory or tar) for folder/array_record data; a
        dataset name for TFDS; a known ``data.augment``; ``data.max_bad_fraction`` in [0, 1]."""
        from maskjax.data.pipeline import AUGMENTATIONS
        from maskjax.data.sources import _TAR_SUFFIXES

        data = config.data
        if data.kind in ("folder", "array_record"):
            for field in ("path", "eval_path"):
                path = data.get(field)
                if field == "path" and not path:
                    errors.append(f"data.path is not set (data.kind={data.kind!r} reads images from it)")
                elif path and not os.path.exists(path):
                    errors.append(f"data.{field} {path!r} does not exist")
                elif (path and data.kind == "folder" and os.path.isfile(path)
                      and not path.lower().endswith(_TAR_SUFFIXES)):
                    errors.append(f"data.{field} {path!r} is a file but not a tar archive; data.kind='folder' "
                                  f"reads a directory of <class>/<file> images or a {'/'.join(_TAR_SUFFIXES)}")
        elif data.kind == "tfds":
            if not data.get("name"):
                errors.append("data.name is not set (data.kind='tfds' needs a TFDS dataset name)")
        else:
            errors.append(f"unknown data.kind {data.kind!r} for images; use one of {IMAGE_KINDS}")
        if data.get("augment", "mae") not in AUGMENTATIONS:
            errors.append(f"unknown data.augment {data.augment!r} for images; use one of {AUGMENTATIONS}")
        fraction = data.get("max_bad_fraction", 0.0)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            errors.append(f"data.max_bad_fraction must be a number in [0, 1] (the share of unreadable images "
                          f"to skip before stopping), got {fraction!r}")
