"""python -m student_worker --config run.yaml --output-dir DIR [--preset gkd] [--resume] [section.key=value ...]

One worker on one CPU or GPU. Many workers: `torchrun --nproc-per-node N -m student_worker ...`
(several machines: add `--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT`).
Overrides set any config key listed above, as `section.key=value` or `--section.key value`:
`optim.lr=3e-5 method.divergence=reverse_kl train.steps=200`. Later layers win: field defaults <
the --config file < the --preset < overrides. `--print-config` shows the result and exits.
`--plugin MODULE` imports a module of yours first, which may register methods, divergences or tasks.
"""

import argparse
import gc
import importlib
import logging
import sys

import torch.distributed as dist

from distill.logs import setup_logging
from student_worker.config import PRESETS, as_flags, check_unknown, config_arguments, describe, resolve
from student_worker.train.run_record import config_yaml


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m student_worker", description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [--config FILE] [--preset NAME] --output-dir DIR "
                                           "[options] [section.key=value ...]",
                                     epilog=__doc__.split("\n\n", 1)[1], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with the run configuration")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="named method configuration")
    parser.add_argument("--output-dir", help="checkpoints, metrics.jsonl, config.yaml and "
                                             "teacher_info.json go here (required to train)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in --output-dir (a fresh start when it has none)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="--resume although the configuration differs from the run's config.yaml")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (repeatable): a module of yours that registers methods "
                             "(student_worker.methods.register_method), divergences or tasks")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="json: one JSON object per line (time, level, logger, message, extras)")
    argv = as_flags(sys.argv[1:] if argv is None else argv)
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--plugin", action="append", default=[])
    for module in first.parse_known_args(argv)[0].plugin:   # first: their methods' keys become options
        importlib.import_module(module)
    source = config_arguments(parser)
    args, extra = parser.parse_known_args(argv)
    try:
        check_unknown(extra)
        cfg = resolve(args.config, args.preset, source(parsed_args=args)())
        from student_worker.methods import check_names   # the registries (torch): once the config parsed

        check_names(cfg)
    except ValueError as exc:   # pydantic's ValidationError is one: a usage error, no traceback
        parser.error(describe(exc))
    if args.print_config:
        print(config_yaml(cfg), end="")
        return
    if not args.output_dir:
        parser.error("--output-dir is required to train")
    setup_logging(args.log_level, args.log_format)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from student_worker.train.trainer import train   # after logging is set: it imports the model libraries

    if args.log_format == "json":   # progress bars are not log lines (transformers' loading/saving bars)
        import transformers

        transformers.utils.logging.disable_progress_bar()

    with logging_redirect_tqdm():   # log lines above the progress bar, not through it
        # JSON logs: no bar (torch imported tqdm before TQDM_DISABLE was set, so say it here)
        train(cfg, args.output_dir, resume=args.resume, allow_config_change=args.allow_config_change,
              progress=args.log_format == "text")
    if dist.is_initialized():   # a clean exit for every rank (gloo's threads end before teardown)
        gc.collect()   # DDP/FSDP objects in reference cycles, freed while the group still lives
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
