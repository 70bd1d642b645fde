"""A trial array's checkpoint contents: every trial's state in one checkpoint of train/checkpoint.py.

The arrays are each trial's Trainer.state_arrays() under `t<k>.<name>` (parameters, every
optimizer slot, best weights); the sidecar's state is the array's clock and one record per
trial: its Trainer.state_meta() (steps, epoch, position, the epoch's loss so far, early
stopping; its epoch is also its history position: the run dir's history is cut back to that
many rows on resume, as a lone job's `history_rows`), what an array adds to a lone trainer's state (the non-finite streak, the last rate
and gradient norm) and its `state`: training, finished, stopped_early, failed or cancelled.

No random generator state is saved, as none is for a lone job: a trial's data order is drawn
from (seed, 0, epoch) and its dropout masks from (seed, 1, step), so a restored trial draws
what it would have drawn (train/trainer.py _shuffle, _dropout_rng).

The clock is the array's step count, epochs x batches per epoch + position, the same for every
trial still training (they step together); a trial that ended stands where it ended. It names
the checkpoint file (ckpt-<clock>), so a newer checkpoint always has a larger number.
"""

from __future__ import annotations

from memtrain.errors import CheckpointError

# a trial's state in the checkpoint; "cancelled" is a trial stopped on its own (ArrayRun.stop_trial):
# it does not train again, unlike the trials of an array that was stopped whole, which are "training"
STATES = ("training", "finished", "stopped_early", "failed", "cancelled")


def clock(array) -> int:
    """The array's step count: its trials' furthest (epoch, position) as steps of the array."""
    n_batches = -(-len(array.X) // array.batch_size)
    return max(r.trainer.epoch * n_batches + r.trainer.position for r in array.results)


def state_arrays(array) -> dict:
    return {f"t{r.index}.{name}": a for r in array.results for name, a in r.trainer.state_arrays().items()}


def state_meta(array, states) -> dict:
    """The sidecar's state; `states`: each trial's state as the checkpoint records it (STATES)."""
    running = [r for r, s in zip(array.results, states, strict=True) if s == "training"]
    trials = []
    for r, s in zip(array.results, states, strict=True):
        tr = r.trainer
        trials.append({**tr.state_meta(), "nonfinite_streak": int(tr.nonfinite_streak),
                       "last_lr": float(tr.last_lr), "last_grad_norm": float(tr.last_grad_norm), "state": s,
                       "message": r.message})
    return {"steps": clock(array), "epoch": max(r.trainer.epoch for r in array.results),
            "position": running[0].trainer.position if running else 0, "trials": trials}


def load(array, arrays: dict, meta: dict) -> list:
    """Put a checkpoint's state back into the array's trials; returns each trial's recorded state."""
    trials = meta.get("trials")
    if not isinstance(trials, list) or len(trials) != array.K:
        raise CheckpointError(f"resume: the array checkpoint holds {len(trials or ())} trials, this array "
                              f"{array.K}")
    states = []
    for r, t in zip(array.results, trials, strict=True):
        if t.get("state") not in STATES:
            raise CheckpointError(f"resume: trial {r.index}'s state {t.get('state')!r} is not one of "
                                  f"{', '.join(STATES)}")
        prefix = f"t{r.index}."
        tr = r.trainer
        tr.load_state({k[len(prefix):]: a for k, a in arrays.items() if k.startswith(prefix)}, t)
        tr.nonfinite_streak, tr.last_lr, tr.last_grad_norm = t["nonfinite_streak"], t["last_lr"], t["last_grad_norm"]
        r.state = "stopped" if t["state"] == "cancelled" else t["state"]
        r.message = t.get("message", "")
        states.append(t["state"])
    return states
