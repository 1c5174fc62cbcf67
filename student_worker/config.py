"""The worker's configuration: one typed section per component, composed into RunConfig.

Layers, each later one winning key by key:

    field defaults  <  the YAML file (--config)  <  the preset (--preset)  <  section.key=value overrides

The command line beats the file: `--config quickstart.yaml --preset skd` trains skd (a preset sets
only the `method` keys it names; the file's other keys stay, except the method keys skd does not
have, which are left out with a warning: each method has its own keys, see MethodSettings below).
An override is converted to its field's declared type (`student.path=007` stays the text "007",
`data.split=on` stays "on", `optim.lr=3e-5` is a float); lists and tuples take JSON or commas
(`train.report_to=tensorboard,wandb`).
`${VAR}` and `${VAR:-default}` in the file's values are read from the environment after the YAML
is parsed, as text, so a token `12345` or a value holding `: ` stays what it is.

    python -m student_worker --config run.yaml --preset gkd optim.lr=3e-5 method.beta=0.5

The overrides are parsed by pydantic-settings' command-line source, which also writes `--help`
(every key with its type, default and description) from the models below.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, create_model, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError
from pydantic_settings import CliSettingsSource



class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LoraConfig(_Section):
    """`student.lora`: PEFT's LoraConfig under PEFT's names (train.parallel.prepare_student reads it)."""

    r: int = Field(16, ge=1, description="rank of the adapters")
    alpha: float = Field(32, gt=0, description="scale: the update is alpha / r x B A")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = Field(
        "all-linear", description="module names (q_proj, v_proj, ...) or 'all-linear'")


class StudentConfig(_Section):
    path: str = Field(..., description="student model: Hugging Face directory or hub id")
    init: Literal["pretrained", "config"] = Field(
        "pretrained", description="load the weights, or only the config (random init, seeded)")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="the weights' dtype. auto: float32 (AdamW's master weights), except a LoRA "
                            "student's frozen base on a GPU (bfloat16). bfloat16 with full fine-tuning "
                            "is pure bf16: small updates round away (a warning says so)")
    revision: str | None = Field(None, description="a hub revision (branch, tag or commit) to pin")
    trust_remote_code: bool = Field(False, description="run the model repository's own code")
    num_threads: int = Field(1, ge=0, description="torch CPU threads per worker (0: torch default)")
    gradient_checkpointing: bool = Field(
        False, description="recompute each decoder layer's activations in the backward pass")
    lora: LoraConfig | None = Field(
        None, description="train PEFT LoRA adapters (r, alpha, dropout, target_modules); absent: "
                          "full fine-tuning")
    autocast: Literal["auto", "none", "bfloat16"] = Field(
        "auto", description="bfloat16: matmuls in bf16 under torch.autocast (and FSDP2's mixed "
                            "precision), the loss in float32. auto: bfloat16 on a GPU, none on a CPU")


class TeacherConfig(_Section):
    target: str = Field(..., description="teacher address(es): host:port[,host:port] or dns:///name:port")
    routing: Literal["least_work", "round_robin"] = Field(
        "least_work", description="over several replicas: least_work sends each call to the replica expected "
                                  "to answer first (its queue and pace); round_robin spreads calls evenly")
    api_key: str | None = Field(None, description="the tenant's bearer token (a shared teacher)")
    tls: bool = Field(False, description="TLS with the system's CAs (implied by tls_ca/tls_cert)")
    tls_ca: str | None = Field(None, description="PEM: the CA that signed the teacher's certificate")
    tls_cert: str | None = Field(None, description="PEM: this worker's certificate (mutual TLS)")
    tls_key: str | None = Field(None, description="PEM: this worker's private key (mutual TLS)")
    timeout_s: float = Field(120.0, gt=0, description="deadline of one teacher call")
    top_k: int = Field(20, ge=1, description="teacher log-probs returned per position")
    temperature: float = Field(
        1.0, gt=0, description="the teacher's softmax temperature in Score (the loss's targets): below 1 "
                               "sharpens them towards its most likely tokens, above 1 flattens them; 1: its "
                               "own distribution")
    patience_s: float = Field(
        600.0, ge=0, description="how long to keep retrying an unreachable teacher before stopping")
    logprob_dtype: Literal["float32", "float16"] = "float32"


class DataConfig(_Section):
    source: str = Field(..., description="built-in task name, a .jsonl file or a datasets folder")
    split: str = "train"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    messages_field: str = Field("messages", description="chat records: a list of {role, content}")
    chat_template: bool = Field(True, description="render chat messages with the tokenizer's template")
    system_prompt: str | None = Field(None, description="a system message for conversations without one")
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict,
                                                 description="extra arguments to apply_chat_template")
    max_prompt_tokens: int | None = Field(None, ge=1, description="longer prompts are left out (counted)")
    teacher_field: str = Field("teacher", description="with named teachers: the record field naming the "
                                                      "teacher that scores it")
    batch_size: int = Field(8, ge=1, description="prompts per worker per step")
    num_examples: int = Field(4096, ge=1, description="examples drawn from a built-in task")


class SamplingConfig(_Section):
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(32, ge=1)
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="who samples the student's completions: hf (the training model's own "
                          "generate) or vllm (an in-process vLLM engine, weights synced after updates)")
    vllm_memory_fraction: float = Field(
        0.3, gt=0, lt=1, description="vllm on a GPU: share of the GPU's memory the engine may take "
                                     "(weights + KV cache); training needs the rest")
    sync_every: int = Field(1, ge=1, description="vllm: load the trained weights every N optimizer steps")
    tis_cap: float | None = Field(
        None, gt=0, description="vllm: weight each sampled token's loss by min(p/q, tis_cap), "
                                "truncated importance sampling (None: off)")


# ---- per-method settings ------------------------------------------------------------------------
#
# `method` is a union keyed by method.name: each method has its own settings model, the common keys
# (MethodSettings) plus those of its completion source and its loss (the parameter groups below,
# listed before MethodSettings so that name comes first in a dump), and a key another method reads
# is refused. METHOD_SETTINGS holds the models by name: the built-in methods'
# here, a plugin's added by student_worker.methods.register_method (this module imports no registry).

class MethodSettings(_Section):
    """Keys every method has."""

    name: str = Field("gkd", description="a registered method (student_worker.methods.METHODS)")
    reduction: Literal["token", "sequence"] = Field(
        "token", description="token: every completion token weighs the same; sequence: every completion does")


class DivergenceParameters(BaseModel):
    """A divergence's shape (the losses that compare distributions: TopKDivergence)."""

    beta: float = Field(0.5, ge=0, le=1, description="JSD(beta): 0 forward KL, 1 reverse KL")
    alpha: float = Field(0.1, ge=0, le=1, description="skew of skew_kl / skew_reverse_kl")


