"""Numerical parity of maskjax's ELECTRA with Hugging Face ``ElectraForPreTraining`` / ``ElectraForMaskedLM``.

Tiny random-weight models with ``embedding_size != hidden_size`` (so both networks use their
own ``embeddings_project``), a padded batch with two token types, float32 on CPU; tolerance is
the scale-relative max error 1e-5 (measured values printed with ``-s``). HF's discriminator loss
is the plain mean BCE over attention-mask tokens, ELECTRA's divides by ``n + 1e-6``: the tests
compare ours with HF's mean rescaled by ``n / (n + 1e-6)``.
"""

from __future__ import annotations

import copy

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from maskjax.convert.common import ConversionError  # noqa: E402
from maskjax.convert.hf_bert import (bert_from_hf, bert_to_hf, convert_hf_electra_pair,  # noqa: E402
                                     convert_maskjax_to_hf_bert, electra_discriminator_from_hf, electra_from_hf,
                                     encoder_from_hf, load_text_converted, module_params, read_hf)
from maskjax.models.electra import Electra  # noqa: E402
from maskjax.objectives.text import mlm_loss, rtd_loss  # noqa: E402
from tests.convert.helpers import assert_close  # noqa: E402
from tests.convert.test_parity_bert import batch, randomize, t, tiny_config  # noqa: E402

EMB = 16


def electra_config(hidden: int, heads: int, **kw):
    """A 2-layer ELECTRA config with embedding size 16 (!= hidden: the projection path)."""
    return tiny_config(transformers.ElectraConfig, embedding_size=EMB, hidden_size=hidden, num_attention_heads=heads,
                       intermediate_size=4 * hidden, **kw)


@pytest.fixture(scope="module")
def pair():
    """(generator, discriminator) HF models sharing their embeddings, as a jointly trained pair."""
    disc = randomize(transformers.ElectraForPreTraining(electra_config(32, 4)), seed=10)
    gen = randomize(transformers.ElectraForMaskedLM(electra_config(24, 2)), seed=11)
    with torch.no_grad():
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
            for pname, p in getattr(gen.electra.embeddings, name).named_parameters():
                p.copy_(getattr(getattr(disc.electra.embeddings, name), pname))
    return gen, disc


def hf_logits(hf, b):
    with torch.no_grad():
        return hf(t(b["ids"]), attention_mask=t(b["mask"]), token_type_ids=t(b["seg"])).logits.numpy()


def disc_labels(b, seed=3):
    return (np.random.default_rng(seed).random(b["ids"].shape) < 0.3).astype(np.int64)


def test_electra_discriminator_logits_and_loss_match_hf(pair):
    _, disc = pair
    model, spec = electra_discriminator_from_hf(disc)
    assert spec.kind == "electra_discriminator" and spec.config["embedding_size"] == EMB
    assert model.encoder.transformer.embeddings_project is not None
    b = batch(seed=5)
    labels = disc_labels(b)

    @nnx.jit
    def run(m, ids, seg, mask, labels):
        logits = m.discriminator_logits(ids, seg, mask)
        return logits, rtd_loss(logits, labels, mask)[0]

    logits, loss = run(model, *(jnp.asarray(x) for x in (b["ids"], b["seg"], b["mask"], labels)))
    with torch.no_grad():
        ref = disc(t(b["ids"]), attention_mask=t(b["mask"]), token_type_ids=t(b["seg"]), labels=t(labels))
    assert_close("ElectraForPreTraining logits", logits, ref.logits.numpy())
    n = float(b["mask"].sum())
    assert_close("ElectraForPreTraining RTD loss (HF mean * n / (n + 1e-6))", loss, ref.loss.item() * n / (n + 1e-6))


