"""bin/compare: several training methods x seeds, one shared evaluation, tables with 95% CIs.

plan (what runs where), run (subprocesses, progress, resume), report (results.json/.md), stats
(Student t intervals), figures (PNGs), hparams (TensorBoard HParams). Only hparams imports
TensorFlow (when it writes).
"""
