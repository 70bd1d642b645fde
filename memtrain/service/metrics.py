"""The service's own /metrics: a prometheus_client Collector over the store (no globals).

memtrain_service_jobs{state}, memtrain_service_queue_wait_seconds (histogram of the
waits of jobs started since the service started), memtrain_service_device_{capacity,
committed,measured}_bytes{device}, memtrain_service_submissions_total{outcome}
(admitted / rejected at submission), memtrain_service_job_starts_total,
memtrain_service_job_retries_total, memtrain_service_state_dir_bytes and
memtrain_service_store_damaged_rows.
"""

from __future__ import annotations

import bisect

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

WAIT_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class ServiceCollector:
    def __init__(self, service):
        self.service = service

    def collect(self):
        s = self.service
        jobs = GaugeMetricFamily("memtrain_service_jobs", "Jobs by state.", labels=["state"])
        for state, n in s.store.counts().items():
            jobs.add_metric([state], n)
        yield jobs
        yield _histogram(list(s.waits))
        cap = GaugeMetricFamily("memtrain_service_device_capacity_bytes",
                                "Budget the plans may commit on the device.", labels=["device"])
        com = GaugeMetricFamily("memtrain_service_device_committed_bytes",
                                "Plans of the device's running jobs plus one process overhead each.",
                                labels=["device"])
        mea = GaugeMetricFamily("memtrain_service_device_measured_bytes",
                                "Resident memory of the device's running jobs now.", labels=["device"])
        for d in s.device_views():
            cap.add_metric([d["device"]], d["capacity_bytes"])
            com.add_metric([d["device"]], d["committed_bytes"])
            mea.add_metric([d["device"]], d["measured_bytes"])
        yield from (cap, com, mea)
        sub = CounterMetricFamily("memtrain_service_submissions", "Submissions, admitted to the queue or "
                                  "rejected (bad input, never fits).", labels=["outcome"])
        sub.add_metric(["admitted"], s.events.get("admitted", 0))
        sub.add_metric(["rejected"], s.events.get("rejected", 0))
        yield sub
        yield CounterMetricFamily("memtrain_service_job_starts", "Job processes started (attempts).",
                                  value=s.events.get("started", 0))
        yield CounterMetricFamily("memtrain_service_job_retries", "Jobs requeued to resume from a checkpoint.",
                                  value=s.events.get("requeued", 0))
        size = s.housekeeper.state_dir_bytes
        if size is not None:
            yield GaugeMetricFamily("memtrain_service_state_dir_bytes", "Bytes on disk under the state dir (and "
                                    "--storage): the store, its backup, each job's log, checkpoints and models.",
                                    value=size)
        yield GaugeMetricFamily("memtrain_service_store_damaged_rows", "Job rows of the store that do not decode "
                                "(skipped; memtrain serve --recover rebuilds them).", value=len(s.store.bad_rows))


def _histogram(waits: list):
    waits.sort()
    buckets = [(str(b), bisect.bisect_right(waits, b)) for b in WAIT_BUCKETS] + [("+Inf", len(waits))]
    return HistogramMetricFamily("memtrain_service_queue_wait_seconds",
                                 "Seconds jobs waited in the queue before starting (since the service started).",
                                 buckets=buckets, sum_value=sum(waits))


def exposition(service) -> tuple:
    registry = getattr(service, "_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ServiceCollector(service))
        service._registry = registry
    return generate_latest(registry), CONTENT_TYPE_LATEST
