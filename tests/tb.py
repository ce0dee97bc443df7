"""Read TensorBoard event files the way TensorBoard does, so tests check what a user would see."""
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2


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


def read_hparams(log_dir):
    """What TensorBoard's HParams tab shows of the run: {"hparams": {name: value}, "metrics": [metric tags],
    "status": session end status name}, from the hparams plugin data in the event files."""
    content = _load(log_dir).PluginTagToContent("hparams")
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(blob) for tag, blob in content.items()}
    start = data["_hparams_/session_start_info"].session_start_info
    hparams = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    experiment = data["_hparams_/experiment"].experiment
    end = data["_hparams_/session_end_info"].session_end_info
    return {"hparams": hparams, "metrics": [m.name.tag for m in experiment.metric_infos],
            "status": api_pb2.Status.Name(end.status)}
