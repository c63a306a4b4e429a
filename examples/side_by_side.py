"""What the examples share: a model trained beside its lstm_fused copy on the same batches, timed.

The torch copy trains beside the fused one only for the first ``compare_steps`` (enough for a
median), so that a run does not wait on the slower of the two; the two take turns going first.
"""
import time


def timed(fn):
    """fn()'s result and its wall time in seconds."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def train_side_by_side(models, train_step, next_batch, steps, compare_steps, warmup, log):
    """Trains ``models`` ({"lstm_fused": ..., "torch": ...}) for ``steps``, the batch of each step
    from ``next_batch(step)`` and one step of one model from ``train_step(name, *batch)``, which
    returns its loss. ``log(step, losses)`` reports progress six times. Returns the fused model's
    losses and each model's step times in seconds (past ``warmup``)."""
    train_times = {name: [] for name in models}
    losses, loss_gap = [], 0.0
    for step in range(steps):
        batch = next_batch(step)
        names = list(models) if step < compare_steps else ["lstm_fused"]
        step_loss = {}
        for name in names if step % 2 == 0 else names[::-1]:
            step_loss[name], seconds = timed(lambda: train_step(name, *batch))
            if step >= warmup:
                train_times[name].append(seconds)
        losses.append(step_loss["lstm_fused"])
        if step < 10:  # later, rounding differences compound and the two runs drift apart
            loss_gap = max(loss_gap, abs(step_loss["lstm_fused"] - step_loss["torch"]))
        if step == 0 or (step + 1) % max(1, steps // 6) == 0 or step == steps - 1:
            log(step, losses)
    print(f"over the first 10 steps the two models' losses differed by at most {loss_gap:.1e}")
    return losses, train_times
