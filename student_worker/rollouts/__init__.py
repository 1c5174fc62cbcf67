"""Completions out: the student's samples (sampling.py with the training model, vllm_sampling.py
with an in-process vLLM engine), speculative drafts verified by the teacher (speculative/), the
batch they make (rollout.py), how far the sampler was from the trained policy
(sampler_mismatch.py), and the token and vocabulary helpers they share (tokens.py, vocab.py)."""
