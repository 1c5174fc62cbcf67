"""student_worker.tools.prune: which layers a student of N keeps, and per-layer config entries
(a pruned model, by the command and from SmolLM2: tests/integration/test_prune.py)."""

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from student_worker.tools.prune import kept_layers, prune


def test_kept_layers_are_evenly_spaced_with_first_and_last():
    assert kept_layers(30, 8) == [0, 4, 8, 12, 17, 21, 25, 29]
    assert kept_layers(5, 5) == [0, 1, 2, 3, 4] and kept_layers(5, 2) == [0, 4]
    assert kept_layers(5, 1) == [0]
    with pytest.raises(ValueError, match="between 1 and the model's 5 layers"):
        kept_layers(5, 6)


def test_per_layer_config_lists_keep_the_kept_layers_entries():
    from transformers import Qwen2Config

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True,
                         sliding_window=8, max_window_layers=2)
    assert config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    student, keep = prune(AutoModelForCausalLM.from_config(config), 2)
    assert keep == [0, 3] and student.config.num_hidden_layers == 2
    assert student.config.layer_types == ["full_attention", "sliding_attention"]
    assert AutoConfig.for_model(**student.config.to_dict()).layer_types == student.config.layer_types
