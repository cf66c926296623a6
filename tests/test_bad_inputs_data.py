"""Bad data and converter inputs give one clear message (issue 24, "bad inputs").

Corrupt images are skipped, logged once and counted up to ``data.max_bad_fraction``; empty or
missing data and non-tar "tars" are a DataError naming the path before anything compiles; bad
config values are one ConfigError at validation; broken ``.pth`` / ``.safetensors`` files are a
ConversionError naming the file.
"""

from __future__ import annotations

import io
import logging
import pathlib
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from maskjax.data import bad_records
from maskjax.data.bad_records import SkipBadRecords, bad_record_count, records_read_count
from maskjax.data.pipeline import make_image_pipeline
from maskjax.data.sources import ImageFolderSource, open_image_source
from maskjax.data.transforms import DecodeImage
from maskjax.errors import ConfigError, DataError
from maskjax.train.validate import validate_config

from tests.conftest import REPO_ROOT

_RNG = np.random.default_rng(0)


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _bad_payloads() -> dict[str, bytes]:
    """The three kinds of corrupt file met in practice: empty, truncated, not an image at all."""
    jpeg = io.BytesIO()
    Image.fromarray(_RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    return {"zero.jpg": b"", "truncated.jpg": jpeg.getvalue()[:120], "html.jpg": b"<html>404 not found</html>"}


def _image_folder(root: pathlib.Path, good: int, bad: bool = True) -> pathlib.Path:
    """``root/train/{a,b}/`` with ``good`` PNGs and (optionally) the three bad files in ``a/``."""
    for i in range(good):
        folder = root / "train" / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"g{i:02d}.png").write_bytes(_png(i))
    if bad:
        for name, payload in _bad_payloads().items():
            (root / "train" / "a" / name).write_bytes(payload)
    return root


def _settle() -> None:
    """Waits until no read-ahead thread of a closed pipeline still counts (they finish in-flight reads)."""
    last = -1
    while records_read_count() != last:
        last = records_read_count()
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _fresh_counts():
    _settle()
    bad_records.reset_record_counts()
    yield
    bad_records.reset_record_counts()


def _pipeline(source, fraction: float, batch: int = 4):
    return iter(make_image_pipeline(source, global_batch=batch, image_size=8, train=True, seed=0,
                                    process_index=0, process_count=1, crop_pct=1.0,
                                    max_bad_fraction=fraction))


# --- 1. corrupt images ----------------------------------------------------------------------


def test_corrupt_images_are_skipped_logged_once_and_counted(tmp_path, caplog):
    source = ImageFolderSource(_image_folder(tmp_path, good=12), split="train")
    assert len(source) == 15  # the bad files are listed: nothing is decoded when a folder is opened
    it = _pipeline(source, fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="maskjax.data.bad_records"):
        for _ in range(12):  # 48 examples: a little over three epochs
            batch = next(it)
            assert batch["image"].shape == (4, 8, 8, 3) and batch["label"].shape == (4,)  # static shapes
            assert np.isfinite(batch["image"]).all()
        it.close()  # stops grain's read-ahead threads, so the counts below are final
        _settle()
    warnings = [r.getMessage() for r in caplog.records if "skipping unreadable record" in r.getMessage()]
    for name in _bad_payloads():
        said = [w for w in warnings if w.split(" (")[0].endswith(f"/train/a/{name}")]
        assert len(said) == 1, (name, warnings)  # once per file, although every epoch meets it again
    assert len(warnings) == 3
    # Each epoch meets all three; grain reads a few batches ahead, hence ">=".
    assert bad_record_count() >= 9
    assert records_read_count() >= 48 + bad_record_count()


def test_bad_record_is_replaced_by_the_next_readable_one(tmp_path):
    source = ImageFolderSource(_image_folder(tmp_path, good=4), split="train")
    wrapped = SkipBadRecords(source, DecodeImage().map, max_bad_fraction=1.0)
    names = [source.relative_path(i) for i in range(len(source))]
    first_bad = next(i for i, n in enumerate(names) if n.endswith(".jpg"))
    first_good_after = next(i for i in range(first_bad, len(names)) if names[i].endswith(".png"))
    item = wrapped[first_bad]
    np.testing.assert_array_equal(item["image"], DecodeImage().map(source[first_good_after])["image"])
    assert wrapped.bad == first_good_after - first_bad == bad_record_count()


