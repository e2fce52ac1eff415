"""Robustness evaluation (bin/evaluate), one job per module; import the module you need.

plan.py                EvalConfig (settings, literature defaults) and the plan of attack runs
model_fns.py           ModelFns: logits / embedding of a Keras network, callable or SavedModel
evaluate.py            evaluate(): gathers the evidence, runs the evaluators, assembles the report
evidence.py            the examples, the clean pass and every run of the plan, shard by shard
evaluators.py          one class per report section: attacks, sweeps, sanity, suite, detection
report_schema.py       report.json's keys and types, declared once; check_report
sanity.py              Carlini et al. (2019) sanity checks on the per-example evidence
suite.py               AutoAttack (Croce & Hein 2020) inside an evaluation
robustbench.py         the AutoAttack result as a RobustBench model_info file
detection_protocol.py  the TLA paper's detection protocol and the adaptive detector attack
outputs.py, plots.py   figures, TensorBoard summaries, the printed summary
progress.py            the plan and one line per finished run, for a `progress` callable
run.py                 an evaluation of a model_dir or SavedModel: load, evaluate, write
"""
