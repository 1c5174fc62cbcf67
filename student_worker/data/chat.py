"""Chat records (`{"messages": [{"role", "content"}, ...]}`) turned into prompt and reference ids.

The prompt is every message before the last assistant turn, rendered by the tokenizer's chat
template with the generation prompt; the reference completion is that assistant turn as the
template writes it, up to and including its end-of-turn token. The rendered text already holds
the template's special tokens, so it is tokenized without adding them again (no double BOS).
"""

from __future__ import annotations

from typing import Any, Sequence


def split_conversation(messages: Sequence[dict]) -> tuple[list[dict], dict | None]:
    """(the messages before the last assistant turn, that turn); (all, None) without one."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            return list(messages[:i]), messages[i]
    return list(messages), None


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template closes an assistant turn with (`<|im_end|>`,
    `<|eot_id|>`, ...), found by rendering a one-turn conversation; None without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    prompt = [{"role": "user", "content": "x"}]
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": "y"}], tokenize=False)
    if not full.startswith(head):
        return None
    special = set(tokenizer.all_special_ids)
    tail_ids = tokenizer(full[len(head):], add_special_tokens=False).input_ids
    return next((i for i in tail_ids if i in special), None)


def render(tokenizer, messages: Sequence[dict], *, use_template: bool, system_prompt: str | None,
           template_kwargs: dict[str, Any], eos_ids: Sequence[int]) -> tuple[str, list[int], str | None, list[int] | None]:
    """(prompt text, prompt ids, reference text, reference ids ending with an end-of-sequence id)."""
    prompt_msgs, answer = split_conversation(messages)
    if system_prompt is not None and not any(m.get("role") == "system" for m in prompt_msgs):
        prompt_msgs = [{"role": "system", "content": system_prompt}] + prompt_msgs
    if not use_template:
        text = "\n".join(m["content"] for m in prompt_msgs)
        prompt_ids = tokenizer(text).input_ids
        if answer is None:
            return text, prompt_ids, None, None
        answer_ids = tokenizer(answer["content"], add_special_tokens=False).input_ids + [eos_ids[0]]
        return text, prompt_ids, answer["content"], answer_ids
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: set data.chat_template=false "
                         "(prompts are then the messages' contents joined by newlines)")
    text = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True,
                                         **template_kwargs)
    prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
    if answer is None:
        return text, prompt_ids, None, None
    full = tokenizer.apply_chat_template(prompt_msgs + [answer], tokenize=False, **template_kwargs)
    if not full.startswith(text):
        raise ValueError("the chat template renders the conversation differently with and without "
                         "its last assistant turn; cannot cut out the reference completion")
    answer_ids = tokenizer(full[len(text):], add_special_tokens=False).input_ids
    # keep the turn up to the template's end-of-turn token (what follows it is the next turn's)
    ends = [i for i, token in enumerate(answer_ids) if token in eos_ids]
    answer_ids = answer_ids[:ends[0] + 1] if ends else answer_ids + [eos_ids[0]]
    return text, prompt_ids, tokenizer.decode(answer_ids, skip_special_tokens=True), answer_ids
