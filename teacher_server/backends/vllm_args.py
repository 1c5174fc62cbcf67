"""`--vllm-arg key=value`: vLLM engine arguments the server does not name, typed by vLLM itself.

Each pair goes through vLLM's own command-line parser for EngineArgs (as `vllm serve` would read
`--key value`), so values get the argument's type, choices and JSON parsing for structured ones
(`compilation_config={"mode": 0}`), and an unknown key or bad value is refused at start with
vLLM's message. Booleans take true/false.
"""

from __future__ import annotations

import argparse

# EngineArgs fields the server sets from its own flags: a pass-through would silently fight them
OWN_FLAGS = {
    "model": "--model", "revision": "--revision", "tokenizer_revision": "--revision",
    "tokenizer": "--model", "dtype": "--dtype", "max_logprobs": "--max-top-k",
    "max_model_len": "--max-context", "trust_remote_code": "--trust-remote-code",
    "enforce_eager": "--vllm-enforce-eager", "seed": "(fixed at 0 for reproducible draws)",
    "gpu_memory_utilization": "--vllm-gpu-memory-utilization",
    "tensor_parallel_size": "--vllm-tensor-parallel-size",
}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def engine_kwargs(pairs: dict[str, str]) -> dict:
    """{EngineArgs field: typed value} for the `--vllm-arg` pairs; ValueError names a bad one."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = EngineArgs.add_cli_args(FlexibleArgumentParser(exit_on_error=False))
    actions = {option: action for action in parser._actions for option in action.option_strings}
    kwargs = {}
    for key, value in pairs.items():
        key = key.strip().replace("-", "_")
        if key in OWN_FLAGS:
            raise ValueError(f"--vllm-arg {key}: the server sets this itself; use {OWN_FLAGS[key]}")
        flag = "--" + key.replace("_", "-")
        action = actions.get(flag)
        if action is None:
            raise ValueError(f"--vllm-arg {key}: not a vLLM engine argument (see vLLM's EngineArgs "
                             "or `vllm serve --help`; write them with underscores or dashes)")
        if action.nargs == 0:           # a switch: true / false
            word = value.strip().lower()
            if word not in _TRUE | _FALSE:
                raise ValueError(f"--vllm-arg {key}={value}: expected true or false")
            kwargs[action.dest] = word in _TRUE
            continue
        try:
            namespace, _ = parser.parse_known_args([flag, value])
        except (argparse.ArgumentError, SystemExit) as exc:
            raise ValueError(f"--vllm-arg {key}={value}: {exc}") from None
        kwargs[action.dest] = getattr(namespace, action.dest)
    return kwargs
