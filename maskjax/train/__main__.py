"""``python -m maskjax.train`` (also ``maskjax train``): pre-train from an ml-collections config.

  maskjax train --config configs/mae/default.py [--workdir runs/default] [--config.global_batch=256]

A workdir that already holds checkpoints resumes by itself.
"""

from maskjax.host_memory import tune_malloc
from maskjax.train.cli import run

if __name__ == "__main__":
    tune_malloc()  # before JAX starts its backends (maskjax.host_memory)
    run()
