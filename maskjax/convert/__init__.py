"""Checkpoint converters: official MAE and Hugging Face ViTMAE / ViT <-> maskjax.

Importing this package never imports torch, transformers or safetensors; the functions that
read or write PyTorch-world files import them on use and say ``pip install 'maskjax[convert]'``
when they are missing. See ``docs/convert_mae.md`` for the command-line guide.
"""

from maskjax.convert.common import (ArchitectureMismatchError, ConversionError, MissingKeyError,
                                    ShapeMismatchError, UnexpectedKeyError)
from maskjax.convert.hf_vit import convert_hf_checkpoint, hf_config, hf_to_maskjax, load_hf, maskjax_to_hf, save_hf
from maskjax.convert.mae_official import (convert_official_checkpoint, inspect_official, maskjax_to_official,
                                          official_to_maskjax)
from maskjax.convert.store import (ModelSpec, load_converted, load_converted_variables, merge_model,
                                   model_variables, read_train_workdir, save_converted)
from maskjax.convert.torch_io import UnsafeCheckpointError, load_state_dict

__all__ = [
    "ArchitectureMismatchError", "ConversionError", "MissingKeyError", "ModelSpec", "ShapeMismatchError",
    "UnexpectedKeyError", "UnsafeCheckpointError", "convert_hf_checkpoint", "convert_official_checkpoint",
    "hf_config", "hf_to_maskjax", "inspect_official", "load_converted", "load_converted_variables", "load_hf",
    "load_state_dict", "maskjax_to_hf", "maskjax_to_official", "merge_model", "model_variables",
    "official_to_maskjax", "read_train_workdir", "save_converted", "save_hf",
]
