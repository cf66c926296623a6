"""Hugging Face BERT / ELECTRA checkpoints <-> maskjax text models, both directions.

=========================== ========================================= ==========================================
HF architecture             key prefixes                              maskjax module (TextModelSpec.kind)
=========================== ========================================= ==========================================
BertForMaskedLM             ``bert.*``, ``cls.predictions.*``         BertPretrainer ("bert")
BertForPreTraining          + ``bert.pooler.*``, ``cls.seq_relationship.*``  BertPretrainer(nsp=True) ("bert")
ElectraForMaskedLM          ``electra.*``, ``generator_*``            BertPretrainer(embedding_size=E, head_act="gelu")
ElectraForPreTraining       ``electra.*``, ``discriminator_*``        ElectraDiscriminator ("electra_discriminator")
BertModel / ElectraModel    ``embeddings.*``, ``encoder.*``           BertEncoder ("encoder")
generator + discriminator   two checkpoints                           Electra ("electra"), see :func:`electra_from_hf`
=========================== ========================================= ==========================================

Any of them also loads as a bare :class:`BertEncoder` (heads dropped) for fine-tuning:
:func:`encoder_from_hf`. Every mapping is an exact permutation of values (Linear weights are
transposed), so round trips are bitwise. Tied weights (``cls.predictions.decoder.*``,
``generator_lm_head.weight``) are checked against the embeddings they are tied to and not stored
twice. HF's ``hidden_act="gelu"`` is exact GELU; ``gelu_new`` / ``gelu_pytorch_tanh`` map to
maskjax's ``"gelu_tanh"`` (see :mod:`maskjax.models.bert`). Files are read safely only
(safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, Mapping

import numpy as np
from flax import nnx

from maskjax.convert.common import (ArchitectureMismatchError, ConversionError, MissingKeyError, apply_rules,
                                    flatten, invert_rules, unflatten)
from maskjax.convert.hf_bert_spec import (KINDS, SPEC_FILE, TextModelSpec, build_module, check_exportable,
                                          check_params,
                                          detect_architecture, family, hf_config, hf_text_config, layout, module_spec,
                                          text_rules)
from maskjax.models.bert import BertEncoder, BertPretrainer, TextConfig
from maskjax.models.electra import Electra, ElectraDiscriminator
from maskjax.progress import phase

__all__ = [
    "KINDS", "SPEC_FILE", "TextModelSpec", "bert_from_hf", "bert_to_hf", "build_module", "convert_hf_bert_checkpoint",
    "convert_hf_electra_pair", "convert_maskjax_to_hf_bert", "detect_architecture", "electra_discriminator_from_hf", "electra_from_hf",
    "encoder_from_hf", "from_hf", "hf_config", "hf_text_config", "hf_to_maskjax_text", "layout",
    "load_text_converted", "maskjax_to_hf_text", "module_params", "module_spec", "read_hf", "save_text_converted",
    "text_rules",
]


# --- reading HF checkpoints ----------------------------------------------------------------------

def read_hf(src: Any, config: Mapping | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """(state dict as float32 numpy, config dict) of a folder / weights file, an HF model, or a state dict."""
    if isinstance(src, (str, os.PathLike)):
        from maskjax.convert.torch_io import load_state_dict

        src = str(src)
        folder = src if os.path.isdir(src) else os.path.dirname(src)
        if config is None and os.path.exists(os.path.join(folder, "config.json")):
            with open(os.path.join(folder, "config.json")) as f:
                config = json.load(f)
        with phase(f"reading {src}"):
            sd = load_state_dict(src)
    elif hasattr(src, "state_dict"):  # an in-memory transformers model
        config = config if config is not None else src.config.to_dict()
        sd = {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
              for k, v in src.state_dict().items()}
    elif isinstance(src, Mapping):
        sd = {k: np.asarray(v) for k, v in src.items()}
    else:
        raise TypeError(f"expected a path, a transformers model or a state dict, got {type(src).__name__}")
    out = {}
    for key, value in sd.items():  # the original BERT PyTorch port named LayerNorm parameters gamma/beta
        if key.endswith(".LayerNorm.gamma") or key.endswith(".LayerNorm.beta"):
            key = key.rsplit(".", 1)[0] + (".weight" if key.endswith("gamma") else ".bias")
        out[key] = value
    return out, dict(config or {})


def _check_tied(sd, tied: str, source: str) -> None:
    if tied in sd and source in sd and not np.array_equal(np.asarray(sd[tied]), np.asarray(sd[source])):
        raise ConversionError(f"{tied!r} differs from {source!r} it should be tied to (max |diff| "
                              f"{np.max(np.abs(np.asarray(sd[tied]) - np.asarray(sd[source]))):.3g}); maskjax's "
                              f"decoder is tied to the input embeddings")


def _ignorable(key: str) -> bool:
    # Non-persistent buffers older transformers saved, and tied copies (checked by _check_tied).
    return key.endswith(("embeddings.position_ids", "embeddings.token_type_ids")) or key in (
        "cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "generator_lm_head.weight")


def hf_to_maskjax_text(src: Any, *, kind: str | None = None, config: Mapping | None = None,
                       nsp: bool | None = None, source: str = "") -> tuple[TextModelSpec, dict]:
    """HF checkpoint (path, model or state dict) -> (spec, flat params) for ``kind`` (default: by architecture).

    ``kind="encoder"`` keeps only the encoder (and pooler) of any checkpoint. ``nsp`` (kind "bert"):
    None keeps the NSP head when the checkpoint has one; False drops it (with a warning).
    """
    sd, config = read_hf(src, config)
    arch = detect_architecture(sd, config)
    default_kind = {"BertForMaskedLM": "bert", "BertForPreTraining": "bert", "ElectraForMaskedLM": "bert",
                    "ElectraForPreTraining": "electra_discriminator"}.get(arch, "encoder")
    kind = kind or default_kind
    if kind not in ("bert", "encoder", "electra_discriminator"):
        raise ValueError(f"kind must be 'bert', 'encoder' or 'electra_discriminator' for one checkpoint, got {kind!r} "
                         f"(an Electra generator + discriminator pair loads with electra_from_hf)")
    if kind != "encoder" and kind != default_kind:
        raise ArchitectureMismatchError(f"a {arch} checkpoint holds a {default_kind!r} model, not a {kind!r} one; "
                                        f"its encoder alone loads with kind='encoder'")
    cfg = hf_text_config(sd, config, arch)
    p = "" if arch in ("BertModel", "ElectraModel") else f"{family(arch)}."
    options: dict[str, Any] = {}
    if kind == "encoder":  # architecture stays the source's: it names the key prefix to read
        options["pooler"] = f"{p}pooler.dense.weight" in sd
    elif kind == "bert":
        has_nsp = "cls.seq_relationship.weight" in sd
        if nsp and not has_nsp:
            raise MissingKeyError(f"nsp=True but the checkpoint ({arch}) has no 'cls.seq_relationship.weight'")
        use_nsp = has_nsp if nsp is None else nsp
        options.update(nsp=use_nsp, pooler=use_nsp)
        if arch == "ElectraForMaskedLM":
            options["head_act"] = "gelu"  # HF's ElectraGeneratorPredictions hard-codes exact GELU
        else:
            arch = "BertForPreTraining" if use_nsp else "BertForMaskedLM"
    spec = TextModelSpec(kind=kind, architecture=arch, config=dataclasses.asdict(cfg), options=options,
                         source=source or f"Hugging Face {arch}")
    if "cls.predictions.bias" not in sd and "cls.predictions.decoder.bias" in sd:
        sd = dict(sd, **{"cls.predictions.bias": sd["cls.predictions.decoder.bias"]})  # a file with only the tied copy
    _check_tied(sd, "cls.predictions.decoder.weight", f"{p}embeddings.word_embeddings.weight")
    _check_tied(sd, "generator_lm_head.weight", f"{p}embeddings.word_embeddings.weight")
    _check_tied(sd, "cls.predictions.decoder.bias", "cls.predictions.bias")
    rules = text_rules(spec)
    wanted = {k for r in rules for k in r.keys}
    # Heads an encoder does not keep, and a pooler / NSP head the caller chose to leave out, are
    # dropped with a warning; anything else left over is an error (apply_rules names it).
    droppable = lambda k: kind == "encoder" or (kind == "bert" and (k.startswith(f"{p}pooler.") or
                                                                    k.startswith("cls.seq_relationship.")))
    dropped = sorted(k for k in sd if k not in wanted and not _ignorable(k) and droppable(k))
    if dropped:
        warnings.warn(f"dropping {len(dropped)} tensor(s) the {kind} model has no place for: {dropped[:6]}"
                      f"{' ...' if len(dropped) > 6 else ''}", stacklevel=2)
        sd = {k: v for k, v in sd.items() if k not in dropped}
    flat = apply_rules(sd, rules, layout(spec), what=f"maskjax {kind} ({arch})", ignore=_ignorable)
    return spec, flat


def from_hf(src: Any, *, kind: str | None = None, config: Mapping | None = None, nsp: bool | None = None,
            **kwargs: Any) -> tuple[nnx.Module, TextModelSpec]:
    """(module, spec) of one HF BERT/ELECTRA checkpoint; ``kwargs`` (dtype, remat, attention_impl) go to the module."""
    spec, flat = hf_to_maskjax_text(src, kind=kind, config=config, nsp=nsp)
    return build_module(spec, flat, **kwargs), spec


def bert_from_hf(src: Any, *, nsp: bool | None = None, **kwargs: Any) -> tuple[BertPretrainer, TextModelSpec]:
    """HF ``BertForMaskedLM`` / ``BertForPreTraining`` / ``ElectraForMaskedLM`` -> :class:`BertPretrainer`."""
    return from_hf(src, kind="bert", nsp=nsp, **kwargs)


def encoder_from_hf(src: Any, **kwargs: Any) -> tuple[BertEncoder, TextModelSpec]:
    """The encoder (+ pooler if present) of any HF BERT/ELECTRA checkpoint, heads dropped: for fine-tuning."""
    return from_hf(src, kind="encoder", **kwargs)


def electra_discriminator_from_hf(src: Any, **kwargs: Any) -> tuple[ElectraDiscriminator, TextModelSpec]:
    """HF ``ElectraForPreTraining`` -> :class:`ElectraDiscriminator`."""
    return from_hf(src, kind="electra_discriminator", **kwargs)


def electra_from_hf(generator_src: Any, discriminator_src: Any, *, strict: bool = False,
                    **kwargs: Any) -> tuple[Electra, TextModelSpec]:
    """Assembles an :class:`Electra` from an HF ``ElectraForMaskedLM`` + ``ElectraForPreTraining`` pair.

    The shared embeddings are taken from the discriminator. If the generator's differ (they are
    the same tensors in a jointly trained pair) a warning gives the largest difference, or with
    ``strict=True`` a :class:`ConversionError`.
    """
    gspec, gflat = hf_to_maskjax_text(generator_src, kind="bert")
    dspec, dflat = hf_to_maskjax_text(discriminator_src, kind="electra_discriminator")
    if gspec.architecture != "ElectraForMaskedLM":
        raise ArchitectureMismatchError(f"the generator checkpoint is a {gspec.architecture}, not ElectraForMaskedLM")
    spec = TextModelSpec(kind="electra", architecture="ElectraForMaskedLM+ElectraForPreTraining", config=dspec.config,
                         options={"generator": gspec.config, "generator_head_act": "gelu"},
                         source=f"Hugging Face ELECTRA pair ({gspec.source}; {dspec.source})")
    try:
        Electra.check_shared(TextConfig(**gspec.config), dspec.text_config)
    except ValueError as e:
        raise ArchitectureMismatchError(str(e)) from None
    flat = {}
    for path, value in gflat.items():
        if path[:2] == ("encoder", "embeddings"):
            ours = dflat[path]
            if not np.array_equal(value, ours):
                msg = (f"generator and discriminator embeddings differ at {'/'.join(path[1:])} (max |diff| "
                       f"{np.max(np.abs(value - ours)):.3g}); ELECTRA shares them, using the discriminator's")
                if strict:
                    raise ConversionError(msg)
                warnings.warn(msg, stacklevel=2)
            continue
        flat[_rename(path, {("encoder", "transformer"): ("generator",), ("mlm_head",): ("generator_head",)})] = value
    for path, value in dflat.items():
        flat[_rename(path, {("encoder", "embeddings"): ("embeddings",), ("encoder", "transformer"): ("discriminator",),
                            ("discriminator_head",): ("discriminator_head",)})] = value
    return build_module(spec, flat, **kwargs), spec


def _rename(path: tuple, table: Mapping[tuple, tuple]) -> tuple:
    for old, new in table.items():
        if path[:len(old)] == old:
            return new + path[len(old):]
    raise ConversionError(f"converter bug: no mapping for {'/'.join(path)}")


# --- writing HF checkpoints ----------------------------------------------------------------------

def module_params(module: nnx.Module) -> dict[tuple[str, ...], np.ndarray]:
    """Flat {path: numpy array} of a module's parameters."""
    _, params, _ = nnx.split(module, nnx.Param, ...)
    return {k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(params)).items()}


