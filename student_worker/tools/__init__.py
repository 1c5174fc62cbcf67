"""Tools around training: prune a teacher into a student (prune.py), paired bootstrap statistics
(stats.py), the offline score cache `distill-score` (score_file.py)."""