class DivergenceChoice(BaseModel):
    divergence: str = Field("jsd", description="a name in student_worker.losses.divergences.DIVERGENCES")


class MixtureParameters(BaseModel):
    student_fraction: float = Field(
        1.0, ge=0, le=1, description="lambda: the probability that a batch is sampled from the student")


class BestOfParameters(BaseModel):
    best_of: int = Field(1, ge=1, description="teacher samples per prompt, the task's best one kept")


class DraftParameters(BaseModel):
    draft_tokens: int = Field(4, ge=1, description="student draft tokens per teacher Verify")
    skd_top_k: int = Field(5, ge=1, description="a draft token is kept when in the teacher's top-K")


class PolicyGradientParameters(BaseModel):
    kl_coef: float = Field(1.0, ge=0, description="weight of the per-token reverse KL to the teacher")
    use_reward: bool = Field(True, description="add the task's reward (needs a task verifier)")


class SftSettings(MethodSettings):
    name: Literal["sft"] = "sft"


class SeqkdSettings(BestOfParameters, MethodSettings):
    name: Literal["seqkd"] = "seqkd"


class KdSettings(DivergenceParameters, DivergenceChoice, MethodSettings):
    name: Literal["kd"] = "kd"


class GkdSettings(MixtureParameters, DivergenceParameters, DivergenceChoice, MethodSettings):
    name: Literal["gkd"] = "gkd"


class SkdSettings(DraftParameters, DivergenceParameters, DivergenceChoice, MethodSettings):
    name: Literal["skd"] = "skd"


class RlkdSettings(PolicyGradientParameters, MethodSettings):
    name: Literal["rlkd"] = "rlkd"


