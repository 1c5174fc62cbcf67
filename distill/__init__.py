"""What the teacher server and the student workers share: the distill.v1 contract.

- `distill.v1`: stubs generated from `protos/distill/v1/teacher.proto` (never edited by hand;
  `python scripts/gen_protos.py` makes them).
- `distill.tensors`: packing arrays into `Tensor` messages and back.
- `distill.results`: what the teacher answers (scores, verdicts, samples) as tensors, one type
  for both sides, and the converters to and from the protos.
- `distill.fingerprint`: the tokenizer fingerprint both sides compare.
"""
