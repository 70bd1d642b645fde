"""Services above the trainer: the estimate report, the auto batch size (solved on
the plan, confirmed by a real step), the profile (plan vs measured) and the plan of
a whole job before it runs (jobplan)."""