def maskjax_to_hf_text(module: nnx.Module, *, architecture: str | None = None) -> dict[str, tuple[dict, dict]]:
    """Module -> {part: (HF state dict, config dict)}; part is "model", or "generator"/"discriminator" for Electra."""
    spec = module_spec(module, architecture)
    check_exportable(spec)
    flat = module_params(module)
    if spec.kind == "electra":
        gen = TextConfig(**spec.options["generator"])
        out = {}
        for part, cfg, arch in (("generator", gen, "ElectraForMaskedLM"),
                                ("discriminator", spec.text_config, "ElectraForPreTraining")):
            rules = text_rules(spec, part)
            paths = {r.path for r in rules}
            out[part] = (invert_rules({k: v for k, v in flat.items() if k in paths}, rules), hf_config(cfg, arch))
        return out
    if spec.kind == "bert" and spec.options.get("sbo"):
        warnings.warn("dropping the SpanBERT SBO head: Hugging Face has no SBO head (SpanBERT releases encoders)",
                      stacklevel=2)
        flat = {k: v for k, v in flat.items() if k[0] != "sbo_head"}
    if spec.kind == "bert" and spec.options.get("pooler") and not spec.options.get("nsp"):
        warnings.warn(f"dropping the pooler: HF {spec.architecture} has none", stacklevel=2)
        flat = {k: v for k, v in flat.items() if "pooler" not in k}
        spec.options["pooler"] = False
    return {"model": (invert_rules(flat, text_rules(spec)), hf_config(spec.text_config, spec.architecture))}


