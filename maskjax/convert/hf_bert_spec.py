"""Hugging Face BERT / ELECTRA conversion, part 1: the model spec, the key rules and the config mapping.

:class:`TextModelSpec` describes a maskjax text module (kind, HF architecture, config, options);
:func:`text_rules` ties each of its parameters to an HF state-dict key with exact transforms (see
:mod:`maskjax.convert.common`); :func:`hf_text_config` / :func:`hf_config` translate config.json.
The public loading / saving functions are in :mod:`maskjax.convert.hf_bert`.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any, Mapping

from flax import nnx

from maskjax.convert.common import (ArchitectureMismatchError, ConversionError, MissingKeyError, Rule, block_count,
                                    copy_rule, flatten, linear_rule, unflatten)
from maskjax.models.bert import BertEncoder, BertPretrainer, TextConfig
from maskjax.models.electra import Electra, ElectraDiscriminator

SPEC_FILE = "maskjax_text_model.json"
KINDS = ("bert", "encoder", "electra_discriminator", "electra")
# HF activation names -> maskjax ones; exported as the first HF name of each.
_ACTS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
         "gelu_fast": "gelu_tanh"}
_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
_LAYER = [("attention.self.query", "query"), ("attention.self.key", "key"), ("attention.self.value", "value"),
          ("attention.output.dense", "attention_out"), ("intermediate.dense", "ffn_in"), ("output.dense", "ffn_out")]
_NORMS = [("attention.output.LayerNorm", "attention_norm"), ("output.LayerNorm", "output_norm")]


@dataclasses.dataclass
class TextModelSpec:
    """Everything needed to rebuild a converted text model (stored as ``maskjax_text_model.json``).

    ``config``: :class:`TextConfig` fields; ``options``: the module's other constructor arguments
    (nsp, pooler, sbo, head_act, ... or generator / generator_head_act for "electra");
    ``architecture``: the HF architecture it corresponds to; ``source``: provenance.
    """

    kind: str
    architecture: str
    config: dict
    options: dict = dataclasses.field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"text model kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def text_config(self) -> TextConfig:
        """The (discriminator / encoder) :class:`TextConfig`."""
        return TextConfig(**self.config)

    def build(self, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
        """The NNX module (random weights); ``kwargs`` (dtype, remat, attention_impl) change compute only."""
        cls = {"bert": BertPretrainer, "encoder": BertEncoder, "electra_discriminator": ElectraDiscriminator,
               "electra": Electra}[self.kind]
        return cls(self.text_config, rngs=rngs, **self.options, **kwargs)

    def to_json(self) -> str:
        """JSON text of the spec."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


# --- rules ---------------------------------------------------------------------------------------

def _linear(dst, key) -> list[Rule]:
    return [linear_rule(dst + ("kernel",), f"{key}.weight"), copy_rule(dst + ("bias",), f"{key}.bias")]


def _norm(dst, key) -> list[Rule]:
    return [copy_rule(dst + ("scale",), f"{key}.weight"), copy_rule(dst + ("bias",), f"{key}.bias")]


