"""The loss: divergences between the student and the teacher's top-k + tail (divergences.py,
pure tensor functions) and the loss over completion tokens a chunk of positions at a time
(chunked_loss.py)."""
