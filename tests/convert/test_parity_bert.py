"""Numerical parity of maskjax's BERT with Hugging Face ``BertForMaskedLM`` / ``BertForPreTraining``.

Float32 on CPU, random weights everywhere (LayerNorm scales away from 1, non-zero biases, so a
wrong mapping shows), a batch with padding (attention_mask zeros) and two token types. "Same" is
the scale-relative max error ``max|ours - ref| / max|ref|`` <= 1e-5; the measured numbers are
printed (run with ``-s``).

Losses: HF's MLM loss is the plain mean CE over labels != -100; BERT's is
``sum(w * NLL) / (sum(w) + 1e-5)``. The tests compare ours with HF's mean rescaled by
``n / (n + 1e-5)`` (the exact relation between the two), and the un-normalised sums.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from maskjax.convert.common import ConversionError, ShapeMismatchError  # noqa: E402
from maskjax.convert.hf_bert import (bert_from_hf, bert_to_hf, convert_hf_bert_checkpoint,  # noqa: E402
                                     convert_maskjax_to_hf_bert, encoder_from_hf, from_hf, load_text_converted,
                                     module_params, read_hf)
from maskjax.models.bert import BertPretrainer  # noqa: E402
from maskjax.objectives.text import mlm_loss, nsp_loss  # noqa: E402
from tests.convert.helpers import assert_close  # noqa: E402

VOCAB, LENGTH, BATCH = 97, 12, 3


def tiny_config(cls=None, **kw):
    """A 2-layer, 32-wide BERT config (random-weight parity runs in well under a second)."""
    cls = cls or transformers.BertConfig
    base = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=16, type_vocab_size=2)
    return cls(**{**base, **kw})


def randomize(hf, seed: int = 0):
    """Random non-trivial weights in every tensor of an HF model (tied ones stay tied); eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / max(p.shape[-1], 4) ** 0.5)
    return hf.eval()