BUILT_IN_SETTINGS: dict[str, type[MethodSettings]] = {
    model.model_fields["name"].default: model
    for model in (SftSettings, SeqkdSettings, KdSettings, GkdSettings, SkdSettings, RlkdSettings)}
METHOD_SETTINGS = dict(BUILT_IN_SETTINGS)
DEFAULT_METHOD = "gkd"


def register_settings(name: str, model: type[MethodSettings]) -> None:
    """Make `name` a valid method.name whose keys are `model`'s."""
    METHOD_SETTINGS[name] = model


def method_settings(name: str) -> type[MethodSettings]:
    if name not in METHOD_SETTINGS:
        raise PydanticCustomError(
            "unknown_method", "Input should be one of {choices} (got '{name}'; "
            "student_worker.methods.register_method adds one, --plugin MODULE loads it)",
            {"choices": ", ".join(map(repr, sorted(METHOD_SETTINGS))), "name": name})
    return METHOD_SETTINGS[name]


class OptimConfig(_Section):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm (0: off)")


class TrainConfig(_Section):
    steps: int = Field(100, ge=1)
    seed: int = 0
    lag: int = Field(0, ge=0, description="batches scored ahead by the teacher while the student "
                                          "updates (0: strictly on-policy)")
    pipeline_halves: bool = Field(False, description="sample each batch in two halves and send the first "
                                  "to the teacher before sampling the second, so teacher and student "
                                  "work at once (same weights: still on-policy). Pays only with a core "
                                  "to spare: on a loaded 2-core machine the demo ran 20% slower with it")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: only at the end)")
    stop_after: int = Field(0, ge=0, description="leave after N steps of this run with a checkpoint, "
                                                 "as a preempted job would (0: run to the end)")
    eval_every: int = Field(0, ge=0, description="evaluate on the task every N steps (0: never); "
                                                 "needs a built-in task as data.source")
    eval_split: str = "dev"
    eval_prompts: int = Field(256, ge=1)
    eval_acceptance_prompts: int = Field(
        64, ge=0, description="prompts on which to measure how often the teacher accepts the "
                              "student's drafts (DistillSpec's metric; 0: off, needs a teacher)")
    eval_draft_tokens: int = Field(4, ge=1, description="student draft tokens per Verify in that measurement")
    stop_at_accuracy: float = Field(
        0.0, ge=0, le=1, description="stop once the sampled eval accuracy reaches this (0: off)")
    micro_batch_size: int = Field(0, ge=0, description="sequences per forward/backward; gradients "
                                                       "accumulate over the batch (0: the whole batch)")
    parallel: Literal["ddp", "fsdp"] = Field("ddp", description="ddp: replicas; fsdp: FSDP2, weights, gradients "
                                                  "and optimizer states sharded over the ranks")
    loss_chunk_size: int = Field(128, ge=0, description="completion positions whose logits exist at "
                                                        "once in the loss (0: all of them)")
    keep_last: int = Field(0, ge=0, description="checkpoints kept on disk, the newest (0: all)")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="experiment trackers that receive metrics.jsonl's numbers "
                                          "(student_worker/train/tracking.py)")


