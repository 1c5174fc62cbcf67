"""Prompts in: data sets and built-in tasks as tokenized examples (prompts.py), chat records
rendered with the tokenizer's template (chat.py)."""
