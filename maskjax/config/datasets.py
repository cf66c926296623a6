"""Dataset locations: one resolver for where the offline datasets live, and the helpers that point
a config's ``data`` section at them.

The root is ``$MASKJAX_DATA_DIR`` when set, else the development default ``../shared/data``
beside the checkout. A per-dataset variable (``$MASKJAX_CIFAR10``, ``$MASKJAX_FSDD``,
``$MASKJAX_WIKITEXT2``) still overrides one dataset's folder or file.
"""

from __future__ import annotations

import os
import pathlib

import ml_collections

DATA_DIR_ENV = "MASKJAX_DATA_DIR"


def data_root() -> pathlib.Path:
    """``$MASKJAX_DATA_DIR``, else ``../shared/data`` beside the checkout."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"


def dataset_path(name: str, env: str | None = None) -> pathlib.Path:
    """Where dataset ``name`` lives: ``$env`` when given and set, else ``data_root() / name``."""
    if env and os.environ.get(env):
        return pathlib.Path(os.environ[env])
    return data_root() / name


def wikitext2_dir() -> pathlib.Path:
    """Where WikiText-2 (``valid.txt``, ``test.txt``) lives: ``$MASKJAX_WIKITEXT2`` or the data root."""
    return dataset_path("wikitext2", "MASKJAX_WIKITEXT2")


def cifar10_dir() -> pathlib.Path:
    """Where the full CIFAR-10 tars (``train.tar``, ``test.tar``) live: ``$MASKJAX_CIFAR10`` or the data root."""
    return dataset_path("cifar10", "MASKJAX_CIFAR10")


def fsdd_tar() -> pathlib.Path:
    """The Free Spoken Digit Dataset's ``recordings.tar``: ``$MASKJAX_FSDD`` or the data root."""
    if os.environ.get("MASKJAX_FSDD"):
        return pathlib.Path(os.environ["MASKJAX_FSDD"])
    return data_root() / "fsdd" / "recordings.tar"


def embedded_data(config: ml_collections.ConfigDict, image_size: int | None = None) -> None:
    """Points ``config.data`` at the CIFAR-10 subset shipped inside the package (no download)."""
    from maskjax.data import embedded_cifar10_path

    root = embedded_cifar10_path()
    config.data.kind = "folder"
    config.data.path = f"{root}/train.tar.gz"
    config.data.eval_path = f"{root}/test.tar.gz"
    config.data.split = "train"
    config.data.eval_split = "test"
    config.data.name = None
    if image_size is not None:
        config.data.image_size = image_size


def cifar10_folder_data(config: ml_collections.ConfigDict) -> None:
    """Points an image config at all of CIFAR-10 (the tars in :func:`cifar10_dir`)."""
    root = cifar10_dir()
    config.data.kind = "folder"
    config.data.path = str(root / "train.tar")
    config.data.eval_path = str(root / "test.tar")
    config.data.split = "train"
    config.data.eval_split = "test"


def tfds_wikipedia(config: ml_collections.ConfigDict, seq_len: int = 128) -> None:
    """Points a text recipe at TFDS ``wikipedia/20230601.en`` (prepared by the user), 1 % held out."""
    config.data.kind = "tfds_text"
    config.data.name = "wikipedia/20230601.en"
    config.data.split = "train"
    config.data.eval_split = "train[:1%]"
    config.data.seq_len = seq_len


def wikitext2_data(config: ml_collections.ConfigDict, vocab_size: int = 8192) -> None:
    """Points a text config at WikiText-2: train on ``valid.txt``, evaluate on ``test.txt``.

    The vocabulary is a WordPiece of ``vocab_size`` trained on the training file (cached).
    """
    root = wikitext2_dir()
    config.data.kind = "text"
    config.data.doc_format = "wikitext"
    config.data.path = str(root / "valid.txt")
    config.data.eval_path = str(root / "test.txt")
    config.data.vocab_path = None
    config.data.vocab_size = vocab_size


def fsdd_data(config: ml_collections.ConfigDict) -> None:
    """Points an audio config at the Free Spoken Digit Dataset (8 kHz, official split)."""
    path = str(fsdd_tar())
    config.data.kind = "fsdd"
    config.data.path = path
    config.data.eval_path = path
    config.data.split = "train"
    config.data.eval_split = "test"
    config.data.sample_rate = 8000


def embedded_cifar_tars() -> tuple[str, str]:
    """The CIFAR-10 subset shipped in the package (train, test tars): moving-CIFAR clips for smoke runs."""
    from maskjax.data import embedded_cifar10_path

    root = embedded_cifar10_path()
    return f"{root}/train.tar.gz", f"{root}/test.tar.gz"


def moving_cifar_data(config: ml_collections.ConfigDict, *, embedded: bool = True) -> None:
    """Points a video config at synthetic moving-CIFAR-10 clips (``maskjax.data.video.moving_cifar``).

    ``embedded``: the 10,000-image subset inside the package; else the full CIFAR-10 tars in
    :func:`cifar10_dir`.
    """
    if embedded:
        train, test = embedded_cifar_tars()
    else:
        root = cifar10_dir()
        train, test = str(root / "train.tar"), str(root / "test.tar")
    config.data.kind = "moving_cifar"
    config.data.path = train
    config.data.eval_path = test
    config.data.split = "train"
    config.data.eval_split = "test"


def char_corpus(wikitext: bool) -> dict:
    """``config.data`` fields of the shared character corpora (text8-style, ``maskjax.data.text.chars``).

    WikiText-2 trains on ``valid.txt`` and holds out ``test.txt`` (the shared copy has no train
    split); Tiny Shakespeare (``$MASKJAX_TINYSHAKESPEARE`` or ``tinyshakespeare/input.txt`` under the
    data root) holds out its last 10 % in the pipeline.
    """
    if wikitext:
        root = wikitext2_dir()
        return dict(path=str(root / "valid.txt"), eval_path=str(root / "test.txt"), doc_format="wikitext")
    return dict(path=str(dataset_path("tinyshakespeare", "MASKJAX_TINYSHAKESPEARE") / "input.txt"))