def batch(seed: int = 1, length: int = LENGTH, batch_size: int = BATCH, vocab: int = VOCAB):
    """ids / token types / attention mask with padding, MLM positions+labels+weights, NSP labels."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (batch_size, length))
    lengths = np.array([length, length - 4, length - 7][:batch_size] + [length] * max(0, batch_size - 3))
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    ids = ids * mask  # [PAD] = 0 at padding
    seg = ((np.arange(length)[None] >= (lengths[:, None] // 2)) * mask).astype(np.int64)
    positions = np.stack([np.sort(rng.choice(np.arange(1, n), 3, replace=False)) for n in lengths])
    positions[-1, -1] = 0  # a padding prediction slot: weight 0, not counted by either side
    weights = np.ones(positions.shape, np.float32)
    weights[-1, -1] = 0.0
    labels = rng.integers(0, vocab, positions.shape)
    hf_labels = np.full(ids.shape, -100)
    for b in range(batch_size):
        for p, lab, w in zip(positions[b], labels[b], weights[b]):
            if w:
                hf_labels[b, p] = lab
    nsp = rng.integers(0, 2, (batch_size,))
    return dict(ids=ids, seg=seg, mask=mask, positions=positions, labels=labels, weights=weights,
                hf_labels=hf_labels, nsp=nsp)


def t(x):
    return torch.from_numpy(np.asarray(x))


@nnx.jit
def bert_outputs(model: BertPretrainer, ids, seg, mask, positions, labels, weights, nsp_labels):
    """Everything the tests compare, in one compiled program."""
    hidden, aux = model.encode(ids, seg, mask)
    logits = model.mlm_logits(hidden, positions)
    loss, metrics = mlm_loss(logits, labels, weights)
    out = {"hidden": hidden, "all": model.mlm_logits_all(hidden), "gathered": logits, "mlm_loss": loss,
           "mlm_sum": metrics["nll_sum"], "count": metrics["count"]}
    if model.nsp:
        out["nsp_logits"] = model.nsp_logits(aux)
        out["nsp_loss"] = nsp_loss(out["nsp_logits"], nsp_labels)[0]
        out["pooled"] = aux["pooled"]
    return out


def run_ours(model, b) -> dict:
    args = [jnp.asarray(b[k]) for k in ("ids", "seg", "mask", "positions", "labels", "weights", "nsp")]
    return {k: np.asarray(v) for k, v in bert_outputs(model, *args).items()}


def run_hf(hf, b, nsp: bool):
    kw = dict(attention_mask=t(b["mask"]), token_type_ids=t(b["seg"]), labels=t(b["hf_labels"]))
    if nsp:
        kw["next_sentence_label"] = t(b["nsp"])
    with torch.no_grad():
        return hf(t(b["ids"]), **kw)


@pytest.fixture(scope="module")
def mlm_pair():
    hf = randomize(transformers.BertForMaskedLM(tiny_config()), seed=0)
    model, spec = bert_from_hf(hf)
    return hf, model, spec


def test_bert_for_masked_lm_logits_and_loss_match_hf(mlm_pair):
    hf, model, spec = mlm_pair
    assert (spec.kind, spec.architecture, spec.options["nsp"]) == ("bert", "BertForMaskedLM", False)
    b = batch()
    ours, ref = run_ours(model, b), run_hf(hf, b, nsp=False)
    assert_close("BertForMaskedLM logits (all positions)", ours["all"], ref.logits.numpy())
    gathered = np.take_along_axis(ref.logits.numpy(), b["positions"][..., None], axis=1)
    assert_close("BertForMaskedLM logits (gathered at positions)", ours["gathered"], gathered)
    n = float(b["weights"].sum())
    assert ours["count"] == n
    # BERT's denominator is n + 1e-5, HF's is n: compare with HF's mean rescaled, and the sums.
    assert_close("BertForMaskedLM MLM loss (HF mean * n / (n + 1e-5))", ours["mlm_loss"],
                 ref.loss.item() * n / (n + 1e-5))
    assert_close("BertForMaskedLM MLM NLL sum (HF mean * n)", ours["mlm_sum"], ref.loss.item() * n)


def test_bert_for_pretraining_from_folder_matches_hf(tmp_path):
    """BertForPreTraining (NSP, tanh GELU) saved by HF, read from disk: MLM + NSP logits and losses."""
    hf = randomize(transformers.BertForPreTraining(tiny_config(hidden_act="gelu_new")), seed=1)
    hf.save_pretrained(tmp_path)
    model, spec = bert_from_hf(str(tmp_path))
    assert spec.architecture == "BertForPreTraining" and spec.config["hidden_act"] == "gelu_tanh"
    b = batch(seed=2)
    ours, ref = run_ours(model, b), run_hf(hf, b, nsp=True)
    assert_close("BertForPreTraining prediction_logits", ours["all"], ref.prediction_logits.numpy())
    assert_close("BertForPreTraining seq_relationship_logits", ours["nsp_logits"], ref.seq_relationship_logits.numpy())
    ce = torch.nn.functional.cross_entropy(ref.seq_relationship_logits, t(b["nsp"])).item()
    assert_close("BertForPreTraining NSP loss", ours["nsp_loss"], ce)
    n = float(b["weights"].sum())
    total = ours["mlm_loss"] * (n + 1e-5) / n + ours["nsp_loss"]  # undo BERT's +1e-5 to compare with HF's sum
    assert_close("BertForPreTraining total loss (MLM + NSP)", total, ref.loss.item())
    # The encoder alone (pooler kept) equals HF's BertModel inside.
    with pytest.warns(UserWarning, match="dropping 7 tensor"):  # the MLM and NSP heads
        enc, espec = encoder_from_hf(str(tmp_path))
    assert espec.kind == "encoder" and espec.options["pooler"]
    with torch.no_grad():
        base = hf.bert(t(b["ids"]), attention_mask=t(b["mask"]), token_type_ids=t(b["seg"]))
    hidden, aux = nnx.jit(lambda m, i, s, k: m(i, s, k))(enc, jnp.asarray(b["ids"]), jnp.asarray(b["seg"]),
                                                          jnp.asarray(b["mask"]))
    assert_close("BertModel last_hidden_state (encoder_from_hf)", hidden, base.last_hidden_state.numpy())
    assert_close("BertModel pooler_output (encoder_from_hf)", aux["pooled"], base.pooler_output.numpy())


def test_round_trip_maskjax_hf_maskjax_is_bitwise(mlm_pair, tmp_path):
    hf, model, _ = mlm_pair
    folder = bert_to_hf(model, str(tmp_path / "hf"))[0]
    loaded, info = transformers.BertForMaskedLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    back, _ = bert_from_hf(folder)
    ours, again = module_params(model), module_params(back)
    assert ours.keys() == again.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], again[k], err_msg="/".join(k))
    # HF -> maskjax -> HF is exact as well (the HF file holds no tied duplicates).
    ref, _ = read_hf(hf)
    written, _ = read_hf(folder)
    for k, v in written.items():
        np.testing.assert_array_equal(v, ref[k], err_msg=k)
    # The command-line path: HF folder -> maskjax directory (Orbax) -> HF folder, also exact.
    spec = convert_hf_bert_checkpoint(folder, str(tmp_path / "mj"))
    assert spec.architecture == "BertForMaskedLM" and "Hugging Face checkpoint" in spec.source
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_hf_bert_checkpoint(folder, str(tmp_path / "mj"))
    restored, _ = load_text_converted(str(tmp_path / "mj"))
    for k, v in module_params(restored).items():
        np.testing.assert_array_equal(v, ours[k], err_msg="/".join(k))
    (again_folder,) = convert_maskjax_to_hf_bert(str(tmp_path / "mj"), str(tmp_path / "hf2"))
    again_sd, again_config = read_hf(again_folder)
    assert again_config["architectures"] == ["BertForMaskedLM"] and again_sd.keys() == written.keys()
    for k, v in again_sd.items():
        np.testing.assert_array_equal(v, written[k], err_msg=k)


def test_maskjax_model_exports_to_hf_with_same_outputs(tmp_path):
    """A maskjax-initialised BertPretrainer(nsp=True) -> HF folder -> same logits in transformers."""
    model = BertPretrainer("mu", vocab_size=VOCAB, max_positions=16, nsp=True, rngs=nnx.Rngs(3))
    folder = bert_to_hf(model, str(tmp_path))[0]
    hf, info = transformers.BertForPreTraining.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    b = batch(seed=4)
    ours, ref = run_ours(model, b), run_hf(hf.eval(), b, nsp=True)
    assert_close("maskjax BertPretrainer -> HF prediction_logits", ours["all"], ref.prediction_logits.numpy())
    assert_close("maskjax BertPretrainer -> HF seq_relationship_logits", ours["nsp_logits"],
                 ref.seq_relationship_logits.numpy())


def test_conversion_errors_name_key_and_shapes(mlm_pair):
    hf, _, _ = mlm_pair
    sd, config = read_hf(hf)
    key = "bert.encoder.layer.1.attention.self.key.weight"
    bad = dict(sd, **{key: np.zeros((32, 16), np.float32)})
    with pytest.raises(ShapeMismatchError, match=r"layer\.1\.attention\.self\.key\.weight.*\(32, 16\).*\(32, 32\)"):
        from_hf(bad, config=config)
    missing = {k: v for k, v in sd.items() if k not in ("cls.predictions.bias", "cls.predictions.decoder.bias")}
    with pytest.raises(ConversionError, match="missing 1 key.*cls.predictions.bias"):
        from_hf(missing, config=config, kind="bert")
    untied = dict(sd, **{"cls.predictions.decoder.weight": sd["bert.embeddings.word_embeddings.weight"] + 1})
    with pytest.raises(ConversionError, match="tied"):
        from_hf(untied, config=config)
    with pytest.raises(ConversionError, match="not a Hugging Face BERT"):
        from_hf({"foo.weight": np.zeros(3)})
    with warnings.catch_warnings(record=True):  # heads dropped with a warning, encoder kept
        enc, spec = from_hf(sd, config=config, kind="encoder")
    assert spec.kind == "encoder"


@pytest.mark.slow
def test_bert_base_masked_lm_matches_hf():
    """BERT-Base (12 x 768, vocab 30522) BertForMaskedLM with random weights."""
    hf = randomize(transformers.BertForMaskedLM(transformers.BertConfig()), seed=5)
    model, spec = bert_from_hf(hf)
    assert spec.config["hidden"] == 768 and spec.config["layers"] == 12
    b = batch(seed=6, length=64, batch_size=2, vocab=30522)
    ours, ref = run_ours(model, b), run_hf(hf, b, nsp=False)
    assert_close("BERT-Base BertForMaskedLM logits", ours["all"], ref.logits.numpy())
    n = float(b["weights"].sum())
    assert_close("BERT-Base MLM loss", ours["mlm_loss"], ref.loss.item() * n / (n + 1e-5))
