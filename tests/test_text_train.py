"""Text methods through the real trainer: training, exact resume, sharding, evaluation, HF export."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from maskjax.train.loop import train
from tests.text_helpers import tiny_text_config, wikitext_slice


@pytest.fixture(scope="module")
def files(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("text_train")
    return (wikitext_slice(shared_data, root), wikitext_slice(shared_data, root, lines=400, name="test.txt"),
            root / "cache")


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


@pytest.mark.parametrize("method", ["bert", pytest.param("electra", marks=pytest.mark.slow)])
def test_text_training_resumes_exactly_and_evaluates(files, tmp_path, method):
    train_file, eval_file, cache = files
    extra = {"method": "electra", "masking.kind": "electra"} if method == "electra" else {}
    evals = {"mlm": {"type": "mlm", "every_steps": 0, "batch_size": 8, "batches": 2}}
    config = tiny_text_config(train_file, eval_file, cache_dir=cache, total_steps=6, **extra)
    config.evals = evals
    straight = tmp_path / "straight"
    train(config, str(straight))
    config = tiny_text_config(train_file, eval_file, cache_dir=cache, total_steps=6, **extra)
    config.evals = evals
    split = tmp_path / "split"
    train(config, str(split), stop_at_step=3)
    train(config, str(split))   # resumes at step 3: same masks, same data order, same dropout
    a, b = _losses(straight), _losses(split)
    assert sorted(a) == list(range(1, 7)) and sorted(b) == list(range(1, 7))
    np.testing.assert_allclose([b[s] for s in range(1, 7)], [a[s] for s in range(1, 7)], rtol=1e-5)
    results = [json.loads(line) for line in open(straight / "eval_results.jsonl")]
    acc = results[-1]["eval/mlm/accuracy"]
    assert 0.0 <= acc <= 1.0 and results[-1]["eval/mlm/perplexity"] > 1.0


@pytest.mark.slow  # 40 s; tests/test_sharding.py checks the same mesh equivalence on the image models
def test_text_loss_is_the_same_on_every_mesh(files, tmp_path):
    """Data parallel (8,1,1) and data x FSDP x tensor (2,2,2) give the same first steps."""
    train_file, _, cache = files
    losses = {}
    for shape in [(8, 1, 1), (2, 2, 2)]:
        config = tiny_text_config(train_file, cache_dir=cache, total_steps=2,
                                  **dict(zip(("mesh.data", "mesh.fsdp", "mesh.tensor"), shape)))
        config.evals = {}
        result = train(config, str(tmp_path / "x".join(map(str, shape))), run_evals=False)
        assert tuple(dict(result.mesh.shape).values()) == shape
        losses[shape] = [h["loss"] for h in result.history]
    for shape in losses:
        np.testing.assert_allclose(losses[shape], losses[(8, 1, 1)], rtol=2e-5, err_msg=str(shape))


@pytest.mark.slow  # 20 s; tests/convert/test_parity_bert.py checks the export itself
def test_trained_bert_exports_to_hugging_face(files, tmp_path):
    """maskjax convert maskjax-to-hf-bert on a training workdir: HF logits equal maskjax's."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from maskjax.convert.cli import main as convert_main, text_model_from_workdir

    train_file, _, cache = files
    config = tiny_text_config(train_file, cache_dir=cache, total_steps=2)
    config.evals = {}
    workdir = tmp_path / "run"
    train(config, str(workdir), run_evals=False)
    assert convert_main(["maskjax-to-hf-bert", str(workdir), str(tmp_path / "hf")]) == 0
    hf = transformers.BertForMaskedLM.from_pretrained(str(tmp_path / "hf")).eval()
    model = text_model_from_workdir(str(workdir))
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, size=(2, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    hidden, _ = model.encode(ids, np.zeros_like(ids), mask)
    ours = np.asarray(model.mlm_logits_all(hidden))
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() / np.abs(theirs[real]).max() < 1e-5


def test_training_from_tokenized_array_record(files, tmp_path):
    """The fast path: `maskjax tokenize` once, then train from the ArrayRecord blocks."""
    from maskjax.cli import main as cli
    from maskjax.data.modalities import get_modality

    train_file, _, cache = files
    config = tiny_text_config(train_file, cache_dir=cache, total_steps=2)
    get_modality("text").prepare(config, str(tmp_path))   # trains (or reuses) the vocabulary
    out = tmp_path / "tokenized"
    assert cli(["maskjax", "tokenize", "--vocab", config.data.vocab_path, "--input", str(train_file),
                "--doc-format", "wikitext", "--seq-len", "32", "--output", str(out)]) == 0
    in_memory = get_modality("text").open_source(config, "train")
    fast = tiny_text_config(out, cache_dir=cache, total_steps=2, **{"data.kind": "array_record_text"})
    fast.data.vocab_path = None                           # taken from the tokenized data's metadata
    fast.evals = {}
    result = train(fast, str(tmp_path / "run"), run_evals=False)
    source = get_modality("text").open_source(fast, "train")
    assert len(source) == len(in_memory)
    np.testing.assert_array_equal(source[3]["input_ids"], in_memory[3]["input_ids"])
    assert result.step == 2 and np.isfinite(result.history[-1]["loss"])
