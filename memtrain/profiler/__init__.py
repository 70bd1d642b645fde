"""Services above the trainer: the estimate report, the auto batch size (solved on
the plan, confirmed by a real step) and the profile (plan vs measured). A whole job's
plan before it runs is memtrain.train.jobplan (re-exported as profiler.jobplan)."""
