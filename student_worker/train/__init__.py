"""The step and the run: the training loop (trainer.py), the training model's parallelism and
precision (parallel.py), gradient accumulation (micro_batches.py), checkpoints and the run
folder's records (checkpoint.py, run_record.py), trackers (tracking.py), task evaluation
(evaluate.py)."""
