"""Moved to memtrain.train.jobplan (layer 3, below the Job, which uses it too); the names
stay importable from here for code written against the earlier place."""

from memtrain.train.jobplan import DataRows, JobPlan, data_rows, job_setting, plan_job

__all__ = ["DataRows", "JobPlan", "data_rows", "job_setting", "plan_job"]
