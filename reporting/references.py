"""Reference numbers from elsewhere, each with the place it can be checked; nothing without a source.

The one traceable reference today is a public CSE 891 submission of this homework. Its protocol differs
from ours (PROTOCOL_DIFFERENCES), so its numbers are context, not a target. `cell(key)` is how a
reference value enters a table: the value and the tag of its source, so no table can show one without
the other.
"""

REPOSITORY = "galib19/CSE-891-Deep-Learning"
FOLDER = "Programming-Assignments/programming-assignment-2/"
URL = f"https://github.com/{REPOSITORY}/tree/main/{FOLDER}"
COLUMN = f"CSE 891 submission ({REPOSITORY})"

# tag -> where in that repository the value is written
SOURCES = {
    "S1": f"the TensorBoard log `{FOLDER}programming-assignment-2/logs/Colorization/` and the checkpoint names in "
          f"`{FOLDER}programming-assignment-2/results/` (last: `Colorization-epoch=024-val_loss=1.585.ckpt`)",
    "S2": f"its report `{FOLDER}programming-assignment-2-galibasa.pdf`",
}

# (what, key) -> (text shown, source tag)
VALUES = {
    ("val loss", "PoolUpsampleNet"): ("1.585", "S1"),
    ("val loss", "ConvTransposeNet"): ("around 1.18", "S2"),
    ("val loss", "UNet"): ("around 1.06", "S2"),
    ("sweep val loss", 32): ("1.11", "S2"),
    ("sweep val loss", 64): ("1.16", "S2"),
    ("sweep val loss", 128): ("1.24", "S2"),
    ("best val mIoU", "ce"): ("0.72", "S2"),
    ("best val mIoU", "iou"): ("0.74", "S2"),
}

PROTOCOL_DIFFERENCES = (
    "segmentation trained on the official trn1+trn2+trn3 and validated on val1 (ours: one split, train / val / "
    "test as the Data section says)",
    "the trimap's unlabelled border band counted as background (ours: left out of loss and metric)",
    "masks resized bilinearly (ours: nearest neighbour)",
    "segmentation with AdamW, learning rate 0.05, batch 128 (ours: Adam, the rate and batch in the table)",
    "images at 224 px (ours: the size in the table)",
    "the frozen trunk left in train mode, so its BatchNorm statistics kept changing (ours: eval mode, fixed)",
)


def cell(what, key):
    """'value [S1]' for a table's reference column, or '' when there is no sourced value."""
    found = VALUES.get((what, key))
    return f"{found[0]} [{found[1]}]" if found else ""


def number(what, key):
    """The reference value as a float (for a comparison sentence), or None."""
    found = VALUES.get((what, key))
    if not found:
        return None
    return float(found[0].split()[-1])


def section():
    """The References section: the sources, and how that protocol differs from ours."""
    lines = ["## References", "",
             f"The column *{COLUMN}* holds the only reference numbers that can be traced: a public submission of "
             f"this homework in the GitHub repository [{REPOSITORY}]({URL}). Each value carries the tag of the "
             "file it comes from:", ""]
    lines += [f"- [{tag}] {where}" for tag, where in SOURCES.items()]
    lines += ["", "Its protocol differs from ours, so its numbers are context, not a target:", ""]
    lines += [f"- {d}" for d in PROTOCOL_DIFFERENCES]
    return "\n".join(lines)
