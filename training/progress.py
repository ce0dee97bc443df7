"""A progress bar that redraws by the clock, not after every batch.

Lightning's TQDMProgressBar redraws (and re-reads the logged metrics) after every batch by default.
Colorization steps on a GPU take about a millisecond, so that redraw would be a large part of each
step; a fixed `refresh_rate` of N batches would instead freeze the bar for minutes when a step is
slow (segmentation without the feature cache on a CPU). Redrawing at most every `interval` seconds
(and at the end of each bar) suits both.
"""
import time

from pytorch_lightning.callbacks import TQDMProgressBar


class ThrottledProgressBar(TQDMProgressBar):
    """TQDMProgressBar that redraws at most every `interval` seconds, and on a bar's last batch."""

    def __init__(self, interval=0.5, **kwargs):
        super().__init__(**kwargs)
        self.interval = interval
        self._last_draw = float("-inf")

    def _should_update(self, current, total):
        if not self.is_enabled:
            return False
        now = time.monotonic()
        if current == total or now - self._last_draw >= self.interval:
            self._last_draw = now
            return True
        return False
