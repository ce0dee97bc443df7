"""Use a trained model on your own images (no training): `--predict` of colorization.py / segmentation.py.

- `images.py`: read any image file (RGB, RGBA, L, 16-bit, palette, ...) into RGB and greyscale the
  way the training data does; pad to a multiple of 4 and crop back.
- `checkpoints.py`: `--checkpoint best|last|PATH` -> a checkpoint file, loaded safely and checked to
  be of the right task and model.
- `outputs.py`: a fresh output folder, atomic PNG writes, the side-by-side figure.
- `cli.py`: the flags both programs add, and the loop that processes every image even when some fail.
- `colorize.py`, `segment.py`: the two tasks.
"""
