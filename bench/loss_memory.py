"""Peak memory and time of one student update: chunked loss vs today's full-batch log-softmax.

    python bench/loss_memory.py [--vocab 49152 --batch 4 --seq 512 --chunk 128 --loss reverse_kl]

Both variants run the same update (forward, loss, backward) on the same batch: --batch sequences
of --seq tokens (2,048 positions by default). Prompts take the first --prompt-share of each
sequence, completions of uneven lengths up to the rest (61% of the positions are completion
targets by default; --prompt-share 0.002 makes nearly all of them targets). The model is a small
Llama with a --vocab vocabulary (SmolLM2's 49,152 by default), whose head and loss dominate the
update as they do for a real student at long sequences.

* today:   logits of every position, log_softmax in float32 over [B, S, V], then the loss
           (`full_batch_loss`: the trainer's update before the chunked loss; tests keep it as
           the float64 reference);
* chunked: completion positions only, --chunk positions at a time, each chunk's gradient taken
           at once (student_worker.losses.chunked_loss via micro_batches.accumulate_gradients).

Each variant runs in its own process (one CPU thread) so its memory is its own. Peak memory is
the resident set's high-water mark (VmHWM) above the resident set just before the update, reset
with /proc/self/clear_refs; glibc is told to serve large blocks with mmap so freed tensors leave
the resident set. Time is the median CPU time of --reps updates
(process time, not wall time: the bench machines are shared, and one thread makes them equal). Goal: >= 8x lower peak, <= 1.2x the time.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rss_kib(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    pathlib.Path("/proc/self/clear_refs").write_text("5")   # VmHWM := VmRSS (Linux >= 4.0)


def full_batch_loss(cfg, student_logprobs_BSV, batch, teacher, rollout):
    """The unchunked loss on the [B, S, V] log-softmax of every position, as the trainer computed
    it before chunked_loss (the reference the chunked loss must equal): token NLL, a divergence
    to the teacher's top-k + tail, or REINFORCE with the teacher as KL anchor."""
    import torch

    from student_worker.losses import divergences as D
    from student_worker.methods import PolicyGradient, TokenNLL, get_method

    m, loss_row = cfg.method, get_method(cfg).loss
    token_lp_BS = student_logprobs_BSV.gather(-1, batch.targets_BS[..., None])[..., 0]
    if isinstance(loss_row, TokenNLL):
        return -D.masked_mean(token_lp_BS, batch.mask_BS, m.reduction)
    if isinstance(loss_row, PolicyGradient):
        kl_BS = D.sampled_reverse_kl(token_lp_BS.detach(), teacher.token_logprobs_BS.to(token_lp_BS))
        advantage_BS = -m.kl_coef * kl_BS
        if m.use_reward and rollout.rewards is not None:
            rewards_B = rollout.rewards.to(token_lp_BS)
            advantage_BS = advantage_BS + (rewards_B - rewards_B.mean())[:, None]
        return -D.masked_mean(advantage_BS * token_lp_BS, batch.mask_BS, m.reduction)
    rows = batch.mask_BS   # a divergence: only completion rows (no stand-in value can be inf)
    div_M = D.divergence(loss_row.name or m.divergence, student_logprobs_BSV[rows][None],
                         teacher_topk_ids_BTK=teacher.topk_ids_BSK[rows][None],
                         teacher_topk_logprobs_BTK=teacher.topk_logprobs_BSK[rows][None],
                         teacher_tail_logprobs_BT=teacher.tail_logprobs_BS[rows][None], beta=m.beta,
                         alpha=m.alpha)[0]
    div_BS = torch.zeros(rows.shape, dtype=div_M.dtype).masked_scatter(rows, div_M)
    return D.masked_mean(div_BS, rows, m.reduction)


