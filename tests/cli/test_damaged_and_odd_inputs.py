"""Issue 40's classes whose right answer is a behaviour, not an error: a damaged log keeps its good
rows, paths of any bytes survive every command that hashes, prints or writes them, linked folders
are followed once, and an epoch with nothing readable stops the run."""

import csv
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import labelled_folder, tiny_config
from openjepa.checkpoint import load_checkpoint
from openjepa.cli import main
from openjepa.data import DataError, ImageFolder, UnreadableImage
from openjepa.pretrain import train
from openjepa.viz.curves import read_columns


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def logged(caplog):
    caplog.set_level(logging.WARNING, "openjepa")
    logging.getLogger("openjepa").propagate = True
    return caplog


def test_a_damaged_log_keeps_its_good_rows_on_resume_and_in_the_report(tmp_path):
    cfg = tiny_config(tmp_path / "run", logging={"log_every": 1})
    train(cfg, max_steps=3)
    log_csv = tmp_path / "run" / "log.csv"
    good = log_csv.read_bytes()
    log_csv.write_bytes(good + b"garbage,line\n" + b"\x00" * 40)  # what a crash mid-write leaves
    assert read_columns(log_csv)["step"] == [1.0, 2.0, 3.0]  # the report's curves keep the good rows
    train(cfg, max_steps=5)  # resumes: no traceback
    assert [r["step"] for r in rows_of(log_csv)] == ["1", "2", "3", "4", "5"]
    assert "2 damaged line(s) left out (line 5, 6)" in (tmp_path / "run" / "train.log").read_text()
    assert (tmp_path / "run" / "log.csv.damaged").read_bytes().startswith(good)  # nothing lost
    rows = log_csv.read_bytes().split(b"\n", 1)[1]
    log_csv.write_bytes(b"\xff\xfe broken header\n" + rows)  # a header that is garbage
    train(cfg, max_steps=6)
    assert [r["step"] for r in rows_of(log_csv)] == ["1", "2", "3", "4", "5", "6"]


def test_file_names_that_are_not_utf8_or_hold_a_newline_survive_eval_and_embed(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(run), max_steps=1)
    data = labelled_folder(tmp_path / "data")
    odd = os.fsencode(data / "train" / "top") + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(odd.decode("utf-8", "surrogateescape"))
    ckpt = str(run / "checkpoints" / "latest.pt")
    assert main(["eval", ckpt, "--data", str(data), "--protocol", "knn", "--baselines", "", "--no-progress"]) == 0
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(os.fsdecode(os.fsencode(flat) + b"/ok\xff.png"))
    (flat / "bad\nname.png").write_bytes(b"not a png")
    out = tmp_path / "e.parquet"
    assert main(["embed", ckpt, "--data", str(flat), "--out", str(out), "--no-progress"]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out).column("path").to_pylist() == ["ok\\xff.png"]  # escaped, not lost
    assert (tmp_path / "e.parquet.skipped.txt").read_text() == "bad\\nname.png\n"  # one line per file


def test_a_linked_sub_folder_is_read_once_and_a_link_loop_is_left_out(tmp_path, logged):
    root = tmp_path / "images"
    (root / "own").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for folder, n in ((root / "own", 2), (elsewhere, 3)):
        for i in range(n):
            Image.fromarray(np.full((16, 16), 10 * i, np.uint8)).save(folder / f"{i}.png")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "back").symlink_to(root, target_is_directory=True)  # a loop
    assert len(ImageFolder(root)) == 5  # the linked folder's images count, the loop adds none
    assert "linked folder(s) left out" in logged.text and "linked/back" in logged.text


class FailingDisk(torch.utils.data.Dataset):
    """Images that become unreadable once ``reads_left`` reads are spent (None: never)."""

    def __init__(self, n: int):
        self.images, self.reads_left = torch.rand(n, 3, 16, 16), None

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if self.reads_left is not None:
            if self.reads_left == 0:
                raise UnreadableImage(f"image {i}", "the disk went bad")
            self.reads_left -= 1
        return self.images[i], 0


def test_an_epoch_with_nothing_readable_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path / "run", data={"batch_size": 8})
    cfg.optimization.epochs = 3
    disk = FailingDisk(16)
    train(cfg, max_steps=2, dataset=disk)  # epoch 1 read and saved
    disk.reads_left = 1  # the check before the run still reads one image, then every read fails
    with pytest.raises(DataError, match=r"epoch 2 had no readable image \(16 unreadable\).* is kept"):
        train(cfg, dataset=disk)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["step"] == 2
    disk.reads_left = 0
    with pytest.raises(DataError, match="none of the first 16 image"):  # and a run on it is refused at once
        train(tiny_config(tmp_path / "new"), dataset=disk)
    assert not (tmp_path / "new").exists()
