"""digsum: given N, write any 8 digits whose sum is N, then stop.

    prompt "37="  ->  completion "90716347"  (9+0+7+1+6+3+4+7 = 37)

Many answers are correct (for N = 36 about 4.8 million of the 10^8 strings), and each digit
depends on the digits already written: a student that drifts early must recover later. That is
where training on its own samples (on-policy) can beat imitating reference answers, and where
mode-covering and mode-seeking divergences behave differently, so the task is the demo's measure.

Training completions are uniformly random digit strings, so the teacher learns to spread over all
valid answers. Splits come from distinct seeds and own disjoint digit strings (a string belongs
to one split by a hash); prompts necessarily repeat across splits (N takes only 73 values).
"""

from __future__ import annotations

import hashlib
import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

LENGTH = 8
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
_SPLITS = {"train": (11, range(0, 8)), "dev": (12, range(8, 9)), "test": (13, range(9, 10))}


def tokenizer() -> PreTrainedTokenizerFast:
    """One token per character: the 4 specials, the 10 digits and '='."""
    vocab = {piece: i for i, piece in enumerate(SPECIALS + list("0123456789="))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters join without spaces when decoded
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def _split_of(digits: str) -> int:
    return hashlib.sha256(digits.encode()).digest()[0] % 10


class DigsumTask:
    name = "digsum"

    def examples(self, split: str, n: int) -> list[dict]:
        seed, buckets = _SPLITS[split]
        rng = random.Random(seed)
        out = []
        while len(out) < n:
            digits = "".join(rng.choice("0123456789") for _ in range(LENGTH))
            if _split_of(digits) in buckets:
                out.append({"prompt": f"{sum(map(int, digits))}=", "completion": digits})
        return out

    def check(self, prompt: str, completion: str) -> float:
        target = prompt.removesuffix("=")
        answer = completion.strip()
        ok = (target.isdigit() and len(answer) == LENGTH and answer.isdigit()
              and sum(map(int, answer)) == int(target))
        return float(ok)


class OneAnswerDigsumTask(DigsumTask):
    """digsum whose train split has one reference answer per sum (the first one drawn); dev and
    test are digsum's, and so is the check.

    Like most fine-tuning data, it shows one way to answer each prompt while the teacher knows
    many, so off-policy methods only ever train on the ~70 prefixes of those answers. A student
    that samples a different first digit lands in states that data never shows it, and only
    training on its own samples (on-policy) gets the teacher's advice there: exposure bias.
    """

    name = "digsum-one-answer"

    def examples(self, split: str, n: int) -> list[dict]:
        examples = super().examples(split, n)
        if split != "train":
            return examples
        reference: dict[str, str] = {}
        return [{"prompt": e["prompt"], "completion": reference.setdefault(e["prompt"], e["completion"])}
                for e in examples]
