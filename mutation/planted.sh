#!/bin/bash
# The five bugs of issue 27, planted one at a time: each line shows its test file's result with
# the bug in place (it must fail), then the files are restored and the tests run again (they pass).
# Run from the repository root with the project's python first on PATH (docs/testing.md).
set -u
PY=$(realpath -s "$(command -v "${PY:-python}")")  # absolute: the workers the tests start run sys.executable from other dirs
restore() { for f in "${saved[@]}"; do cp "/tmp/planted.$$.$(basename "$f")" "$f"; done; }
saved=(memtrain/service/routers/jobs.py memtrain/train/setting.py memtrain/scheduling/admission.py
       memtrain/train/trainer.py memtrain/scheduling/scheduler.py)
for f in "${saved[@]}"; do cp "$f" "/tmp/planted.$$.$(basename "$f")"; done
trap restore EXIT
plant() {  # file, old text, new text, what the tests are
  "$PY" - "$1" "$2" "$3" <<'PY'
import sys
p, old, new = sys.argv[1:4]
s = open(p).read()
assert s.count(old) == 1, f"{p}: the text to change is not there once: {old!r}"
open(p, "w").write(s.replace(old, new))
PY
  shift 3
  echo "$1 | $("$PY" -m pytest -q -p no:cacheprovider "${@:2}" 2>&1 | tail -1)"
  restore
}
plant memtrain/service/routers/jobs.py '@guarded.delete("/jobs/{job_id}"' \
  '@router.delete("/jobs/{job_id}"' "1 DELETE without auth" tests/test_service_auth.py
# 2: since issue 21 the one place a plan's arguments are built is Setting.plan (the service's plan too)
plant memtrain/train/setting.py 'keep_best=self.keep_best,' 'keep_best=self.keep_best and micro is None,' \
  "2 best-weights copy unplanned" tests/test_service_planning.py
plant memtrain/scheduling/admission.py 'now - head.queued_at >= head_wait' 'now - job.queued_at >= head_wait' \
  "3 head-wait of the wrong job" tests/test_service_admission.py
plant memtrain/train/trainer.py '(self.seed, 1, self.steps, micro)' '(self.seed, 1, self.steps)' \
  "4 masks repeated per micro-batch" tests/test_accumulation.py -k dropout
"$PY" - <<'PY'
p = "memtrain/scheduling/scheduler.py"  # 5: the executor's start moved above the store's update
s = open(p).read()
a = s.index("        # written before the process exists")
j = s.index("        try:\n            h = self.executor.start(launch)")
k = s.index("        target = h.metrics_target")
open(p, "w").write(s[:a] + s[j:k] + s[a:j] + s[k:])
PY
echo "5 launch before commit | $("$PY" -m pytest -q -p no:cacheprovider tests/test_service_scheduler.py \
  -k 'before_the_executor or between_commit' 2>&1 | tail -1)"
restore
echo "restored | $("$PY" -m pytest -q -p no:cacheprovider -rf tests/test_service_auth.py tests/test_service_planning.py \
  tests/test_service_admission.py tests/test_service_scheduler.py tests/test_accumulation.py 2>&1 | grep -E "^FAILED|passed|failed")"
