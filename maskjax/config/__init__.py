"""Configs: the schema (:mod:`.schema`), loading and overrides (:mod:`.loading`), dataset
locations (:mod:`.datasets`), one smoke shrink (:mod:`.smoke`) and shared paper recipes
(:mod:`.recipes`). Everything a config file needs is importable from ``maskjax.config``.
"""

from maskjax.config.datasets import (DATA_DIR_ENV, char_corpus, cifar10_dir, cifar10_folder_data, data_root, dataset_path,
                                     embedded_cifar_tars, embedded_data, fsdd_data, fsdd_tar, moving_cifar_data,
                                     tfds_wikipedia, wikitext2_data, wikitext2_dir)
from maskjax.config.loading import apply_overrides, load_config, parse_arg
from maskjax.config.recipes import MIM_COMPARISON, mae_imagenet, mae_imagenet_from_arg, mim_comparison
from maskjax.config.schema import (audio_base_config, base_config, core_config, method_config, text_base_config,
                                   video_base_config)
from maskjax.config.smoke import media_smoke, smoke, text_smoke

__all__ = [
    "DATA_DIR_ENV", "MIM_COMPARISON", "apply_overrides", "char_corpus", "audio_base_config", "base_config", "cifar10_dir", "cifar10_folder_data", "core_config",
    "data_root", "dataset_path", "embedded_cifar_tars", "embedded_data", "fsdd_data", "fsdd_tar", "load_config",
    "mae_imagenet", "mae_imagenet_from_arg", "media_smoke", "method_config", "mim_comparison", "moving_cifar_data", "parse_arg", "smoke",
    "text_base_config", "text_smoke", "tfds_wikipedia", "video_base_config", "wikitext2_data", "wikitext2_dir",
]
