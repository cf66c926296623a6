"""What changed in the config between the run that wrote a workdir's checkpoints and this one.

``WORKDIR/config.json`` is the resolved config of the last run that trained there; this module
compares it with the config about to resume, before the new run overwrites it. Changes that
alter the trajectory (batch, model, data, optimiser, seed, ...) would silently splice
two different experiments into one curve, so they are refused with :class:`ConfigChanged`
listing them, unless ``allow`` (``--allow_config_change``). The rest (logging, checkpoint
cadence, evaluators, mesh layout, the run's length) are reported and allowed.

An allow-list rather than a deny-list: a method's own config section (whatever it is named)
then counts as result-changing without this module knowing it.
"""

from __future__ import annotations

import json
import os

from maskjax.errors import ConfigError

# Top-level fields (and whole sections) that do not change what is computed, only how it is
# run, logged, checkpointed or evaluated. ``mesh``/``sharding_rules``/``remat`` change layout and
# rematerialisation; the checkpoint restores onto any mesh (tests/test_checkpoint.py).
# ``total_steps``/``epochs`` are the exception that changes the schedule but is allowed (and
# reported): extending a finished run ("train 200 more epochs") is the everyday use of a resume.
ALLOWED = ("log_every_steps", "checkpoint", "evals", "progress", "watchdog_seconds",
           "compile_cache_dir", "mesh", "sharding_rules", "remat", "total_steps", "epochs")


class ConfigChanged(ConfigError):
    """Fields that change results differ from the checkpointed run's (``--allow_config_change`` overrides)."""


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out if out or not prefix else {prefix: {}}
    return {prefix: value}


def config_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """``(dotted field, old value, new value)`` for every leaf that differs (missing = None)."""
    a, b = _flatten(old), _flatten(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def is_allowed(field: str) -> bool:
    """Whether a change of ``field`` (dotted) leaves the training trajectory as it was."""
    return field.split(".")[0] in ALLOWED


def check_resume_config(config, workdir: str, allow: bool = False, say=print) -> list[str]:
    """Compares ``config`` with ``WORKDIR/config.json`` of the run being resumed.

    Call only when the workdir holds a checkpoint (a resume) and before this run writes its own
    ``config.json``. Reports every change through ``say``; raises :class:`ConfigChanged` when a
    result-changing field differs and ``allow`` is False. Returns the change lines.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        try:
            old = json.load(f)
        except ValueError:
            say(f"warning: {path} is not valid JSON; cannot compare the config with the resumed run's")
            return []
    new = json.loads(config.to_json_best_effort(sort_keys=True))
    changes = config_changes(old, new)
    lines = [f"{k}: {o!r} -> {n!r}" for k, o, n in changes]
    refused = [line for (k, _, _), line in zip(changes, lines) if not is_allowed(k)]
    if refused and not allow:
        raise ConfigChanged(
            f"the config differs from the one that wrote the checkpoints in {workdir} in fields that "
            f"change the results: {'; '.join(refused)}. Resume with the same values, use a new "
            f"--workdir, or pass --allow_config_change to continue with the new values anyway.")
    if lines:
        note = " (allowed by --allow_config_change)" if refused else ""
        say(f"config changed since the checkpointed run{note}: {'; '.join(lines)}")
    return lines
