"""The worker's configuration: layers and their order, typed overrides, the environment, --help,
--print-config. No servers: everything here is the configuration alone."""

import typing
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from student_worker.__main__ import main
from student_worker.config import RunConfig, config_keys, load_config, resolve_env
from student_worker.train.run_record import config_differences, recorded
from tests.helpers import ROOT

REQUIRED = ["student.path=s", "teacher.target=t:1", "data.source=reverse"]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_the_preset_on_the_command_line_beats_the_file():
    # the reported case: quickstart.yaml says gkd, --preset skd must train skd
    cfg = load_config(ROOT / "examples" / "quickstart.yaml", "skd")
    assert cfg.method.name == "skd" and cfg.method.divergence == "forward_kl"
    assert cfg.data.source == "digsum" and cfg.optim.lr == 0.001   # the file's other keys stay


def test_layers_in_order(tmp_path):
    path = write(tmp_path, "method:\n  beta: 0.9\n  reduction: sequence\noptim:\n  lr: 0.001\n")
    cfg = load_config(path, "gkd", [*REQUIRED, "optim.lr=3e-5", "method.student_fraction=0.25"])
    assert cfg.method.beta == 0.5                  # the preset sets it: beats the file
    assert cfg.method.reduction == "sequence"      # the preset does not: the file's stays
    assert cfg.optim.lr == 3e-5                    # overrides beat the file
    assert cfg.method.student_fraction == 0.25     # and the preset
    assert cfg.optim.weight_decay == 0.0 and cfg.train.steps == 100   # field defaults under all


def test_overrides_keep_their_fields_types():
    cfg = load_config(None, None, [
        "student.path=007", "teacher.target=t:1", "data.source=reverse", "data.split=on",
        "optim.lr=3e-5", "train.steps=12", "method.name=rlkd", "method.use_reward=off", "teacher.api_key=12345",
        "optim.betas=[0.8, 0.9]", "train.report_to=tensorboard,mlflow", "teacher.tls_ca=null"])
    assert cfg.student.path == "007" and cfg.data.split == "on" and cfg.teacher.api_key == "12345"
    assert cfg.optim.lr == 3e-5 and cfg.train.steps == 12 and cfg.method.use_reward is False
    assert cfg.optim.betas == (0.8, 0.9) and cfg.train.report_to == ["tensorboard", "mlflow"]
    assert cfg.teacher.tls_ca is None
    assert load_config(None, "sft", ["student.path=s", "data.source=reverse", "teacher=null"]).teacher is None


@pytest.mark.parametrize("overrides,error,match", [
    (["method.beta=1.5"], ValidationError, "less than or equal to 1"),
    (["optim.lr=abc"], ValidationError, "unable to parse string as a number"),
    (["optim.lrr=1"], ValueError, "unknown config key or argument 'optim.lrr'; did you mean optim.lr"),
    (["train.report_to=neptune"], ValidationError, "'tensorboard', 'wandb' or 'mlflow'"),
])
def test_bad_values_are_clear_errors(overrides, error, match):
    with pytest.raises(error, match=match):
        load_config(None, None, [*REQUIRED, *overrides])
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        load_config(None, "nope", REQUIRED)


def test_unregistered_names_are_refused():
    """A method's name picks its settings (config.METHOD_SETTINGS), so an unknown one fails the
    config; divergences live in the losses' registry, which check_names reads when the command
    line or the trainer's setup starts a run (the config module imports no registry)."""
    from student_worker.config import describe
    from student_worker.methods import check_names, get_method

    with pytest.raises(ValidationError) as raised:
        load_config(None, None, [*REQUIRED, "method.name=ppo"])
    assert "method.name: Input should be one of 'gkd', 'kd', 'rlkd', 'seqkd', 'sft', 'skd' (got 'ppo'; " \
           "student_worker.methods.register_method adds one, --plugin MODULE loads it)" in describe(raised.value)
    cfg = load_config(None, None, [*REQUIRED, "method.divergence=kl"])
    for check in (check_names, get_method):
        with pytest.raises(ValueError, match="method.divergence: Input should be one of"):
            check(cfg)


@pytest.mark.parametrize("layers,kept,refused", [
    # a preset for another method keeps the file's keys that method has, leaves the rest out (logged)
    ((["--preset", "skd"]), {"beta": 0.9, "reduction": "sequence", "divergence": "forward_kl"}, None),
    # the method named by an override: the same
    ((["method.name=rlkd"]), {"reduction": "sequence", "kl_coef": 1.0}, None),
    # a key given beside the method that lacks it is the user's mistake: refused
    ((["method.name=rlkd", "method.beta=0.2"]), None, "method.beta: Extra inputs are not permitted"),
    ((["--preset", "sft", "method.student_fraction=0.5"]), None, "method.student_fraction: Extra inputs"),
])
def test_each_method_has_its_own_keys(tmp_path, caplog, layers, kept, refused):
    from student_worker.config import describe

    path = write(tmp_path, "method: {name: gkd, student_fraction: 0.5, beta: 0.9, reduction: sequence}\n")
    preset = layers[1] if layers[0] == "--preset" else None
    overrides = [*REQUIRED, *(layers[2:] if preset else layers)]
    if refused:
        with pytest.raises(ValidationError) as raised:
            load_config(path, preset, overrides)
        assert refused in describe(raised.value)
        return
    method = load_config(path, preset, overrides).method
    assert {key: getattr(method, key) for key in kept} == kept
    assert not hasattr(method, "student_fraction")
    assert "does not have method.student_fraction" in caplog.text and "(set for method gkd): left out" in caplog.text