def test_electra_generator_logits_and_loss_match_hf(pair):
    gen, _ = pair
    model, spec = bert_from_hf(gen)
    assert spec.architecture == "ElectraForMaskedLM" and spec.options["head_act"] == "gelu"
    b = batch(seed=6)

    @nnx.jit
    def run(m, ids, seg, mask, positions, labels, weights):
        hidden, _ = m.encode(ids, seg, mask)
        return m.mlm_logits_all(hidden), mlm_loss(m.mlm_logits(hidden, positions), labels, weights, eps=1e-6)[0]

    logits, loss = run(model, *(jnp.asarray(b[k]) for k in ("ids", "seg", "mask", "positions", "labels", "weights")))
    with torch.no_grad():
        ref = gen(t(b["ids"]), attention_mask=t(b["mask"]), token_type_ids=t(b["seg"]), labels=t(b["hf_labels"]))
    assert_close("ElectraForMaskedLM logits", logits, ref.logits.numpy())
    n = float(b["weights"].sum())
    assert_close("ElectraForMaskedLM MLM loss (HF mean * n / (n + 1e-6))", loss, ref.loss.item() * n / (n + 1e-6))


@nnx.jit
def electra_outputs(m: Electra, ids, seg, mask):
    return m.generator_logits(ids, seg, mask), m.discriminator_logits(ids, seg, mask)


def test_electra_pair_assembles_and_round_trips(pair, tmp_path):
    gen, disc = pair
    model, spec = electra_from_hf(gen, disc, strict=True)
    assert model.generator_cfg.hidden == 24 and model.cfg.hidden == 32
    assert model.generator.embeddings_project is not None and model.discriminator.embeddings_project is not None
    b = batch(seed=7)
    g, d = electra_outputs(model, *(jnp.asarray(b[k]) for k in ("ids", "seg", "mask")))
    assert_close("Electra pair: generator logits vs ElectraForMaskedLM", g, hf_logits(gen, b))
    assert_close("Electra pair: discriminator logits vs ElectraForPreTraining", d, hf_logits(disc, b))
    # maskjax -> two HF folders (strictly loadable) -> maskjax: bitwise.
    gdir, ddir = bert_to_hf(model, str(tmp_path))
    for cls, folder in ((transformers.ElectraForMaskedLM, gdir), (transformers.ElectraForPreTraining, ddir)):
        _, info = cls.from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    back, _ = electra_from_hf(gdir, ddir, strict=True)
    ours, again = module_params(model), module_params(back)
    assert ours.keys() == again.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], again[k], err_msg="/".join(k))
    # ... and through a maskjax directory (Orbax) and back to two HF folders.
    convert_hf_electra_pair(gdir, ddir, str(tmp_path / "mj"), strict=True)
    restored, rspec = load_text_converted(str(tmp_path / "mj"))
    assert isinstance(restored, Electra) and rspec.options["generator"]["hidden"] == 24
    for k, v in module_params(restored).items():
        np.testing.assert_array_equal(v, ours[k], err_msg="/".join(k))
    g2, d2 = convert_maskjax_to_hf_bert(str(tmp_path / "mj"), str(tmp_path / "hf2"))
    for a, b in ((gdir, g2), (ddir, d2)):
        first, second = read_hf(a)[0], read_hf(b)[0]
        assert first.keys() == second.keys()
        for k in first:
            np.testing.assert_array_equal(first[k], second[k], err_msg=k)


def test_electra_pair_with_different_embeddings_warns(pair):
    gen, disc = pair
    other = copy.deepcopy(gen)
    with torch.no_grad():
        other.electra.embeddings.LayerNorm.bias += 0.5
    with pytest.raises(ConversionError, match="embeddings differ at embeddings/norm/bias"):
        electra_from_hf(other, disc, strict=True)
    with pytest.warns(UserWarning, match="using the discriminator's"):
        model, _ = electra_from_hf(other, disc)
    np.testing.assert_array_equal(np.asarray(model.embeddings.norm.bias[...]),
                                  disc.electra.embeddings.LayerNorm.bias.detach().numpy())


def test_discriminator_loads_as_bert_like_encoder(pair):
    _, disc = pair
    with pytest.warns(UserWarning, match="dropping 4 tensor"):
        enc, spec = encoder_from_hf(disc)
    assert spec.kind == "encoder" and not spec.options["pooler"]
    b = batch(seed=8)
    hidden, _ = nnx.jit(lambda m, i, s, k: m(i, s, k))(enc, *(jnp.asarray(b[k]) for k in ("ids", "seg", "mask")))
    with torch.no_grad():
        ref = disc.electra(t(b["ids"]), attention_mask=t(b["mask"]), token_type_ids=t(b["seg"])).last_hidden_state
    assert_close("ElectraModel last_hidden_state (encoder_from_hf)", hidden, ref.numpy())
