"""A student from the teacher: keep N evenly spaced decoder layers ("prune, then distill").

    python -m student_worker.tools.prune --model TEACHER_DIR --keep-layers 8 --output STUDENT_DIR

Layers 0 and L-1 are always kept and the rest are spread evenly between them (the depth pruning
of NVIDIA's Minitron, without its importance scores). Every kept layer's weights, the embeddings,
the final norm and the head are copied unchanged; the config says N layers, and per-layer config
lists (`layer_types`, ...) keep the kept layers' entries. The output is an ordinary Hugging Face
folder (model, tokenizer, generation config). A freshly pruned model writes poor text; the
distillation is what repairs it.
"""

from __future__ import annotations

import argparse
import copy
import pathlib

import torch


def kept_layers(num_layers: int, keep: int) -> list[int]:
    """`keep` evenly spaced indices in 0 .. num_layers - 1, first and last included (keep 1: the
    first alone)."""
    if not 1 <= keep <= num_layers:
        raise ValueError(f"--keep-layers must be between 1 and the model's {num_layers} layers, "
                         f"not {keep}")
    return torch.linspace(0, num_layers - 1, keep).round().long().tolist()


def decoder_layers_name(model, num_layers: int) -> str:
    """Name of the module list that holds the decoder layers (`model.layers` in Llama, Qwen,
    Mistral, Gemma; `transformer.h` in GPT-2): the one ModuleList with one entry per layer."""
    found = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers]
    if len(found) != 1:
        raise ValueError(f"cannot tell which module list holds the {num_layers} decoder layers "
                         f"(candidates: {found or 'none'})")
    return found[0]


def pruned_config(config, keep: list[int]):
    """A copy of `config` with len(keep) layers; lists with one entry per layer are subset."""
    config = copy.deepcopy(config)
    num_layers = config.num_hidden_layers
    for key, value in config.to_dict().items():
        if isinstance(value, (list, tuple)) and len(value) == num_layers:
            setattr(config, key, [value[i] for i in keep])
    config.num_hidden_layers = len(keep)
    return config


def prune(model, keep_layers: int):
    """A new model holding `keep_layers` evenly spaced decoder layers of `model` (weights copied)."""
    from transformers import AutoModelForCausalLM

    num_layers = model.config.num_hidden_layers
    keep = kept_layers(num_layers, keep_layers)
    prefix = decoder_layers_name(model, num_layers) + "."
    new_index = {old: new for new, old in enumerate(keep)}
    # Rebuild from a config rather than deleting layers in place, so that everything derived from
    # the layer count (each attention's layer_idx into the KV cache, rotary and mask set-up) is
    # made for N layers by the library itself.
    state = {}
    for key, tensor in model.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            if int(index) not in new_index:
                continue
            key = f"{prefix}{new_index[int(index)]}.{rest}"
        state[key] = tensor
    dtype = next(model.parameters()).dtype
    student = AutoModelForCausalLM.from_config(pruned_config(model.config, keep), dtype=dtype)
    student.load_state_dict(state, strict=True)
    student.generation_config = model.generation_config
    return student.eval(), keep


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face folder or hub id of the teacher")
    parser.add_argument("--keep-layers", type=int, required=True, help="decoder layers to keep")
    parser.add_argument("--output", required=True, help="folder to write the pruned model to")
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")
    try:
        student, keep = prune(model, args.keep_layers)
    except ValueError as err:
        raise SystemExit(f"{args.model}: {err}") from None
    out = pathlib.Path(args.output)
    student.save_pretrained(out)
    AutoTokenizer.from_pretrained(args.model).save_pretrained(out)
    params = sum(p.numel() for p in student.parameters())
    print(f"kept layers {keep} of {model.config.num_hidden_layers}: {params / 1e6:.1f}M parameters "
          f"in {out}")


if __name__ == "__main__":
    main()
