"""python -m student_worker --config run.yaml --output-dir DIR [--preset gkd] [--resume] [key=value ...]

One worker on one CPU or GPU. Many workers: `torchrun --nproc-per-node N -m student_worker ...`
(several machines: add `--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT`).
Overrides set any config field: `optim.lr=3e-5 method.divergence=reverse_kl train.steps=200`.
"""

import argparse

import torch.distributed as dist

from student_worker.config import PRESETS, load_config
from student_worker.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m student_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file with the run configuration")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="named starting configuration")
    parser.add_argument("--output-dir", required=True, help="checkpoints and metrics.jsonl go here")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args()
    cfg = load_config(args.config, args.preset, args.overrides)
    train(cfg, args.output_dir, resume=args.resume)
    if dist.is_initialized():   # a clean exit for every rank (gloo's threads end before teardown)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
