"""What `pip install c3fs` puts in site-packages: only c3fs-owned top-level names."""

import pathlib
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_package_of_the_tree_is_listed():
    """pyproject.toml lists its packages by hand (the `cli/` folder installs as `c3fs_cli`), so
    a new subpackage left out of the list would be missing from the wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    assert config["package-dir"] == {"c3fs_cli": "cli"}
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "c3fs").rglob("__init__.py")} | {"c3fs_cli"}
    assert listed == found


def _copy_of_tree(dest: pathlib.Path) -> pathlib.Path:
    """The tree to build from: setuptools writes build/ and *.egg-info into the tree it builds."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", "node_modules", ".*_cache"))
    return dest


def test_the_wheel_installs_no_generic_top_level_name(tmp_path):
    source = _copy_of_tree(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("c3fs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"c3fs", "c3fs_cli"}
    assert "c3fs_cli/main.py" in names and "c3fs/web/templates/home.html" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry).decode()
    assert "c3fs = c3fs_cli.main:main" in scripts
    assert "mount.c3fs = c3fs_cli.mount_helper:main" in scripts


# the sdist: what `make` needs, and the same wheel -------------------------------------------
# Tracked files the sdist leaves out on purpose (MANIFEST.in): CI's entry point, and the
# bench's past results (figures quoted in bench/README.md, not needed to build or test).
LEFT_OUT = (".ci/", ".gitignore", "bench/results/")


def _build_sdist(source: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """The sdist of `source`, made by setuptools' PEP 517 hook (no network, no isolation)."""
    code = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=source, check=True,
                          capture_output=True, text=True, timeout=300)
    return out / proc.stdout.split()[-1]


def _wheel_names(source: pathlib.Path, out: pathlib.Path) -> list[str]:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("c3fs-*.whl")
    return sorted(zipfile.ZipFile(wheel).namelist())


def _tracked_files() -> list[str] | None:
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if proc.returncode != 0:  # not a clone (an unpacked sdist): nothing to compare with
        return None
    return [n for n in proc.stdout.decode().split("\0") if n and (ROOT / n).exists()]


def test_the_sdist_holds_what_make_needs_and_builds_the_same_wheel(tmp_path):
    tree = _copy_of_tree(tmp_path / "tree")
    sdist = _build_sdist(tree, tmp_path / "dist")
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "src", filter="data")
    for needed in ("LICENSE", "README.md", "Makefile", "pyproject.toml", "requirements.lock",
                   "requirements-build.lock", "requirements/build.in", "patches/README.md",
                   "tests/conftest.py", "bench/__main__.py", "bench/s3rver/package-lock.json"):
        assert needed in names, needed
    assert any(n.startswith("patches/pyfuse3-") and n.endswith(".patch") for n in names)
    assert not [n for n in names if n.startswith(LEFT_OUT) or "__pycache__" in n
                or n.endswith(".pyc") or n.startswith((".venv/", "build/"))]
    tracked = _tracked_files()
    if tracked is not None:
        missing = [n for n in tracked if not n.startswith(LEFT_OUT) and n not in names]
        assert not missing, f"tracked files missing from the sdist: {missing}"
    unpacked = tmp_path / "src" / top
    # Make finds every file its install needs (a missing patch or lock file is an error here)
    dry = subprocess.run(["make", "-n", "install"], cwd=unpacked, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "patch -s -p1" in dry.stdout and "--require-hashes" in dry.stdout
    assert _wheel_names(unpacked, tmp_path / "w1") == _wheel_names(tree, tmp_path / "w2")


def test_the_license_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text().splitlines()[1]
    assert "Topic :: System :: Filesystems" in project["classifiers"]
