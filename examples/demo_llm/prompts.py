"""The instruction prompts of the real-LLM demo: short tasks written by this project from templates
over simple topics (facts, arithmetic, rewriting, lists, definitions), so that a 135M-parameter
instruct teacher answers them correctly and briefly.

    python -m examples.demo_llm.prompts OUT_DIR      # writes train.jsonl, dev.jsonl, test.jsonl

Each line is a chat record, `{"messages": [{"role": "user", "content": ...}]}`. The prompts are
distinct, and each lies in exactly one split (sizes in SPLITS, drawn with a fixed seed, so every
run writes the same files); the test split is for evaluation only.

A fourth file, check.jsonl, holds the checked prompts (CHECKS): questions with one right answer that
the teacher gets right most of the time (capitals, opposites, copying a sentence; SmolLM2-135M gets
about 4 in 10 small sums right, so arithmetic is not among them), none of them in the train split.
Each record adds `kind` and `answer`; `is_correct` marks an answer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import random
import re

SEED = 0
SPLITS = {"train": 400, "dev": 50, "test": 50}

COUNTRIES = ["France", "Germany", "Italy", "Spain", "Portugal", "Japan", "China", "India", "Egypt",
             "Kenya", "Brazil", "Argentina", "Canada", "Mexico", "Australia", "Russia", "Greece",
             "Norway", "Sweden", "Poland", "Ireland", "Turkey", "Peru", "Chile", "Thailand",
             "Vietnam", "Nigeria", "Morocco", "Austria", "the Netherlands"]
ANIMALS = ["dog", "cat", "spider", "bird", "horse", "ant", "cow", "chicken", "snake", "fish",
           "duck", "sheep", "bee", "octopus", "lion"]
COLOURED = ["the sky on a clear day", "grass", "a banana", "snow", "a ripe tomato", "an orange",
            "coal", "milk", "a lemon", "a strawberry", "the sun", "a carrot"]
OPPOSITES = ["hot", "big", "fast", "happy", "light", "up", "open", "early", "old", "wet", "full",
             "loud", "strong", "rich", "easy", "high", "long", "hard", "near", "day"]
SENTENCES = ["I walk to school.", "She reads a book.", "They play football.", "We eat dinner at six.",
             "He drinks coffee every morning.", "The cat sleeps on the sofa.", "I write a letter.",
             "The children sing a song.", "My brother drives a car.", "She paints the fence.",
             "The dog chases the ball.", "We watch a film.", "He cooks pasta.", "I open the window.",
             "The baby cries at night.", "They build a house.", "She swims in the lake.",
             "The train leaves at noon.", "I buy some bread.", "He fixes the bike.",
             "The bird flies over the river.", "We plant a tree.", "She sends an email.",
             "The teacher explains the lesson.", "I clean my room."]
CATEGORIES = ["fruits", "vegetables", "colors", "sea animals", "European countries",
              "musical instruments", "planets", "sports", "birds", "kitchen tools", "flowers",
              "farm animals", "languages", "shapes", "days of the week", "months of the year",
              "pieces of furniture", "school subjects", "clothes", "insects", "metals", "drinks",
              "jobs", "vehicles", "body parts", "trees", "board games", "weather types",
              "desserts", "rivers"]
WORDS = ["ocean", "library", "friendship", "volcano", "umbrella", "democracy", "bicycle",
         "gravity", "calendar", "island", "recipe", "orchestra", "desert", "battery", "bridge",
         "harvest", "telescope", "museum", "glacier", "passport", "vaccine", "alphabet", "planet",
         "kitchen", "forest", "thermometer", "election", "dictionary", "rainbow", "magnet",
         "hospital", "festival", "compass", "poem", "engine", "oxygen", "village", "microscope",
         "holiday", "neighbor", "teacher", "garden", "mountain", "newspaper", "airport", "language",
         "photograph", "breakfast", "computer", "weekend"]
PAIRS = list(itertools.product(range(1, 21), repeat=2))

# (how many to draw, every prompt the templates can make) per topic. The wording keeps the
# teacher's greedy answers short (median about 12 tokens; "Answer in one sentence." and "separated by
# commas" cut SmolLM2-135M-Instruct's rambling most): the demo trains on completions of <= 48 tokens.
SENTENCE = "Answer in one sentence."
TOPICS = {
    "facts": (100, [*(f"What is the capital of {c}?" for c in COUNTRIES),
                    *(f"Which continent is {c} in? Answer in one word." for c in COUNTRIES),
                    *(f"How many legs does a {a} have? {SENTENCE}" for a in ANIMALS),
                    *(f"What color is {thing}? {SENTENCE}" for thing in COLOURED),
                    *(f"Give the opposite of the word \"{w}\"." for w in OPPOSITES)]),
    "arithmetic": (140, [*(f"What is {a} + {b}? {SENTENCE}" for a, b in PAIRS),
                         *(f"What is {a} - {b}? {SENTENCE}" for a, b in PAIRS if a > b),
                         *(f"What is {a} times {b}? {SENTENCE}" for a, b in PAIRS if a <= 10 and b <= 10)]),
    "rewriting": (100, [*(f"Rewrite in the past tense: {s}" for s in SENTENCES),
                        *(f"Rewrite as a question: {s}" for s in SENTENCES),
                        *(f"Rewrite in the negative: {s}" for s in SENTENCES),
                        *(f"Rewrite in the future tense: {s}" for s in SENTENCES)]),
    "lists": (60, [f"List {n} {c}, separated by commas." for c in CATEGORIES for n in ("two", "three")]),
    "definitions": (100, [*(f"Define \"{w}\" in one sentence." for w in WORDS),
                          *(f"What is a {w}? {SENTENCE}" for w in WORDS)]),
}


# The checked prompts: a question per key, answered right when the answer contains the value
# (case-insensitive; a prefix where spellings vary). The train split's prompts are left out.
CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Japan": "Tokyo", "China": "Beijing",
            "India": "Delhi", "Egypt": "Cairo", "Kenya": "Nairobi", "Canada": "Ottawa", "Mexico": "Mexico City",
            "Russia": "Moscow", "Greece": "Athens", "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw",
            "Ireland": "Dublin", "Peru": "Lima", "Austria": "Vienna", "Hungary": "Budapest", "Cuba": "Havana",
            "Iran": "Tehran", "Iraq": "Baghdad", "South Korea": "Seoul", "Indonesia": "Jakarta",
            "Romania": "Bucharest", "Bulgaria": "Sofia", "Croatia": "Zagreb", "Saudi Arabia": "Riyadh",
            "Ethiopia": "Addis Ababa", "Ghana": "Accra", "New Zealand": "Wellington", "Afghanistan": "Kabul",
            "Nepal": "Kathmandu", "Bangladesh": "Dhaka", "Lebanon": "Beirut", "Qatar": "Doha", "Senegal": "Dakar",
            "Uganda": "Kampala", "Pakistan": "Islamabad", "Czech Republic": "Prague"}
OPPOSITE_OF = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "up": "down", "open": "clos",
               "early": "late", "wet": "dry", "loud": "quiet", "rich": "poor", "high": "low", "long": "short",
               "day": "night", "good": "bad", "left": "right", "black": "white", "inside": "outside",
               "win": "los", "begin": "end", "push": "pull", "light": "dark", "strong": "weak", "easy": "hard"}
COPY_SENTENCES = [*SENTENCES, "Blue birds sing at dawn.", "My sister likes green apples.",
                  "The old man reads the news.", "A red kite flies high.", "Ten boats sail past the pier."]
CHECKS = {
    "capital": [(f"What is the capital of {c}?", city) for c, city in CAPITALS.items()],
    "opposite": [(f"Give the opposite of the word \"{w}\".", o) for w, o in OPPOSITE_OF.items()],
    "copy": [(f"Repeat this sentence word for word: {s}", s) for s in COPY_SENTENCES],
}


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def is_correct(answer: str, expected: str) -> bool:
    """The answer contains the expected text, ignoring case, punctuation and spacing."""
    return f" {_normal(expected)}" in f" {_normal(answer)}"


def check_records() -> list[dict]:
    """The checked prompts not in the train split, kinds interleaved (so a prefix mixes them)."""
    train = set(splits()["train"])
    kinds = [[{**chat_record(q), "kind": kind, "answer": a} for q, a in pool if q not in train]
             for kind, pool in CHECKS.items()]
    return [r for group in itertools.zip_longest(*kinds) for r in group if r is not None]


def all_prompts() -> list[str]:
    """Every prompt of the demo, drawn from TOPICS with the fixed seed (distinct, in draw order)."""
    rng = random.Random(SEED)
    prompts = []
    for count, pool in TOPICS.values():
        pool = list(dict.fromkeys(pool))
        prompts += rng.sample(pool, count)
    assert len(set(prompts)) == len(prompts) == sum(SPLITS.values())
    rng.shuffle(prompts)   # mix the topics across splits
    return prompts


def splits() -> dict[str, list[str]]:
    """{"train": [...], "dev": [...], "test": [...]}: consecutive slices, so no prompt is in two."""
    prompts, out, start = all_prompts(), {}, 0
    for name, size in SPLITS.items():
        out[name], start = prompts[start:start + size], start + size
    return out


def chat_record(prompt: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}]}


def write(out_dir: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Write OUT_DIR/{train,dev,test,check}.jsonl; return their paths."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, prompts in splits().items():
        paths[name] = out_dir / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(chat_record(p)) + "\n" for p in prompts))
    paths["check"] = out_dir / "check.jsonl"
    paths["check"].write_text("".join(json.dumps(r) + "\n" for r in check_records()))
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    for name, path in write(parser.parse_args().out_dir).items():
        print(f"{name}: {sum(1 for _ in path.open())} prompts in {path}")
