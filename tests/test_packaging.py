"""What `pip install c3fs` puts in site-packages: only c3fs-owned top-level names."""

import pathlib
import shutil
import subprocess
import sys
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


def test_the_wheel_installs_no_generic_top_level_name(tmp_path):
    source = tmp_path / "src"  # a copy: setuptools writes build/ into the tree it builds
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", "node_modules", ".*_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("c3fs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"c3fs", "c3fs_cli"}
    assert "c3fs_cli/main.py" in names and "c3fs/web/templates/home.html" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "c3fs = c3fs_cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()