class RunConfig(_Section):
    student: StudentConfig
    teacher: TeacherConfig | None = None   # sft needs none
    teachers: dict[str, TeacherConfig] | None = Field(
        None, description="named teachers instead of one (each record names its own: data.teacher_field); "
                          'on the command line as JSON: teachers=\'{"math": {"target": "h:50051"}, ...}\'')
    data: DataConfig
    sampling: SamplingConfig = SamplingConfig()
    method: SerializeAsAny[MethodSettings] = Field(default_factory=lambda: METHOD_SETTINGS[DEFAULT_METHOD]())
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()

    @field_validator("method", mode="wrap")
    @classmethod
    def _method_settings(cls, value: Any, handler) -> MethodSettings:
        """The settings model method.name registers validates the section (the union's dispatch)."""
        if isinstance(value, MethodSettings):
            value = value.model_dump()
        if not isinstance(value, dict):
            return handler(value)
        name = value.get("name", DEFAULT_METHOD)
        try:
            model = method_settings(name)
        except PydanticCustomError as unknown:
            raise ValidationError.from_exception_data(
                "method", [{"type": unknown, "loc": ("name",), "input": name}]) from None
        return model.model_validate(value)

    @model_validator(mode="after")
    def _one_kind_of_teacher(self) -> "RunConfig":
        if self.teachers is None:
            return self
        if self.teacher is not None:
            raise ValueError("set teacher (one teacher) or teachers (named teachers), not both")
        if not self.teachers:
            raise ValueError("teachers is empty: name at least one, or use teacher")
        first_name, first = next(iter(self.teachers.items()))
        for name, t in self.teachers.items():
            for key in ("top_k", "logprob_dtype"):   # one loss over the whole batch
                if getattr(t, key) != getattr(first, key):
                    raise ValueError(f"teachers.{name}.{key}={getattr(t, key)} differs from teachers."
                                     f"{first_name}.{key}={getattr(first, key)}: the loss reads every "
                                     f"sequence's teacher at one {key}; set the same for all")
        return self

    @property
    def teachers_by_name(self) -> dict[str, TeacherConfig]:
        """Every teacher of the run by name (the one `teacher` is named "teacher"); {} for none."""
        if self.teachers is not None:
            return dict(self.teachers)
        return {"teacher": self.teacher} if self.teacher is not None else {}

    @property
    def scoring(self) -> TeacherConfig | None:
        """The settings every teacher of the run shares (top_k, logprob_dtype): the first's."""
        return next(iter(self.teachers_by_name.values()), None)


# Named starting points; a YAML file and overrides refine them.
PRESETS: dict[str, dict[str, Any]] = {
    # Agarwal et al. 2024: on-policy samples, JSD(0.5)
    "gkd": {"method": {"name": "gkd", "divergence": "jsd", "beta": 0.5, "student_fraction": 1.0}},
    # the Qwen3 / Gemma-2 / tinker-cookbook recipe: on-policy samples, reverse KL
    "onpolicy-rkl": {"method": {"name": "gkd", "divergence": "reverse_kl", "student_fraction": 1.0}},
    # classic supervised KD on the data completions (Hinton et al.), forward KL
    "kd": {"method": {"name": "kd", "divergence": "forward_kl"}},
    "sft": {"method": {"name": "sft"}},
    "seqkd": {"method": {"name": "seqkd", "best_of": 1}},
    # speculative KD (Xu et al. 2024): student drafts, the teacher keeps those in its top-K
    "skd": {"method": {"name": "skd", "divergence": "forward_kl", "draft_tokens": 4, "skd_top_k": 5}},
    # RL with the reward off and the teacher as the KL anchor
    "rl-teacher-kl": {"method": {"name": "rlkd", "use_reward": False, "kl_coef": 1.0}},
}


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def resolve_env(node: Any, where: str = "") -> Any:
    """${NAME} and ${NAME:-default} inside the string values of a parsed config take their text
    from the environment, so one file serves every deployment (teacher addresses, tokens)."""
    if isinstance(node, dict):
        return {key: resolve_env(value, f"{where}.{key}" if where else str(key)) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve_env(value, where) for value in node]
    if not isinstance(node, str):
        return node

    def value(match: re.Match) -> str:
        name, default = match[1], match[2]
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ValueError(f"{where}: the config refers to ${{{name}}}, which is not set in the environment")
        return default

    return _ENV.sub(value, node)


def read_yaml(path: str | Path) -> dict:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file is a mapping of sections (student:, teacher:, ...)")
    return resolve_env(data)


def method_keys_model(settings: dict[str, type[MethodSettings]]) -> type[BaseModel]:
    """The methods' keys as one flat section, each described with the methods that have it: what
    --help, the command line's parser and the docs list for `method`."""
    owners: dict[str, list[str]] = {}
    fields: dict[str, Any] = {}
    for method, model in settings.items():
        for key, field in model.model_fields.items():
            owners.setdefault(key, []).append(method)
            fields.setdefault(key, field)
    keys: dict[str, Any] = {"name": (str, Field(DEFAULT_METHOD, description=(
        f"the method: {', '.join(BUILT_IN_SETTINGS)} or one a plugin registers; the keys below say "
        "which methods have them, a key the method does not have is refused")))}
    for key, field in fields.items():
        if key != "name":
            who = "every method" if len(owners[key]) == len(settings) else ", ".join(owners[key])
            keys[key] = (field.annotation, Field(field.default, description=f"{who}: {field.description}"))
    return create_model("MethodKeys", __base__=_Section, **keys)


