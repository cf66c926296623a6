"""GenMD4 on text8 (Shi et al., NeurIPS 2024; google-deepmind/md4 ``configs/genmd4/text8.py``).

Recipe (specs/methods_text_gen.md 12d-12e): MD4's text8 recipe (MD4-S network, 256-character
blocks, AdamW lr 3e-4 (0.9, 0.999), no weight decay or clipping, 2,000 warm-up steps + cosine,
batch 512, 1M steps) with the learnable state-dependent ``poly`` schedule: one exponent per
symbol initialised to 1 (``power_init``), times in [1e-3, 1], two masked draws per example and
the REINFORCE leave-one-out gradient for the exponents. The logged ``loss`` is that surrogate;
``nelbo`` / ``bits_per_char`` is the bound.

Expected (the paper's number, not measured by us): text8 test bits per character <= 1.34
[paper, recalled - UNVERIFIED, spec 14], EMA (0.9999) weights evaluated. Not measured here: text8
is not in ../shared/data (``$MASKJAX_DATA_DIR/text8/text8`` or ``$MASKJAX_TEXT8``).

Command:
  maskjax train --config configs/genmd4/text8.py --workdir runs/genmd4_text8
Variants on the shared character data (small model, 20k steps of 64 x 256 characters):
  maskjax train --config configs/genmd4/text8.py:shakespeare --workdir runs/genmd4_shakespeare
  maskjax train --config configs/genmd4/text8.py:wikitext --workdir runs/genmd4_wikitext
``:smoke`` runs two CPU steps of a micro model on Tiny Shakespeare.
"""

import importlib.util
import pathlib

from maskjax.methods.genmd4 import GenMD4

# MD4's text8 recipe (configs/md4/text8.py) with GenMD4's method: one recipe, two methods.
_spec = importlib.util.spec_from_file_location("md4_text8_recipe", pathlib.Path(__file__).parents[1] / "md4" / "text8.py")
_md4_text8 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_md4_text8)

PAPER_RESULTS = {"text8 test bpc (upper bound)": (1.34, "paper, recalled - UNVERIFIED")}


def get_config(arg=None):
    """``arg``: shakespeare | wikitext | smoke, and steps, batch, lr (of the character variants)."""
    return _md4_text8.text8_recipe(GenMD4, "genmd4", arg, char_lr=3e-4)
