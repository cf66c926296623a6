"""Bad configs fail before compiling, with a message naming the problem."""

import pytest

from maskjax.train.validate import ConfigError, validate_config


def _error(config, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config, **kw)
    return str(info.value)


def test_good_config_passes(tiny):
    validate_config(tiny(), num_devices=8, process_count=1)


def test_image_size_not_divisible_by_patch(tiny):
    msg = _error(tiny(**{"data.image_size": 18}), num_devices=1)
    assert "image_size 18 is not divisible by the patch size 4" in msg


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.1])
def test_mask_ratio_outside_open_interval(tiny, ratio):
    assert f"masking.ratio must be in (0, 1), got {ratio}" in _error(tiny(**{"masking.ratio": ratio}), num_devices=1)


def test_global_batch_not_divisible_by_data_parallel_size(tiny):
    msg = _error(tiny(**{"global_batch": 12}), num_devices=8)
    assert "not divisible by the data-parallel size 8" in msg


def test_global_batch_not_divisible_by_accumulation(tiny):
    assert "not divisible by grad_accum 3" in _error(tiny(**{"grad_accum": 3}), num_devices=1)


def test_mesh_not_matching_device_count(tiny):
    config = tiny()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 1
    msg = _error(config, num_devices=8)
    assert "has 4 devices but 8 are available" in msg


def test_missing_data_directory(tiny, tmp_path):
    missing = str(tmp_path / "nope")
    msg = _error(tiny(**{"data.path": missing}), num_devices=1)
    assert f"data.path {missing!r} does not exist" in msg


def test_unknown_model_variant(tiny):
    msg = _error(tiny(**{"model.variant": "Q/16"}), num_devices=1)
    assert "unknown ViT size 'Q'" in msg
    assert "'B'" in msg  # lists the known sizes


def test_all_problems_reported_at_once(tiny):
    msg = _error(tiny(**{"masking.ratio": 2.0, "model.variant": "Q/16"}), num_devices=1)
    assert "masking.ratio" in msg and "unknown ViT size" in msg


def test_attention_impl_is_checked_before_compiling(tiny):
    msg = _error(tiny(**{"model.attention_impl": "flashy"}), num_devices=1)
    assert "model.attention_impl='flashy' is not available for mae" in msg
    msg = _error(tiny(**{"model.attention_impl": "cudnn"}), num_devices=1)  # float32, on a CPU
    assert "needs compute_dtype bfloat16 or float16" in msg and "needs an NVIDIA GPU" in msg
    for impl in ("xla", "blockwise", "bhtd"):
        validate_config(tiny(**{"model.attention_impl": impl}), num_devices=1)


def test_text_attention_impl_takes_only_masked_kernels(tmp_path):
    from tests.text_helpers import tiny_text_config

    config = tiny_text_config(tmp_path / "train.txt")
    config.model.attention_impl = "blockwise"
    assert "is not available for bert; use None or one of ('xla', 'cudnn')" in _error(config, num_devices=8)


@pytest.mark.parametrize("field, value, expected", [
    ("optim.base_lr", float("nan"), "optim.base_lr must be a finite number > 0, got nan"),
    ("optim.base_lr", float("inf"), "optim.base_lr must be a finite number > 0, got inf"),
    ("optim.base_lr", 0.0, "optim.base_lr must be a finite number > 0, got 0.0"),
    ("optim.base_lr", -1e-3, "optim.base_lr must be a finite number > 0, got -0.001"),
    ("total_steps", 0, "total_steps must be a whole number > 0, got 0"),
    ("total_steps", -5, "total_steps must be a whole number > 0, got -5"),
    ("global_batch", 0, "global_batch must be a whole number > 0, got 0"),
    ("global_batch", -16, "global_batch must be a whole number > 0, got -16"),
    ("log_every_steps", 0, "log_every_steps must be a whole number > 0, got 0"),
    ("checkpoint.every_steps", 0, "checkpoint.every_steps must be a whole number > 0, got 0"),
    ("checkpoint.every_steps", -1, "checkpoint.every_steps must be a whole number > 0, got -1"),
    ("checkpoint.max_to_keep", 0, "checkpoint.max_to_keep must be a whole number > 0, got 0 (0 or less would "
                                  "delete every checkpoint"),
    ("checkpoint.max_to_keep", -2, "checkpoint.max_to_keep must be a whole number > 0, got -2"),
    ("data.image_size", 0, "data.image_size must be a whole number > 0, got 0"),
])
def test_run_numbers_out_of_range_are_refused_one_line_each(tiny, field, value, expected):
    msg = _error(tiny(**{field: value}), num_devices=1)
    assert expected in msg
    assert sum(field + " must be" in line for line in msg.splitlines()) == 1


def test_unset_total_steps_and_unbounded_max_to_keep_pass(tiny):
    config = tiny(**{"total_steps": None})
    config.checkpoint.max_to_keep = None
    validate_config(config, num_devices=8, process_count=1)
