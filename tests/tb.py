"""Read TensorBoard event files the way TensorBoard does, so tests check what a user would see."""
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _load(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def read_scalars(log_dir):
    """{tag: [values in step order]} of every scalar in the run folder."""
    acc = _load(log_dir)
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_image_tags(log_dir):
    return list(_load(log_dir).Tags()["images"])