def _write(out_dir: str, sd: Mapping, config: Mapping, overwrite: bool) -> str:
    from maskjax.convert.torch_io import save_safetensors

    weights = os.path.join(out_dir, "model.safetensors")
    if os.path.exists(weights) and not overwrite:
        raise FileExistsError(f"{weights} already exists; choose another output directory or pass overwrite=True")
    os.makedirs(out_dir, exist_ok=True)
    with phase(f"writing {weights}"):
        save_safetensors(sd, weights)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(dict(config), f, indent=2, sort_keys=True)
    return out_dir


def bert_to_hf(module: nnx.Module, out_dir: str, *, architecture: str | None = None,
               overwrite: bool = False) -> list[str]:
    """Writes HF-loadable folder(s) (``config.json`` + ``model.safetensors``); returns the folders.

    An :class:`Electra` writes ``out_dir/generator`` (ElectraForMaskedLM) and
    ``out_dir/discriminator`` (ElectraForPreTraining); other modules write ``out_dir``.
    """
    parts = maskjax_to_hf_text(module, architecture=architecture)
    if set(parts) == {"model"}:
        return [_write(out_dir, *parts["model"], overwrite)]
    return [_write(os.path.join(out_dir, part), *parts[part], overwrite) for part in ("generator", "discriminator")]


