"""What a run folder says about its run: the resolved configuration and the teacher it trained against.

    DIR/config.yaml         the RunConfig (python -m student_worker --config DIR/config.yaml repeats it;
                            teacher.api_key is written as <redacted>)
    DIR/teacher_info.json   the teacher's Info at the last start (model, tokenizer fingerprint, limits)

A folder that holds checkpoints belongs to its run: starting again there needs --resume, and
resuming with a different configuration needs --allow-config-change.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml
from google.protobuf.json_format import MessageToDict

from student_worker.config import RunConfig
from student_worker.train import checkpoint

log = logging.getLogger(__name__)
REDACTED = "<redacted>"

# Where and how this invocation runs, not what the run trains: these may differ on --resume.
MAY_CHANGE_ON_RESUME = frozenset({
    "train.stop_after", "student.num_threads", "teacher.target", "teacher.api_key", "teacher.tls",
    "teacher.tls_ca", "teacher.tls_cert", "teacher.tls_key", "teacher.timeout_s", "teacher.patience_s",
})


def recorded(cfg: RunConfig) -> dict:
    data = cfg.model_dump(mode="json")
    if data.get("teacher") and data["teacher"].get("api_key"):
        data["teacher"]["api_key"] = REDACTED   # a run folder is shared more widely than a secret
    return data


def config_yaml(cfg: RunConfig) -> str:
    """The recorded configuration as YAML (what --print-config shows)."""
    return yaml.safe_dump(recorded(cfg), sort_keys=False)


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def flat_config(cfg: RunConfig) -> dict:
    """{'section.key': value} of the recorded configuration."""
    return _flatten(recorded(cfg))


def config_differences(before: dict, after: dict) -> list[str]:
    """'key: old -> new' for every leaf that differs, except MAY_CHANGE_ON_RESUME."""
    old, new = _flatten(before), _flatten(after)
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key) and key not in MAY_CHANGE_ON_RESUME]


def check_output_dir(output_dir: Path, cfg: RunConfig, resume: bool, allow_config_change: bool) -> None:
    """Refuse to overwrite another run's folder, or to resume it with another configuration."""
    latest = checkpoint.latest_checkpoint(output_dir)
    if latest is None:
        return
    if not resume:
        raise SystemExit(f"{output_dir} holds a run with checkpoints (latest: {latest.name}); "
                         "--resume continues it, or choose another --output-dir")
    path = Path(output_dir) / "config.yaml"
    if not path.exists():
        return
    changed = config_differences(yaml.safe_load(path.read_text()), recorded(cfg))
    if changed and not allow_config_change:
        raise SystemExit(f"--resume with a configuration that differs from {path}:\n  " + "\n  ".join(changed)
                         + "\n--allow-config-change resumes anyway (the new configuration is recorded)")
    if changed:
        log.warning("resuming with a changed configuration: %s", "; ".join(changed))


def write(output_dir: Path, cfg: RunConfig, infos: dict) -> None:
    """config.yaml and teacher_info.json (none without a teacher), at every start: the teacher's
    Info, or with named teachers every one's by name."""
    output_dir = Path(output_dir)
    (output_dir / "config.yaml").write_text(config_yaml(cfg))
    if infos:
        as_dicts = {name: MessageToDict(info, preserving_proto_field_name=True) for name, info in infos.items()}
        recorded_info = as_dicts if cfg.teachers is not None else next(iter(as_dicts.values()))
        (output_dir / "teacher_info.json").write_text(json.dumps(recorded_info, indent=2) + "\n")
