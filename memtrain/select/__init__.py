"""Model selection the course teaches: optimizers side by side (`compare`) and
grid / random search (`sweep`), both memory-aware and both choosing on the
validation set only ("Regularisation": choosing on the test set is not allowed).

Modules, simple to complex: compare (one job per optimizer), space (sweep
files and their trials), runner (their jobs through the scheduler the service
uses: memtrain/scheduling), sweep (planning, results.jsonl, resume), plots
(matplotlib, imported lazily).
runs (`memtrain runs`: the runs under a directory and their loss curves) reads
what every job writes (memtrain.train.history).
"""