def test_too_many_bad_records_stop_the_run_with_a_data_error(tmp_path):
    source = ImageFolderSource(_image_folder(tmp_path, good=12), split="train")  # 20% bad
    it = _pipeline(source, fraction=0.1)
    with pytest.raises(DataError) as info:
        for _ in range(200):
            next(it)
    it.close()
    msg = str(info.value)
    # Judged only after 100 reads: nothing stops a run for one bad file among the first few.
    reads = int(msg.split(" of the ")[1].split()[0])
    assert reads >= bad_records.MIN_RECORDS
    assert "records read so far are unreadable" in msg and "data.max_bad_fraction=0.1" in msg
    assert f"{tmp_path}/train/a/" in msg and "\n" not in msg


def test_zero_fraction_stops_at_the_first_bad_record_and_names_the_tar_member(tmp_path):
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tar:
        for name, payload in [("train/a/ok.png", _png(0)), ("train/a/zz_broken.png", b"\x89PNG\r\n\x1a\n")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    source = ImageFolderSource(archive, split="train")
    wrapped = SkipBadRecords(source, DecodeImage().map, max_bad_fraction=0.0)
    assert wrapped[0]["image"].shape == (8, 8, 3)
    with pytest.raises(DataError, match=rf"{archive}:train/a/zz_broken\.png"):
        wrapped[1]


def test_all_bad_folder_is_a_data_error(tmp_path):
    for name, payload in _bad_payloads().items():
        (tmp_path / "c").mkdir(exist_ok=True)
        (tmp_path / "c" / name).write_bytes(payload)
    wrapped = SkipBadRecords(ImageFolderSource(tmp_path), DecodeImage().map, max_bad_fraction=1.0)
    with pytest.raises(DataError, match="no record of ImageFolderSource.* is readable"):
        wrapped[0]


def test_first_records_all_bad_stops_early_even_when_any_fraction_is_allowed():
    # 50 non-images then good ones: a wrong folder, not noise, so no need to wait for 100 reads.
    items = [{"image": b"not an image", "label": 0}] * 50 + [{"image": _png(0), "label": 0}] * 50
    wrapped = SkipBadRecords(items, DecodeImage().map, max_bad_fraction=1.0)
    with pytest.raises(DataError, match=f"all of the first {bad_records.ALL_BAD_PROBE} records read are unreadable"):
        wrapped[0]


# --- 2, 3. empty / missing data, a text file as a tar ---------------------------------------


def test_empty_folder_missing_path_and_text_tar_are_data_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty_split" / "train").mkdir(parents=True)
    text_tar = tmp_path / "notes.tar"
    text_tar.write_text("these are my notes, not an archive\n" * 40)
    cases = {
        tmp_path / "empty": "is empty",
        tmp_path / "empty_split": "no images found",
        tmp_path / "missing": "not found",
        text_tar: "is not a readable tar archive (invalid header)",
    }
    for path, expected in cases.items():
        with pytest.raises(DataError) as info:
            open_image_source("folder", path=path, split="train")
        assert expected in str(info.value) and str(path) in str(info.value)
    with pytest.raises(FileNotFoundError):  # still one for callers that catch that
        open_image_source("folder", path=tmp_path / "missing")


# --- 4-6. config values, at validation --------------------------------------------------------


def _config_error(config) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(config, num_devices=1, process_count=1)
    text = str(info.value)
    if "\n" not in text:  # one problem: "invalid config: <problem>" on one line
        return ["  - " + text.removeprefix("invalid config: ")]
    return text.splitlines()[1:]  # "invalid config:" then one "  - ..." line per problem


def test_unknown_augment_lists_the_known_ones(tiny):
    problems = _config_error(tiny(**{"data.augment": "bogus"}))
    assert problems == ["  - unknown data.augment 'bogus' for images; use one of "
                        "('mae', 'probe', 'finetune', 'none', 'simmim', 'maskfeat', 'ijepa')"]


def test_bad_max_bad_fraction_and_a_file_that_is_no_tar(tiny, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    problems = _config_error(tiny(**{"data.max_bad_fraction": 1.5, "data.path": str(notes)}))
    assert len(problems) == 2
    assert "is a file but not a tar archive" in problems[0] and "data.max_bad_fraction" in problems[1]


def test_mask_ratio_keeping_no_patch_names_the_patch_count(tiny):
    # mu/4 at 16 px: a 4x4 grid of 16 patches; 0.999 keeps int(16 * 0.001) = 0.
    problems = _config_error(tiny(**{"masking.ratio": 0.999}))
    assert len(problems) == 1
    assert "masking.ratio=0.999 keeps 0 of the 16 patches" in problems[0] and "at most 0.9375" in problems[0]
    validate_config(tiny(**{"masking.ratio": 0.9375}), num_devices=1, process_count=1)  # keeps exactly one


# VideoMAE's tube masking hides int(ratio * tokens) per frame slot, so any ratio < 1 keeps one.
@pytest.mark.parametrize("config_file", ["audiomae/fsdd.py", "mae_st/mae_st.py"])
def test_media_methods_refuse_a_ratio_keeping_nothing(config_file):
    from maskjax.config import apply_overrides, load_config

    config = load_config(str(REPO_ROOT / "configs" / config_file) + ":smoke")
    apply_overrides(config, {"masking.ratio": 0.9999})
    assert any("masking" in p and "0.9999" in p for p in _config_error(config))


@pytest.mark.parametrize("overrides, expected", [
    ({"data.image_size": 0}, "data.image_size must be a whole number > 0, got 0"),
    ({"data.image_size": 18}, "data.image_size 18 is not divisible by the patch size 4"),
    ({"global_batch": 0}, "global_batch must be a whole number > 0, got 0"),
])
def test_sizes_give_one_message(tiny, overrides, expected):
    problems = _config_error(tiny(**overrides))
    assert len(problems) == 1 and expected in problems[0]


# --- 7. converter inputs ----------------------------------------------------------------------


def test_broken_weight_files_are_conversion_errors_naming_the_file(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.numpy")
    from maskjax.convert.cli import main as convert_main
    from maskjax.convert.common import ConversionError
    from maskjax.convert.torch_io import load_state_dict

    good_pth, good_st = tmp_path / "good.pth", tmp_path / "good.safetensors"
    torch.save({"w": torch.zeros(256)}, good_pth)
    st.save_file({"w": np.zeros(256, np.float32)}, str(good_st))
    files = {"empty.pth": b"", "truncated.pth": good_pth.read_bytes()[:300], "garbage.pth": b"hello\n" * 20,
             "empty.safetensors": b"", "truncated.safetensors": good_st.read_bytes()[:200]}
    for name, payload in files.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ConversionError, match=str(path)):
            load_state_dict(str(path))
    assert load_state_dict(str(good_pth))["w"].shape == (256,)  # intact files still load
    capsys.readouterr()
    assert convert_main(["mae-official", str(tmp_path / "truncated.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: cannot read {tmp_path / 'truncated.pth'}" in err


# --- end to end: the command line ------------------------------------------------------------


def test_train_on_a_text_file_named_tar_exits_2_with_one_line(tmp_path, capsys):
    from maskjax.cli import main

    text_tar = tmp_path / "x.tar"
    text_tar.write_text("plain text\n")
    status = main(["maskjax", "train", "--config", str(REPO_ROOT / "configs/mae/default.py") + ":smoke",
                   "--workdir", str(tmp_path / "run"), "--skip_evals", "--config.total_steps=3",
                   f"--config.data.path={text_tar}", "--config.progress=False"])
    err = capsys.readouterr().err
    assert status == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert str(text_tar) in lines[0] and "not a readable tar archive" in lines[0]
