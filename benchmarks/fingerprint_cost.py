"""Cost of a checkpoint's content fingerprint (maskjax.core.fingerprint) on a real train state.

    JAX_PLATFORMS=cpu python benchmarks/fingerprint_cost.py [--configs tiny,vit_b16] [--repeats 5] [--save]

For each state it prints the number of arrays and bytes, the first call (trace + compile + run),
the median of the warm calls (what every save and every restore pays) and, with ``--save``, the
wall time of one Orbax save of the same state to a temporary folder, for scale.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGS = {
    # The test suite's tiny MAE (tests/conftest.py tiny_config).
    "tiny": ("configs/mae/default.py:smoke", {
        "model.variant": "mu/4", "data.image_size": 16, "model.decoder_width": 32, "model.decoder_depth": 1,
        "model.decoder_heads": 2, "global_batch": 16}),
    # MAE ViT-B/16 at 224 px with its 512 x 8 decoder: params + AdamW moments, float32.
    "vit_b16": ("configs/mae/vit_b16_in1k.py", {"mesh.data": 1}),
}


def _state(name: str):
    import jax

    from maskjax.config import apply_overrides, load_config
    from maskjax.core.sharding import make_mesh, normalize_rules
    from maskjax.core.state import create_state
    from maskjax.methods import make_method
    from maskjax.train.loop import training_parts

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path, overrides = CONFIGS[name]
    config = load_config(os.path.join(root, path))
    apply_overrides(config, overrides)
    method = make_method(config)
    _, _, tx, template, init_key, _ = training_parts(config, method, 1, 10)
    mesh = make_mesh(config.mesh)
    state, _ = create_state(template, method.build, tx, mesh, normalize_rules(config.sharding_rules), init_key)
    jax.block_until_ready(state)
    return state


def main() -> None:
    """Prints the fingerprint's cost for each ``--configs`` state."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", default="tiny,vit_b16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--save", action="store_true", help="also time one Orbax save of the state")
    args = parser.parse_args()
    import jax

    from maskjax.core.fingerprint import state_fingerprint

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s): "
          f"{jax.devices()[0].device_kind}")
    for name in args.configs.split(","):
        state = _state(name)
        leaves = jax.tree.leaves(state)
        nbytes = sum(x.size * x.dtype.itemsize for x in leaves if hasattr(x, "dtype") and x.dtype.itemsize)
        t0 = time.perf_counter()
        state_fingerprint(state)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            state_fingerprint(state)
            times.append(time.perf_counter() - t0)
        line = (f"{name}: {len(leaves)} arrays, {nbytes / 2**20:.1f} MiB; fingerprint first call {first:.3f} s, "
                f"warm median {statistics.median(times) * 1e3:.1f} ms ({args.repeats} calls, "
                f"{nbytes / statistics.median(times) / 2**30:.2f} GiB/s)")
        if args.save:
            from maskjax.core.checkpoint import Checkpointer

            with tempfile.TemporaryDirectory() as tmp:
                ckpt = Checkpointer(tmp)
                t0 = time.perf_counter()
                ckpt.save(1, state, None, {})  # includes one fingerprint
                ckpt.close()
                line += f"; one checkpoint save (with fingerprint) {time.perf_counter() - t0:.2f} s"
        print(line, flush=True)
        del state, leaves


if __name__ == "__main__":
    main()
