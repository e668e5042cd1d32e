"""metrics.csv survives a resume: rows up to the checkpoint stay, rows after it are dropped."""

import csv

from ssal.loggers import ResumableCSVLogger

# what ``ssal fit`` writes for 9 batches an epoch, logging every 2 steps, killed in epoch 1
HEADER = ["epoch", "lr-SGD/backbone", "step", "train/loss", "val/acc_fine"]
ROWS = [
    ["", "0.05", "0", "", ""],  # learning rate at the start of epoch 0 (no epoch)
    ["0", "", "1", "2.28", ""],
    ["0", "", "7", "1.90", ""],
    ["0", "", "8", "", "0.10"],  # epoch 0's validation
    ["", "0.025", "9", "", ""],  # learning rate at the start of epoch 1
    ["1", "", "9", "1.76", ""],  # first training row of the interrupted epoch 1
    ["1", "", "11", "1.56", ""],
]


def write_metrics(folder) -> None:
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(ROWS)


def rows_after_resume(tmp_path, **resume) -> list[tuple[str, str]]:
    write_metrics(tmp_path / "ssal" / "version_0")
    logger = ResumableCSVLogger(tmp_path, name="ssal", version=0, **resume)
    assert logger.experiment is not None  # opens metrics.csv the way a resumed fit does
    with open(tmp_path / "ssal/version_0/metrics.csv") as f:
        return [(r["epoch"], r["step"]) for r in csv.DictReader(f)]


def test_resume_keeps_rows_up_to_the_checkpoint_and_none_of_the_interrupted_epoch(tmp_path):
    # the checkpoint after epoch 0 is at global step 9: the resumed run logs step 9 again
    kept = rows_after_resume(tmp_path, resume_step=9, resume_epoch=0)
    assert kept == [("", "0"), ("0", "1"), ("0", "7"), ("0", "8")]


def test_without_a_resume_nothing_is_dropped(tmp_path):
    kept = rows_after_resume(tmp_path)
    assert len(kept) == len(ROWS)