def config_keys_model(settings: dict[str, type[MethodSettings]] | None = None) -> type[BaseModel]:
    """RunConfig's keys with `method` as the method_keys_model of `settings` (default: every
    registered method, plugins' included; RunConfig itself validates a method's section through
    METHOD_SETTINGS)."""
    return create_model("RunConfig", __base__=RunConfig,
                        method=(method_keys_model(settings or METHOD_SETTINGS), None))


def config_arguments(parser: argparse.ArgumentParser) -> CliSettingsSource:
    """Add a --section.key option for every config field to parser, and return the source that
    reads their values back (source(parsed_args=namespace)() -> nested dict, values as given)."""
    return CliSettingsSource(config_keys_model(), root_parser=parser)


def config_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Every leaf key, 'section.key'."""
    keys = []
    for name, field in (model or config_keys_model()).model_fields.items():
        sub = [t for t in (field.annotation, *typing.get_args(field.annotation))
               if isinstance(t, type) and issubclass(t, BaseModel)]
        keys += config_keys(sub[0], f"{prefix}{name}.") if sub else [prefix + name]
    return keys


_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)*=")


def as_flags(argv: list[str]) -> list[str]:
    """The documented `section.key=value` form, given to the parser as `--section.key=value`."""
    return [f"--{arg}" if _OVERRIDE.match(arg) else arg for arg in argv]


def check_unknown(extra: list[str]) -> None:
    """Arguments the parser did not take: a clear error, naming the nearest config keys."""
    if not extra:
        return
    key = extra[0].lstrip("-").split("=", 1)[0]
    near = difflib.get_close_matches(key, config_keys(), n=3)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    raise ValueError(f"unknown config key or argument {key!r}{hint} "
                     "(python -m student_worker --help lists every key)")


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ValueError(message)


def parse_overrides(overrides: list[str]) -> dict:
    """['optim.lr=3e-5', 'student.path=007'] -> {'optim': {'lr': '3e-5'}, 'student': {'path': '007'}}:
    values stay as given; validation converts each to its field's type."""
    parser = _RaisingParser(allow_abbrev=False, add_help=False)
    source = config_arguments(parser)
    namespace, extra = parser.parse_known_args(as_flags(list(overrides)))
    check_unknown(extra)
    return source(parsed_args=namespace)()


def _apply(data: dict, layer: dict) -> dict:
    """`layer` over `data`. A layer that names another method than the earlier ones keeps only
    the earlier method keys its method has (`--preset skd` over a file written for gkd leaves the
    file's student_fraction out, with a warning); its own keys are all checked."""
    before, after = data.get("method"), layer.get("method")
    if isinstance(before, dict) and isinstance(after, dict) and "name" in after \
            and after["name"] != before.get("name", DEFAULT_METHOD) and after["name"] in METHOD_SETTINGS:
        keys = METHOD_SETTINGS[after["name"]].model_fields
        left_out = [key for key in before if key not in keys]
        if left_out:
            logging.getLogger(__name__).warning(
                "method %s does not have %s (set for method %s): left out", after["name"],
                ", ".join(f"method.{key}" for key in left_out), before.get("name", DEFAULT_METHOD))
        data = {**data, "method": {key: value for key, value in before.items() if key in keys}}
    return _merge(data, layer)


def resolve(path: str | Path | None, preset: str | None, overrides: dict) -> RunConfig:
    """The layers in their order (see the module's docstring)."""
    data = read_yaml(path) if path else {}
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        data = _apply(data, PRESETS[preset])
    return RunConfig.model_validate(_apply(data, overrides))


def describe(error: ValueError) -> str:
    """A configuration error as a person reads it: one `section.key: what is wrong` line per
    problem (pydantic's own text adds input dumps and a web link to each)."""
    if not isinstance(error, ValidationError):
        return str(error)
    return "invalid configuration:\n" + "\n".join(
        f"  {'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in error.errors())


def load_config(path: str | Path | None = None, preset: str | None = None,
                overrides: list[str] = ()) -> RunConfig:
    return resolve(path, preset, parse_overrides(overrides))