# --- maskjax directories and command-line entry points ---------------------------------------------

def save_text_converted(out_dir: str, spec: TextModelSpec, params: Mapping, *, overwrite: bool = False) -> str:
    """Writes ``maskjax_text_model.json`` and an Orbax ``variables/`` checkpoint ({"params": ...})."""
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    target = os.path.join(out_dir, "variables")
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target} already exists; choose another output directory or pass --overwrite")
    flat = check_params(spec, params)  # refuse to write what the spec cannot load
    os.makedirs(out_dir, exist_ok=True)
    with phase(f"writing {target}"):
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(target, {"params": unflatten({k: jnp.asarray(v) for k, v in flat.items()})},
                          force=overwrite)
        checkpointer.wait_until_finished()
        checkpointer.close()
    with open(os.path.join(out_dir, SPEC_FILE), "w") as f:
        f.write(spec.to_json() + "\n")
    return out_dir


def load_text_converted(path: str, **kwargs: Any) -> tuple[nnx.Module, TextModelSpec]:
    """(module, spec) of a directory written by :func:`save_text_converted`."""
    import jax
    import orbax.checkpoint as ocp

    file = os.path.join(path, SPEC_FILE)
    if not os.path.exists(file):
        raise FileNotFoundError(f"{path} is not a converted maskjax text model (no {SPEC_FILE})")
    with open(file) as f:
        spec = TextModelSpec(**json.load(f))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {"params": unflatten({k: jax.ShapeDtypeStruct(s, np.float32, sharding=device)
                                   for k, s in layout(spec).items()})}
    with phase(f"reading {path}"):
        checkpointer = ocp.StandardCheckpointer()
        tree = checkpointer.restore(os.path.join(os.path.abspath(path), "variables"), target)
        checkpointer.close()
    return build_module(spec, tree["params"], **kwargs), spec