def test_the_built_in_settings_are_those_their_parts_declare():
    """config.py spells out the built-in methods' settings (it imports no registry); they must
    be exactly what each method's source and loss declare, as a plugin's are composed."""
    from dataclasses import replace

    from student_worker.methods import METHODS

    for name, method in METHODS.items():
        composed = replace(method, settings=None).settings_model()
        assert set(composed.model_fields) == set(method.settings_model().model_fields), name


def test_a_validation_error_reads_as_keys_and_problems():
    from student_worker.config import describe

    with pytest.raises(ValidationError) as raised:
        load_config(None, None, [*REQUIRED, "optim.lr=-1", "train.steps=x"])
    assert describe(raised.value) == ("invalid configuration:\n  optim.lr: Input should be greater than 0\n"
                                      "  train.steps: Input should be a valid integer, unable to parse string as "
                                      "an integer")


def test_environment_is_read_after_parsing_as_text(tmp_path, monkeypatch):
    path = write(tmp_path, "student: {path: '${STUDENT}'}\n"
                           "teacher:\n  target: ${TEACHER_ADDRESS:-127.0.0.1:50051}\n  api_key: ${TOKEN}\n"
                           "data:\n  source: reverse\n  split: ${SPLIT}\n"
                           "train:\n  steps: ${STEPS:-7}\n")
    monkeypatch.delenv("TEACHER_ADDRESS", raising=False)
    monkeypatch.delenv("STEPS", raising=False)
    # text that YAML would have turned into a number, another number, or a broken mapping
    monkeypatch.setenv("TOKEN", "12345")
    monkeypatch.setenv("STUDENT", "0x1F")
    monkeypatch.setenv("SPLIT", "a: b")
    cfg = load_config(path)
    assert cfg.teacher.api_key == "12345" and cfg.student.path == "0x1F" and cfg.data.split == "a: b"
    assert cfg.teacher.target == "127.0.0.1:50051" and cfg.train.steps == 7   # defaults, typed
    monkeypatch.setenv("TEACHER_ADDRESS", "teacher-box:6000")
    assert load_config(path).teacher.target == "teacher-box:6000"
    monkeypatch.delenv("TOKEN")
    with pytest.raises(ValueError, match=r"teacher.api_key: the config refers to \$\{TOKEN\}"):
        load_config(path)
    assert resolve_env({"a": ["${NOPE_NOT_SET:-x}", 3]}) == {"a": ["x", 3]}


def test_trackers_in_the_config_are_those_registered():
    from student_worker.train.tracking import TRACKERS

    names = typing.get_args(typing.get_args(RunConfig.model_fields["train"].annotation
                                            .model_fields["report_to"].annotation)[0])
    assert set(names) == set(TRACKERS)


def test_help_lists_every_key_with_type_default_and_description(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    # every field, whoever adds it: the help is generated from the models
    missing = [key for key in config_keys() if f"--{key} " not in text]
    assert not missing and len(config_keys()) > 40
    flat = " ".join(text.split())
    assert "--optim.lr float (default: 0.0001)" in flat
    assert "--teacher.patience_s float how long to keep retrying an unreachable teacher" in flat
    assert "--train.report_to list[{tensorboard,wandb,mlflow}]" in flat
    assert "--allow-config-change" in flat and "--print-config" in flat


def test_print_config_shows_the_resolved_configuration_and_reads_back(tmp_path, capsys):
    main(["--config", str(ROOT / "examples" / "quickstart.yaml"), "--preset", "skd",
          "--train.steps", "5", "optim.lr=0.01", "teacher.api_key=secret", "--print-config"])
    text = capsys.readouterr().out
    printed = yaml.safe_load(text)
    assert printed["method"]["name"] == "skd" and printed["train"]["steps"] == 5
    assert printed["teacher"]["api_key"] == "<redacted>" and "secret" not in text
    again = load_config(write(tmp_path, text), None, ["teacher.api_key=secret"])
    assert again == load_config(ROOT / "examples" / "quickstart.yaml", "skd",
                                ["train.steps=5", "optim.lr=0.01", "teacher.api_key=secret"])


def test_config_differences_name_the_keys():
    before = recorded(load_config(None, "gkd", REQUIRED))
    after = recorded(load_config(None, "gkd", [*REQUIRED, "optim.lr=0.5", "train.stop_after=3",
                                               "teacher.target=elsewhere:1"]))
    # stop_after and the teacher's address say how this invocation runs, not what it trains
    assert config_differences(before, after) == ["optim.lr: 0.0001 -> 0.5"]
