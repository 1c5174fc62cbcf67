"""Student workers: sample from the student, ask the teacher, compute a divergence, step."""