def embedding_rules(p: str, dst: tuple) -> list[Rule]:
    """HF ``{p}embeddings.*`` <-> :class:`TextEmbeddings` at ``dst``."""
    rules = [copy_rule(dst + (name,), f"{p}embeddings.{name}.weight")
             for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")]
    return rules + _norm(dst + ("norm",), f"{p}embeddings.LayerNorm")


def stack_rules(p: str, dst: tuple, cfg: TextConfig, pooler: bool) -> list[Rule]:
    """HF ``{p}embeddings_project``, ``{p}encoder.layer.*``, ``{p}pooler`` <-> :class:`TransformerStack`."""
    rules = _linear(dst + ("embeddings_project",), f"{p}embeddings_project") if cfg.embedding_size != cfg.hidden else []
    for i in range(cfg.layers):
        src, d = f"{p}encoder.layer.{i}", dst + ("layers", str(i))
        for name, ours in _LAYER:
            rules += _linear(d + (ours,), f"{src}.{name}")
        for name, ours in _NORMS:
            rules += _norm(d + (ours,), f"{src}.{name}")
    if pooler:
        rules += _linear(dst + ("pooler",), f"{p}pooler.dense")
    return rules


def family(arch: str) -> str:
    """"electra" or "bert": the HF model family (key prefix) of an architecture name."""
    return "electra" if arch.startswith("Electra") else "bert"


def text_rules(spec: TextModelSpec, part: str | None = None) -> list[Rule]:
    """Key mapping between HF names and ``spec``'s maskjax variables.

    For kind "electra", ``part`` is "generator" or "discriminator" (two HF checkpoints); both map
    the shared embeddings.
    """
    cfg, o = spec.text_config, spec.options
    if spec.kind == "electra":
        if part == "generator":
            gen = TextConfig(**o["generator"])
            return (embedding_rules("electra.", ("embeddings",)) + stack_rules("electra.", ("generator",), gen, False)
                    + _generator_head_rules(("generator_head",)))
        if part == "discriminator":
            return (embedding_rules("electra.", ("embeddings",))
                    + stack_rules("electra.", ("discriminator",), cfg, False)
                    + _discriminator_head_rules(("discriminator_head",)))
        raise ValueError(f"an Electra pair maps two checkpoints: part must be 'generator' or 'discriminator', "
                         f"got {part!r}")
    if spec.kind == "encoder":
        p = "" if spec.architecture in ("BertModel", "ElectraModel") else f"{family(spec.architecture)}."
        return embedding_rules(p, ("embeddings",)) + stack_rules(p, ("transformer",), cfg, bool(o.get("pooler")))
    p = f"{family(spec.architecture)}."
    enc = ("encoder",)
    rules = embedding_rules(p, enc + ("embeddings",))
    if spec.kind == "electra_discriminator":
        return (rules + stack_rules(p, enc + ("transformer",), cfg, False)
                + _discriminator_head_rules(("discriminator_head",)))
    rules += stack_rules(p, enc + ("transformer",), cfg, bool(o.get("pooler")))
    if spec.architecture == "ElectraForMaskedLM":
        return rules + _generator_head_rules(("mlm_head",))
    rules += _linear(("mlm_head", "dense"), "cls.predictions.transform.dense")
    rules += _norm(("mlm_head", "norm"), "cls.predictions.transform.LayerNorm")
    rules.append(copy_rule(("mlm_head", "bias"), "cls.predictions.bias"))
    if o.get("nsp"):
        rules += _linear(("nsp_head",), "cls.seq_relationship")
    return rules


def _generator_head_rules(dst) -> list[Rule]:
    return (_linear(dst + ("dense",), "generator_predictions.dense")
            + _norm(dst + ("norm",), "generator_predictions.LayerNorm")
            + [copy_rule(dst + ("bias",), "generator_lm_head.bias")])


def _discriminator_head_rules(dst) -> list[Rule]:
    return _linear(dst + ("dense",), "discriminator_predictions.dense") + _linear(
        dst + ("out",), "discriminator_predictions.dense_prediction")


# --- config.json <-> TextConfig, architectures ---------------------------------------------------

def detect_architecture(sd: Mapping[str, Any], config: Mapping | None = None) -> str:
    """The HF architecture of a state dict, decided by its keys (config.json's list is often wrong)."""
    if any(k.startswith("bert.") for k in sd):
        if "cls.seq_relationship.weight" in sd:
            return "BertForPreTraining"
        return "BertForMaskedLM" if any(k.startswith("cls.predictions.") for k in sd) else "BertModel"
    if any(k.startswith("electra.") for k in sd):
        if "discriminator_predictions.dense.weight" in sd:
            return "ElectraForPreTraining"
        return "ElectraForMaskedLM" if "generator_predictions.dense.weight" in sd else "ElectraModel"
    if "embeddings.word_embeddings.weight" in sd:
        electra = "embeddings_project.weight" in sd or (config or {}).get("model_type") == "electra"
        return "ElectraModel" if electra else "BertModel"
    raise ConversionError(f"not a Hugging Face BERT / ELECTRA checkpoint: no '*embeddings.word_embeddings.weight' "
                          f"(first keys: {sorted(sd)[:4]})")


def _shape(sd, key) -> tuple[int, ...]:
    if key not in sd:
        raise MissingKeyError(f"checkpoint lacks {key!r}")
    return tuple(int(s) for s in sd[key].shape)


def hf_text_config(sd: Mapping[str, Any], config: Mapping, arch: str) -> TextConfig:
    """The :class:`TextConfig` of an HF checkpoint: sizes from tensor shapes, the rest from config.json."""
    p = "" if arch in ("BertModel", "ElectraModel") else f"{family(arch)}."
    vocab, emb = _shape(sd, f"{p}embeddings.word_embeddings.weight")
    hidden = _shape(sd, f"{p}encoder.layer.0.attention.self.query.weight")[0]
    sizes = {"vocab_size": vocab, "embedding_size": emb, "hidden": hidden,
             "layers": block_count(sd, f"{p}encoder.layer."),
             "ffn": _shape(sd, f"{p}encoder.layer.0.intermediate.dense.weight")[0],
             "max_positions": _shape(sd, f"{p}embeddings.position_embeddings.weight")[0],
             "type_vocab_size": _shape(sd, f"{p}embeddings.token_type_embeddings.weight")[0]}
    hf_names = {"vocab_size": "vocab_size", "hidden": "hidden_size", "layers": "num_hidden_layers",
                "ffn": "intermediate_size", "max_positions": "max_position_embeddings",
                "type_vocab_size": "type_vocab_size", "embedding_size": "embedding_size"}
    for ours, name in hf_names.items():
        if name in config and int(config[name]) != sizes[ours]:
            raise ArchitectureMismatchError(f"config.json has {name}={config[name]} but the weights have "
                                            f"{sizes[ours]} (from the shape of the {p}embeddings / layer-0 tensors)")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ArchitectureMismatchError(f"config.json has position_embedding_type="
                                        f"{config['position_embedding_type']!r}; maskjax has learned absolute "
                                        f"positions")
    if config.get("is_decoder") or config.get("add_cross_attention"):
        raise ArchitectureMismatchError("config.json describes a decoder (is_decoder / add_cross_attention); maskjax "
                                        "converts bidirectional encoders only")
    if not config.get("tie_word_embeddings", True):
        raise ArchitectureMismatchError("config.json has tie_word_embeddings=false; maskjax's MLM decoders are tied "
                                        "to the input embeddings")
    act = config.get("hidden_act", "gelu")
    if act not in _ACTS:
        raise ArchitectureMismatchError(f"config.json has hidden_act={act!r}; maskjax supports {sorted(_ACTS)}")
    if "num_attention_heads" in config:
        heads = int(config["num_attention_heads"])
    else:
        heads = max(1, hidden // 64)
        warnings.warn(f"no config.json with num_attention_heads: assuming hidden // 64 = {heads} heads (true of all "
                      f"released BERT and ELECTRA sizes)", stacklevel=3)
    return TextConfig(**sizes, heads=heads, hidden_act=_ACTS[act],
                      dropout=float(config.get("hidden_dropout_prob", 0.1)),
                      attention_dropout=float(config.get("attention_probs_dropout_prob", 0.1)),
                      layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)))