def convert_hf_bert_checkpoint(src: str, out_dir: str, *, kind: str | None = None, nsp: bool | None = None,
                               overwrite: bool = False) -> TextModelSpec:
    """``maskjax convert hf-bert-to-maskjax SRC OUT``: an HF BERT/ELECTRA folder or file -> maskjax directory."""
    spec, flat = hf_to_maskjax_text(src, kind=kind, nsp=nsp, source=f"Hugging Face checkpoint {os.path.abspath(src)}")
    save_text_converted(out_dir, spec, flat, overwrite=overwrite)
    return spec


def convert_hf_electra_pair(generator_src: str, discriminator_src: str, out_dir: str, *, strict: bool = False,
                            overwrite: bool = False) -> TextModelSpec:
    """HF ELECTRA generator + discriminator folders -> one maskjax :class:`Electra` directory."""
    module, spec = electra_from_hf(generator_src, discriminator_src, strict=strict)
    spec.source = (f"Hugging Face ELECTRA pair {os.path.abspath(generator_src)} + "
                   f"{os.path.abspath(discriminator_src)}")
    save_text_converted(out_dir, spec, module_params(module), overwrite=overwrite)
    return spec


def convert_maskjax_to_hf_bert(src: str, out_dir: str, *, architecture: str | None = None,
                               overwrite: bool = False) -> list[str]:
    """``maskjax convert maskjax-to-hf-bert SRC OUT``: a converted maskjax text directory -> HF folder(s)."""
    module, spec = load_text_converted(src)
    # An encoder read from a task checkpoint keeps that architecture (its key prefix); it exports
    # as BertModel / ElectraModel, which module_spec picks.
    architecture = architecture or (spec.architecture if spec.kind == "bert" else None)
    return bert_to_hf(module, out_dir, architecture=architecture, overwrite=overwrite)
