"""Every config file loads, validates and builds its model abstractly; smoke runs train."""

import pathlib

import jax
import pytest

from maskjax.config import load_config
from maskjax.methods import make_method
from maskjax.train.loop import train
from maskjax.core.state import ModelTemplate
from maskjax.train.validate import validate_config

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(p for p in CONFIG_DIR.rglob("*.py") if not p.name.startswith("_"))


def test_config_files_found():
    assert len(CONFIG_FILES) >= 5


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
# The full recipes build the same model classes as their smoke variants (at the recipe's size), so
# they run with -m slow: each abstract build costs seconds and CI has a time budget.
@pytest.mark.parametrize("arg", [pytest.param("", marks=pytest.mark.slow), "smoke"])
def test_config_loads_and_builds_abstractly(path, arg):
    config = load_config(f"{path}:{arg}" if arg else str(path))
    module_doc = path.read_text().split('"""')[1]
    for needed in ("Command", "maskjax train --config"):
        assert needed in module_doc, f"{path.name} docstring lacks {needed!r}"
    template = ModelTemplate.from_builder(make_method(config).build)
    assert template.num_params() > 0
    if arg == "smoke":
        validate_config(config)  # smoke variants must run on this machine as they are


def test_mae_paper_recipes_match_the_spec():
    for name, variant in [("vit_b16_in1k", "B/16"), ("vit_l16_in1k", "L/16"), ("vit_h14_in1k", "H/14")]:
        for epochs in (800, 1600):
            c = load_config(str(CONFIG_DIR / "mae" / f"{name}.py") + f":epochs={epochs}")
            assert c.model.variant == variant and c.epochs == epochs
            assert c.global_batch == 4096 and c.optim.base_lr == 1.5e-4 and c.optim.warmup_epochs == 40
            assert c.loss.norm_pix and c.masking.ratio == 0.75
            assert (c.optim.b1, c.optim.b2, c.optim.weight_decay) == (0.9, 0.95, 0.05)
            assert (c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads) == (512, 8, 16)
    with pytest.raises(ValueError, match="800 or 1600"):
        load_config(str(CONFIG_DIR / "mae" / "vit_b16_in1k.py") + ":epochs=10")


def test_unknown_config_argument_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown config argument 'smok'"):
        load_config(str(CONFIG_DIR / "mae" / "default.py") + ":smok")


# mae/cifar10.py differs from the default recipe in its data (the JPEG folders, covered by the data
# tests) and runs with -m slow, to keep the default suite inside the CI time budget.
FAST_SMOKE = ["mae/default.py", pytest.param("mae/cifar10.py", marks=pytest.mark.slow)]
SLOW_SMOKE = ["mae/vit_b16_in1k.py", "mae/vit_l16_in1k.py", "mae/vit_h14_in1k.py"]


def _smoke(rel, tmp_path, shared=None):
    config = load_config(str(CONFIG_DIR / rel) + ":smoke")
    config.progress = False
    result = train(config, str(tmp_path / "run"))
    assert result.step == config.total_steps
    assert all(jax.numpy.isfinite(h["loss"]) for h in result.history)


@pytest.mark.parametrize("rel", FAST_SMOKE)
def test_smoke_training(rel, tmp_path, request):
    if rel == "mae/cifar10.py":
        request.getfixturevalue("shared_data")  # skips without ../shared/data
    _smoke(rel, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("rel", SLOW_SMOKE)
def test_smoke_training_large_models(rel, tmp_path):
    _smoke(rel, tmp_path)


def test_mae_finetune_and_probe_protocols_in_the_imagenet_recipes():
    expected = {"vit_b16_in1k": (100, 5e-4, 0.65, 0.1), "vit_l16_in1k": (50, 1e-3, 0.75, 0.2),
                "vit_h14_in1k": (50, 1e-3, 0.75, 0.3)}
    for name, (epochs, blr, decay, drop) in expected.items():
        ft = load_config(str(CONFIG_DIR / "mae" / f"{name}.py")).evals.finetune
        assert (ft.epochs, ft.blr, ft.layer_decay, ft.drop_path) == (epochs, blr, decay, drop)
        assert (ft.batch_size, ft.warmup_epochs, ft.min_lr, ft.mixup, ft.cutmix, ft.label_smoothing) == (
            1024, 5, 1e-6, 0.8, 1.0, 0.1)
        lp = load_config(str(CONFIG_DIR / "mae" / f"{name}.py")).evals.linear_probe
        assert (lp.epochs, lp.batch_size, lp.blr, lp.warmup_epochs) == (90, 16384, 0.1, 10)