def module_spec(module: nnx.Module, architecture: str | None = None) -> TextModelSpec:
    """The :class:`TextModelSpec` of a maskjax text module (``architecture`` picks the HF class)."""
    cfg = dataclasses.asdict(module.cfg)
    electra_like = module.cfg.embedding_size != module.cfg.hidden
    if isinstance(module, BertPretrainer):
        opts = {"nsp": module.nsp, "pooler": module.encoder.transformer.pooler is not None, "sbo": module.sbo,
                "head_act": module.head_act}
        if module.sbo_head is not None:
            opts.update(max_pair_targets=module.sbo_head.position_embeddings.shape[0],
                        sbo_position_dim=module.sbo_head.position_embeddings.shape[1])
        default = "BertForPreTraining" if module.nsp else "ElectraForMaskedLM" if electra_like else "BertForMaskedLM"
        return TextModelSpec("bert", architecture or default, cfg, opts)
    if isinstance(module, BertEncoder):
        return TextModelSpec("encoder", architecture or ("ElectraModel" if electra_like else "BertModel"), cfg,
                             {"pooler": module.transformer.pooler is not None})
    if isinstance(module, ElectraDiscriminator):
        return TextModelSpec("electra_discriminator", "ElectraForPreTraining", cfg)
    if isinstance(module, Electra):
        return TextModelSpec("electra", "ElectraForMaskedLM+ElectraForPreTraining", cfg,
                             {"generator": dataclasses.asdict(module.generator_cfg),
                              "generator_head_act": module.generator_head_act})
    raise TypeError(f"not a maskjax text module: {type(module).__name__}")