def variant(args) -> dict:
    """One variant, in this process: {"peak_mib", "seconds", "loss"}."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from distill.client.teacher_client import TeacherScores
    from student_worker.config import RunConfig
    from student_worker.losses import chunked_loss as C
    from student_worker.methods import get_method
    from student_worker.rollouts.rollout import Rollout, teacher_batch, token_batch
    from student_worker.train.micro_batches import accumulate_gradients

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=args.seq,
                         tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config)
    g = torch.Generator().manual_seed(1)
    prompt_len = max(1, int(args.seq * args.prompt_share))
    # uneven completions: from half the room to all of it
    lengths = [args.seq - prompt_len - (args.seq - prompt_len) * i // (2 * args.batch) for i in range(args.batch)]
    prompts = [torch.randint(4, args.vocab, (prompt_len,), generator=g).tolist() for _ in lengths]
    completions = [torch.randint(4, args.vocab, (n,), generator=g).tolist() for n in lengths]
    rollout = Rollout(prompts, completions, "student")
    topk_ids = [torch.randint(0, args.vocab, (n, args.top_k), generator=g) for n in lengths]
    scores = [TeacherScores(ids, torch.full(ids.shape, -3.0), torch.full((len(ids),), -2.0),
                            torch.full((len(ids),), -1.0), None) for ids in topk_ids]
    method = ({"name": "sft"} if args.loss == "nll" else {"name": "gkd", "divergence": args.loss})
    cfg = RunConfig.model_validate({"student": {"path": "-"}, "data": {"source": "-"}, "method": method})
    batch = token_batch(rollout, pad_id=0)
    teacher = teacher_batch(scores, rollout, batch.targets_BS.shape[1])

    def today():
        logits_BSV = model(input_ids=batch.input_ids_BT, attention_mask=batch.attention_BT).logits[:, :-1]
        loss = full_batch_loss(cfg, torch.log_softmax(logits_BSV.float(), -1), batch, teacher, rollout)
        loss.backward()
        return loss.item()

    def chunked():
        loss_row = get_method(cfg).loss
        token_loss, extras = loss_row.per_token(cfg.method), loss_row.inputs(cfg.method, batch, teacher, rollout)
        weights_M = C.reduction_weights(batch.mask_BS, "token", C.completion_counts(batch.mask_BS))
        loss, _ = accumulate_gradients(model, model.get_output_embeddings(), batch.input_ids_BT,
                                       batch.attention_BT, batch.mask_BS, token_loss, weights_M, extras,
                                       chunk_size=args.chunk)
        return loss.item()

    update = today if args.variant == "today" else chunked
    seconds, peaks = [], []
    for _ in range(args.reps + 1):   # the first is a warm-up
        model.zero_grad(set_to_none=False)   # gradients stay allocated: not part of the peak
        before = _rss_kib("VmRSS")
        _reset_peak()
        start = time.process_time()
        loss = update()
        seconds.append(time.process_time() - start)
        peaks.append(_rss_kib("VmHWM") - before)
    return {"peak_mib": statistics.median(peaks[1:]) / 1024, "seconds": statistics.median(seconds[1:]),
            "loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512, help="tokens per sequence (batch x seq positions)")
    parser.add_argument("--chunk", type=int, default=128, help="positions per chunk")
    parser.add_argument("--prompt-share", type=float, default=0.25, help="of each sequence")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--loss", default="reverse_kl", help="nll or a divergence name")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--variant", choices=["today", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(variant(args)))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    results = {}
    for name in ("today", "chunked"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", name], env=env,
                             check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    one_tensor_mib = args.batch * args.seq * args.vocab * 4 / 2**20
    print(f"{args.batch} x {args.seq} positions, vocabulary {args.vocab}, loss {args.loss}, "
          f"chunk {args.chunk}, prompt share {args.prompt_share}; one float32 [B, T, V] tensor = {one_tensor_mib:.0f} MiB")
    print(f"{'variant':8} {'peak MiB':>9} {'x [B,T,V]':>10} {'seconds':>8} {'loss':>10}")
    for name, r in results.items():
        print(f"{name:8} {r['peak_mib']:9.0f} {r['peak_mib'] / one_tensor_mib:10.2f} {r['seconds']:8.2f} "
              f"{r['loss']:10.5f}")
    t, c = results["today"], results["chunked"]
    print(f"peak memory: {t['peak_mib'] / c['peak_mib']:.1f}x lower (goal >= 8x); "
          f"time: {c['seconds'] / t['seconds']:.2f}x today's (goal <= 1.2x)")


if __name__ == "__main__":
    main()
