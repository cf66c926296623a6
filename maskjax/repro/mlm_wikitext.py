"""The masked-LM mini reproductions on WikiText-2 (masking rate and replacement; ELECTRA vs BERT)."""

from __future__ import annotations

from maskjax.repro.ledger import Row, Table, register_table

# The WikiText-2 masked-LM mini reproductions: BERT-Tiny (2 x 128) on `valid.txt`, evaluated on
# `test.txt` by held-out masked-token accuracy at a fixed 15 % [MASK]-only masking and by
# fine-tuning on the word-order proxy task (`maskjax.data.text.glue.wikitext_order_task`).
_MLM_CONFIG = "configs/bert/wikitext_tiny.py"
_MLM_STEPS = 6000
_MLM_BASE = {
    "total_steps": _MLM_STEPS, "global_batch": 64, "optim.warmup_steps": _MLM_STEPS // 20,
    "evals": {
        "mlm": {"type": "mlm", "every_steps": 0, "batch_size": 64},
        "order": {"type": "text_classify", "every_steps": 0, "n_train": 4000, "n_test": 1000, "seq_len": 64,
                  "epochs": 4, "batch_size": 32, "lr": 3e-4, "random_init": True},
    },
}
_MLM_METRICS = {"held-out MLM accuracy @15%": "eval/mlm/accuracy", "order-task accuracy": "eval/order/accuracy",
                "order-task, random-init encoder": "eval/order/random_init_accuracy"}
_MLM_SETUP = (f"BERT-Tiny (2 layers, 128 wide, post-LN, dropout 0.1) with an 8,192-token WordPiece vocabulary "
              f"trained on WikiText-2 `valid.txt`; 128-token blocks; {_MLM_STEPS} steps of 64 blocks (about 190 "
              "epochs of `valid.txt`'s 2,024 blocks, with new masks every time), BERT's AdamW without bias correction, peak lr 1e-3, 5 % warmup then linear "
              "decay. Evaluation on WikiText-2 `test.txt`: masked-token accuracy at a fixed 15 % [MASK]-only "
              "masking, and fine-tuning (4 epochs, 4,000 examples, lr 3e-4) on the word-order proxy task "
              "(original sentence vs. one with adjacent words swapped; 1,000 test sentences).")
_MLM_SMOKE = {"model.variant": "mu", "global_batch": 8, "total_steps": 2, "log_every_steps": 1, "progress": False,
              "optim.warmup_steps": 1}
_MLM_SMOKE_EVALS = {
    "mlm": {"type": "mlm", "batch_size": 8, "batches": 2},
    "order": {"type": "text_classify", "n_train": 64, "n_test": 32, "seq_len": 32, "epochs": 1, "batch_size": 16},
}
# Two binomial standard errors of an accuracy near 50 % on the 1,000 test sentences.
_ORDER_NOISE = 2 * (0.25 / 1000) ** 0.5
_BERT_15 = {"masking.ratio": 0.15, "masking.mix": (0.8, 0.1, 0.1), "masking.max_predictions": 21}
_WETTIG = ("Wettig et al. 2023 README 'Model List' (RoBERTa-large size, efficient recipe, GLUE dev MNLI); "
           "specs/methods_text_gen.md 4c")

TABLES = {
    "mlm_wikitext_masking": Table(
        "mlm_wikitext_masking", "Masked-LM mini ablation: masking rate and replacement", _MLM_CONFIG, _MLM_BASE,
        (Row("15%, 80-10-10", _BERT_15, {"order-task accuracy": 83.7}),
         Row("15%, all [MASK]", {**_BERT_15, "masking.mix": (1.0, 0.0, 0.0)}, {"order-task accuracy": 84.2}),
         Row("40%, 80-10-10", {"masking.ratio": 0.4, "masking.mix": (0.8, 0.1, 0.1), "masking.max_predictions": 53},
             {"order-task accuracy": 84.3}),
         Row("40%, all [MASK]", {"masking.ratio": 0.4, "masking.mix": (1.0, 0.0, 0.0), "masking.max_predictions": 53},
             {"order-task accuracy": 84.5})),
        _MLM_METRICS, _WETTIG, "40 % masking with all-[MASK] replacement fine-tunes best (MNLI 84.5)",
        "40%, all [MASK]", "order-task accuracy", setup=_MLM_SETUP, smoke=_MLM_SMOKE, smoke_evals=_MLM_SMOKE_EVALS,
        paper_note="The paper column under 'order-task accuracy' is the paper's MNLI dev accuracy.",
        noise=_ORDER_NOISE),
    "mlm_wikitext_electra": Table(
        "mlm_wikitext_electra", "ELECTRA vs BERT at the same size and steps", _MLM_CONFIG, _MLM_BASE,
        (Row("BERT-Tiny (MLM 15%)", _BERT_15, {"order-task accuracy": 75.1}),
         Row("ELECTRA-Tiny (RTD, generator 1/4)",
             {"method": "electra", "masking.kind": "electra", "optim.schedule": "linear_electra",
              "masking.max_predictions": 19}, {"order-task accuracy": 79.9})),
        _MLM_METRICS, "ELECTRA paper Table 1, GLUE dev: ELECTRA-Small 79.9 vs BERT-Small 75.1 "
        "(specs/methods_text_gen.md 6d, recalled there and marked UNVERIFIED)",
        "replaced-token detection fine-tunes better than MLM at the same model size and compute",
        "ELECTRA-Tiny (RTD, generator 1/4)", "order-task accuracy", setup=_MLM_SETUP, smoke=_MLM_SMOKE,
        smoke_evals=_MLM_SMOKE_EVALS,
        paper_note="The paper column under 'order-task accuracy' is the paper's GLUE dev average; ELECTRA's "
                   "held-out MLM accuracy is its small generator's.",
        noise=_ORDER_NOISE),
}

for _table in TABLES.values():
    register_table(_table)