def hf_config(cfg: TextConfig, architecture: str) -> dict[str, Any]:
    """A transformers ``config.json`` dict for ``cfg`` as ``architecture``."""
    electra = family(architecture) == "electra"
    out = {"architectures": [architecture], "model_type": "electra" if electra else "bert",
           "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden, "num_hidden_layers": cfg.layers,
           "num_attention_heads": cfg.heads, "intermediate_size": cfg.ffn, "hidden_act": _HF_ACT[cfg.hidden_act],
           "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
           "max_position_embeddings": cfg.max_positions, "type_vocab_size": cfg.type_vocab_size,
           "initializer_range": 0.02, "layer_norm_eps": cfg.layer_norm_eps, "pad_token_id": 0,
           "tie_word_embeddings": True, "dtype": "float32"}
    if electra:
        out["embedding_size"] = cfg.embedding_size
    elif cfg.embedding_size != cfg.hidden:
        raise ConversionError(f"BERT has no embedding projection: embedding_size {cfg.embedding_size} != hidden "
                              f"{cfg.hidden} needs an ELECTRA architecture")
    return out


def check_exportable(spec: TextModelSpec) -> None:
    """Raises :class:`ConversionError` if ``spec``'s module has no exact HF counterpart as its architecture."""
    o = spec.options
    if spec.kind == "bert":
        if spec.architecture == "ElectraForMaskedLM" and (o.get("head_act") != "gelu" or o.get("nsp")):
            raise ConversionError("HF ElectraForMaskedLM has an exact-GELU head and no NSP head; this model has "
                                  f"head_act={o.get('head_act')!r}, nsp={o.get('nsp')}")
        if spec.architecture.startswith("Bert") and o.get("head_act") != spec.config["hidden_act"]:
            raise ConversionError(f"HF BERT's MLM transform uses hidden_act; this model's head_act "
                                  f"{o.get('head_act')!r} differs from hidden_act {spec.config['hidden_act']!r}")
        if spec.architecture == "BertForPreTraining" and not o.get("nsp"):
            raise ConversionError("BertForPreTraining needs the NSP head: this model was built with nsp=False")
        if spec.architecture == "BertForMaskedLM" and o.get("nsp"):
            raise ConversionError("this model has an NSP head: export it as BertForPreTraining")
    if spec.kind == "electra" and o.get("generator_head_act") != "gelu":
        raise ConversionError(f"HF ElectraForMaskedLM's head uses exact GELU; this generator head uses "
                              f"{o.get('generator_head_act')!r}")
    if spec.kind == "encoder" and o.get("pooler") and spec.architecture.startswith("Electra"):
        raise ConversionError("HF ELECTRA models have no pooler; export this encoder as BertModel or without pooler")


# --- building modules ---------------------------------------------------------------------------

_TEMPLATES: dict = {}


def _template(spec: TextModelSpec, **kwargs: Any):
    # Tracing a model abstractly takes seconds for Base and up; converters ask for the same
    # structure several times, so templates are kept per (spec, compute options).
    from maskjax.core.templates import ModelTemplate

    key = (spec.to_json(), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if key not in _TEMPLATES:
        if len(_TEMPLATES) >= 8:
            _TEMPLATES.pop(next(iter(_TEMPLATES)))
        _TEMPLATES[key] = ModelTemplate.from_builder(lambda rngs: spec.build(rngs, **kwargs))
    return _TEMPLATES[key]


def layout(spec: TextModelSpec) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Shape of every parameter of ``spec``'s module (abstract: no memory)."""
    t = _template(spec)
    return {k: tuple(v.shape) for k, v in flatten(nnx.to_pure_dict(t.abstract_params)).items()}


def check_params(spec: TextModelSpec, params: Mapping) -> dict:
    """Flat params (from a nested or flat dict) after checking they are exactly ``spec``'s, names and shapes."""
    flat = flatten(params) if not all(isinstance(k, tuple) for k in params) else dict(params)
    shapes = layout(spec)
    missing = sorted("/".join(k) for k in shapes if k not in flat)
    extra = sorted("/".join(k) for k in flat if k not in shapes)
    if missing or extra:
        raise ConversionError(f"parameters do not match a {spec.kind} model: missing {missing[:8]}, "
                              f"unexpected {extra[:8]}")
    wrong = [f"{'/'.join(k)}: {tuple(v.shape)} != {shapes[k]}" for k, v in flat.items() if tuple(v.shape) != shapes[k]]
    if wrong:
        raise ConversionError(f"parameter shapes do not match a {spec.kind} model (given != expected): {wrong[:8]}")
    return flat


def build_module(spec: TextModelSpec, params: Mapping, **kwargs: Any) -> nnx.Module:
    """The module of ``spec`` holding ``params`` (a nested or flat dict; must be exactly its parameters)."""
    import jax.numpy as jnp

    flat = check_params(spec, params)
    t = _template(spec, **kwargs)
    return t.merge(unflatten({k: jnp.asarray(v) for k, v in flat.items()}), {})
