"""A store for the web view's tests: a three-stage chain (prep -> train -> eval) whose
train job has plots, metrics, a CSV, a log, and hostile names and artifacts."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from c3fs_cli.demo import png

from c3fs.jobs.push import push_dir, register
from c3fs.objects.job import FAILED, Input, JobRecord
from c3fs.repo import Repo

PROJECT = "vision"
PREP, TRAIN, EVAL = "job_prep", "job_train", "job_eval"
HOSTILE_NAME = '<script>alert("name")<script>.txt'
HOSTILE_IMG_NAME = '"><img src=x onerror=alert(1)>.png'
EVIL_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
            b'<script>alert("svg")</script><rect width="40" height="20" fill="red"/></svg>')
EVIL_HTML = b"<html><body><script>alert('html')</script>report</body></html>"
GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
       b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
GOOD_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="60" height="30">'
            b'<rect width="60" height="30" fill="#36c"/></svg>')
BIG = 3 * 1024 * 1024 + 123  # a file of several chunks


def train_output(path: Path) -> None:
    (path / "plots").mkdir(parents=True)
    for i in range(3):
        (path / "plots" / f"loss_{i}.png").write_bytes(png(64 + 8 * i, 48, i))
    (path / "plots" / "dot.gif").write_bytes(GIF)
    (path / "plots" / "curve.svg").write_bytes(GOOD_SVG)
    (path / "plots" / HOSTILE_IMG_NAME).write_bytes(png(16, 16, 9))
    (path / "metrics.json").write_text(json.dumps(
        {"epoch": 3, "loss": 0.123, "val": {"acc": 0.91, "top5": 0.99}, "note": "<b>bold</b>"}))
    (path / "history.csv").write_text("step,loss\n" + "".join(f"{i},{1 / (i + 1):.4f}\n"
                                                               for i in range(300)))
    (path / "train.log").write_text("".join(f"line {i}\n" for i in range(500)))
    (path / HOSTILE_NAME).write_text("hostile name")
    (path / os.fsdecode(b"bad\xffname.txt")).write_bytes(b"not utf-8 in the name")
    (path / "evil.svg").write_bytes(EVIL_SVG)
    (path / "report.html").write_bytes(EVIL_HTML)
    (path / "weights.bin").write_bytes(os.urandom(BIG))
    os.symlink("../../../../etc/passwd", path / "escape")
    (path / "ckpt").mkdir()
    (path / "ckpt" / "model.pt").write_bytes(b"weights" * 1000)


def chain(repo: Repo, tmp_path: Path) -> dict[str, JobRecord]:
    """prep -> train (reads /jobs/job_prep) -> eval (reads train's ckpt/ by project path)."""
    prep_dir, train_dir, eval_dir = (tmp_path / n for n in ("prep", "train", "eval"))
    prep_dir.mkdir()
    (prep_dir / "data.csv").write_text("x,y\n1,2\n")
    prep = push_dir(repo, prep_dir, PROJECT, PREP)
    train_dir.mkdir()
    train_output(train_dir)
    train = push_dir(repo, train_dir, PROJECT, TRAIN, command=["python", "train.py"],
                     inputs=[Input(ref=f"/jobs/{PREP}", root=prep.root, mount="/data/prep")])
    eval_dir.mkdir()
    (eval_dir / "eval.json").write_text(json.dumps([{"split": "val", "acc": 0.9},
                                                    {"split": "test", "acc": 0.88}]))
    ckpt = f"/projects/{PROJECT}/jobs/{TRAIN}/ckpt"
    evaluate = push_dir(repo, eval_dir, "eval-team", EVAL, status=FAILED, reason="SCRIPT_ERROR",
                        exit_code=3, inputs=[Input(ref=ckpt, root="ab" * 32, mount="/data/w")])
    return {"prep": prep, "train": train, "eval": evaluate}


def many_jobs(repo: Repo, like: JobRecord, count: int, statuses: tuple[str, ...]) -> None:
    """`count` more jobs sharing `like`'s tree (cheap: records only), cycling `statuses`."""
    now = time.time()
    for i in range(count):
        status = statuses[i % len(statuses)]
        register(repo, JobRecord(id=f"job_bulk_{i:05d}", project=f"bulk{i % 3}", status=status,
                                 reason="SCRIPT_ERROR" if status == FAILED else "",
                                 created=now - 10 * i, ended=now - 10 * i + 5, root=like.root,
                                 logical_bytes=1000 + i, files=i % 7, stored_delta=i))
