"""Per-epoch metric history, kept in checkpoints so curves survive a resume."""
from pytorch_lightning import Callback


class EpochHistory(Callback):
    """Records the epoch-level values of the logged metrics after every training epoch.

    Validation runs inside the training epoch, so at `on_train_epoch_end` the callback metrics hold
    both this epoch's train/* and val/* values. The sanity check's values are never recorded.
    """

    def __init__(self, keys=None):
        self.keys = keys
        self.history = []

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if self.keys is not None:
            metrics = {k: v for k, v in metrics.items() if k in self.keys}
        self.history = [h for h in self.history if h["epoch"] != trainer.current_epoch]
        self.history.append({"epoch": trainer.current_epoch, **metrics})

    def state_dict(self):
        return {"history": self.history}

    def load_state_dict(self, state_dict):
        # Resuming a fit restores the epochs run so far. Testing with ckpt_path="best" restores an
        # older checkpoint too: epochs recorded since then must survive, so merge by epoch.
        merged = {h["epoch"]: h for h in state_dict.get("history", [])}
        merged.update({h["epoch"]: h for h in self.history})
        self.history = [merged[e] for e in sorted(merged)]

    def best(self, key, mode="min"):
        """(value, epoch) of the best recorded value of `key`, or (None, None)."""
        rows = [h for h in self.history if key in h]
        if not rows:
            return None, None
        pick = min if mode == "min" else max
        row = pick(rows, key=lambda h: h[key])
        return row[key], row["epoch"]

    def last(self, key):
        rows = [h for h in self.history if key in h]
        return rows[-1][key] if rows else None
