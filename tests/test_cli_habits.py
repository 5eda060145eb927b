"""CLI habits: global options anywhere, -q and -v, cat, the exit-code table, one `ls --json`
schema, IEC units, shell completion from the local index."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import C3FS_BIN

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def pushed(run_cli, tmp_path: Path) -> Path:
    """Job `j1` of project `vision`: a.txt, sub/b.bin, sub/deep/c.txt, link -> a.txt."""
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "deep" / "c.txt").write_text("gamma\n")
    (src / "link").symlink_to("a.txt")
    run_cli(["push", str(src), "-p", "vision", "-j", "j1"]).ok()
    return src


# global options ----------------------------------------------------------------------------
def test_global_options_go_before_or_after_the_subcommand(run_cli, pushed, store_env,
                                                          monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("C3FS_STORE")
    store = str(store_env.store)
    assert run_cli(["--store", store, "ls", "/jobs/"]).ok().out == "j1/\n"
    assert run_cli(["ls", "--store", store, "/jobs/"]).ok().out == "j1/\n"
    assert run_cli(["ls", "/jobs/", "--store", store]).ok().out == "j1/\n"
    assert run_cli(["data", "ls", "/jobs/", "--store", store]).ok().out == "j1/\n"
    # a later flag wins, wherever it is; a wrong one is an error, not a new store
    missing = run_cli(["--store", store, "ls", "/jobs/", "--store", str(tmp_path / "nope")])
    assert missing.code == 5 and "no c3fs store" in missing.assert_one_line_error()
    # `run` keeps everything after its command for the command
    work = tmp_path / "work"
    work.mkdir()
    ran = run_cli(["run", "--store", store, "-q", "-C", str(work), "--", "echo", "-q", "--store"])
    assert ran.code == 0, ran.err
    bad = run_cli(["ls", "-q", "-v", "/jobs/", "--store", store])
    assert bad.code == 2 and "-q and -v" in bad.err


def test_quiet_silences_all_but_errors(run_cli, pushed, tmp_path: Path) -> None:
    pushed_again = run_cli(["push", str(pushed), "-p", "vision", "-j", "j2", "-q"]).ok()
    assert pushed_again.out == "j2\n" and pushed_again.err == ""  # the result, no summary
    assert run_cli(["push", str(pushed), "-p", "vision", "-j", "j3"]).ok().err != ""
    assert run_cli(["-q", "cp", "-r", "/jobs/j1", str(tmp_path / "out")]).ok().err == ""
    assert (tmp_path / "out" / "sub" / "deep" / "c.txt").read_text() == "gamma\n"
    assert run_cli(["pull", "-q", "-d", str(tmp_path / "p")]).ok().err == ""
    assert run_cli(["verify", "-q"]).ok().err == ""
    assert run_cli(["rm", "j3", "-q"]).ok().err == ""
    failed = run_cli(["cat", "-q", "/jobs/nope/x"])
    assert failed.code == 3 and failed.err.startswith("c3fs: error: ")


def test_verbose_adds_per_file_lines_and_timings(run_cli, pushed, tmp_path: Path) -> None:
    push = run_cli(["push", str(pushed), "-p", "vision", "-j", "j2", "-v"]).ok()
    assert re.search(r"info: stored .*/sub/b\.bin \(293\.0 KiB, \d+ chunks\)", push.err), push.err
    assert "info: stored " + str(pushed / "a.txt") + " (6 B)" in push.err
    assert re.search(r"info: push j2: 3 files, .* in \d+\.\d+ s", push.err)
    cp = run_cli(["cp", "-r", "/jobs/j1", str(tmp_path / "out"), "-v"]).ok()
    for name in ("a.txt", "sub/b.bin", "sub/deep/c.txt"):
        assert f"info: copied /jobs/j1/{name} (" in cp.err, cp.err
    assert "info: linked /jobs/j1/link" in cp.err
    assert re.search(r"info: cp /jobs/j1: 3 files copied in \d+\.\d+ s, .*iB/s", cp.err)
    again = run_cli(["cp", "-r", "/jobs/j1", str(tmp_path / "out"), "-v"]).ok()
    assert "info: unchanged /jobs/j1/a.txt" in again.err
    pull = run_cli(["-v", "pull", "j1", "-d", str(tmp_path / "p")]).ok()
    assert "info: copied /jobs/j1/sub/b.bin (293.0 KiB)" in pull.err
    assert re.search(r"info: pull: 1 job in \d+\.\d+ s", pull.err)
    ls = run_cli(["ls", "-v", "/jobs/"]).ok()
    assert re.search(r"info: ls /jobs/: 2 names read in \d+\.\d+ s", ls.err), ls.err
    assert "index synced in" in ls.err
    assert "info:" not in run_cli(["ls", "/jobs/"]).ok().err


# cat ------------------------------------------------------------------------------------------
def test_cat_writes_files_like_cp_to_stdout(pushed, c3fs_bin) -> None:
    both = subprocess.run([str(C3FS_BIN), "cat", "/jobs/j1/a.txt", "/projects/vision/jobs/j1/sub/b.bin"],
                          capture_output=True, timeout=60)
    assert both.returncode == 0, both.stderr
    assert both.stdout == b"alpha\n" + (pushed / "sub" / "b.bin").read_bytes()
    dash = subprocess.run([str(C3FS_BIN), "cp", "/jobs/j1/sub/b.bin", "-"], capture_output=True,
                          timeout=60)
    assert dash.stdout == (pushed / "sub" / "b.bin").read_bytes()
    mixed = c3fs_bin("cat", "/jobs/j1/sub", "/jobs/j1/a.txt", "/jobs/j1/missing")
    assert mixed.out == "alpha\n"  # as cat(1): the others are still written
    assert mixed.code == 3, mixed.err  # the first failure's code
    lines = mixed.err_lines
    assert len(lines) == 2 and "is a directory" in lines[0] and "missing" in lines[1]
    link = c3fs_bin("cat", "/jobs/j1/link")
    assert link.code == 4 and "symlink" in link.assert_one_line_error()  # as cp LINK -
    assert c3fs_bin("cat", "a.txt").code == 2


# job ids ----------------------------------------------------------------------------------------
def test_a_job_id_may_end_with_a_slash(run_cli, pushed, tmp_path: Path) -> None:
    """As a shell completes the directory a pull made (./j1/), and `ls /jobs/` prints ids."""
    work = tmp_path / "work"
    work.mkdir()
    run_cli(["run", "-q", "-p", "vision", "-j", "r1", "-C", str(work), "--", "echo", "hi"]).ok()
    pulled = run_cli(["pull", "j1/", "/jobs/r1/", "-d", str(tmp_path / "p"), "--json"]).ok()
    assert [p["job"] for p in json.loads(pulled.out)] == ["j1", "r1"]
    assert run_cli(["logs", "r1/"]).ok().out == "hi\n"
    assert run_cli(["logs", "/jobs/r1/"]).ok().out == "hi\n"
    lineage = json.loads(run_cli(["lineage", "j1/", "--json"]).ok().out)
    assert lineage["start"] == ["job", "j1"]
    assert run_cli(["diff", "j1/", "/jobs/j1/"]).code == 0
    assert run_cli(["tag", "j1/", "best"]).ok().out.strip() == "/projects/vision/tags/best -> j1"
    assert "is not a job" in run_cli(["logs", "/"]).assert_one_line_error()
    from c3fs.api import Store

    with Store() as store:
        assert store.record("j1/").id == "j1"
        assert [p.record.id for p in store.pull("j1/", tmp_path / "api")] == ["j1"]


@pytest.mark.parametrize("argv", [["cat", "/jobs/j1/a.txt", "/jobs/j1/sub/b.bin"],
                                  ["cp", "/jobs/j1/sub/b.bin", "-"], ["ls", "/jobs/many"],
                                  ["ls", "-l", "/jobs/many"], ["ls", "--json", "/jobs/many"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(run_cli, pushed, tmp_path: Path,
                                                          argv: list[str]) -> None:
    """As cat(1) in `cat FILE | head -c 10`: no message, exit 141 (128 + SIGPIPE, as a shell
    reports cat's) once the pipe is closed. Each output is written in several writes, each
    more than a pipe holds: CPython returns a short count, no error, from the write the
    reader left during (sys.stdout then loses the rest unsaid), the next one fails."""
    many = tmp_path / "many"
    many.mkdir()
    for n in range(9000):
        (many / f"{n:06d}-{'x' * 60}").touch()
    run_cli(["push", str(many), "-p", "vision", "-j", "many", "-q"]).ok()
    proc = subprocess.Popen([str(C3FS_BIN), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141, err
    assert err == b""


def test_a_command_started_with_stdout_closed_writes_nothing_into_its_files(
        run_cli, tmp_path: Path) -> None:
    """`c3fs push DIR >&- 2>&-`, then `c3fs ls >&-`: no traceback (sys.stdout was None), and
    nothing printed lands in a file the command opened in the closed stream's place (the
    store verifies, the listing's exit is 0)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(300_000))

    def closed(*fds: int):
        return lambda: [os.close(fd) for fd in fds]

    push = subprocess.run([str(C3FS_BIN), "push", str(src), "-p", "p", "-j", "j1", "-v"],
                          preexec_fn=closed(1, 2), check=False)
    assert push.returncode == 0
    listing = subprocess.run([str(C3FS_BIN), "ls", "-l", "/jobs/j1"], preexec_fn=closed(1),
                             stderr=subprocess.PIPE, check=False)
    assert listing.returncode == 0 and listing.stderr == b"", listing.stderr
    run_cli(["verify"]).ok()
    out = tmp_path / "out"
    run_cli(["cp", "-r", "/jobs/j1", str(out)]).ok()
    assert (out / "f").read_bytes() == (src / "f").read_bytes()


@pytest.mark.parametrize("job_code", [0, 3])
def test_run_into_a_pipe_its_reader_leaves_exits_with_the_jobs_code(
        run_cli, tmp_path: Path, job_code: int) -> None:
    """`c3fs run -- CMD | head -n1`: the job's code (README: run exits with it), not 141,
    which a script takes for a harmless SIGPIPE, for a job that failed."""
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen(
        [str(C3FS_BIN), "run", "-p", "p", "-C", str(work), "--", "sh", "-c",
         f"yes | head -n 200000; exit {job_code}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == job_code, err
    assert b"Traceback" not in err


def test_only_stdouts_own_reader_gone_is_quiet(monkeypatch) -> None:
    """A broken pipe is exit 141, no message, only when stdout's reader left; stdout still
    read, it is an error (another pipe or socket of the command's)."""
    from c3fs_cli import main

    read_end, write_end = os.pipe()
    with open(write_end, "w") as stdout:
        monkeypatch.setattr("sys.stdout", stdout)
        assert not main._stdout_gone()
        os.close(read_end)
        assert main._stdout_gone()


def test_rich_output_to_a_gone_reader_ends_as_the_rest(monkeypatch) -> None:
    from c3fs_cli import output

    with pytest.raises(BrokenPipeError):  # not rich's own SystemExit(1)
        output._console("out").on_broken_pipe()


# help ---------------------------------------------------------------------------------------------
def test_every_command_and_group_shows_examples(run_cli) -> None:
    import click
    from c3fs_cli.main import app

    def commands(group: click.Group, prefix: list[str]):
        for name, command in group.commands.items():
            yield [*prefix, name]
            if isinstance(command, click.Group):
                yield from commands(command, [*prefix, name])

    for argv in commands(app, []):
        assert "Examples:" in run_cli([*argv, "--help"]).ok().out, argv


# exit codes -----------------------------------------------------------------------------------
# exit codes -----------------------------------------------------------------------------------
def code_constants() -> set[int]:
    import c3fs.errors as errors

    return {cls.exit_code for cls in vars(errors).values()
            if isinstance(cls, type) and issubclass(cls, errors.C3fsError)}


def test_the_exit_code_table_matches_the_code(run_cli) -> None:
    from c3fs_cli.main import EXIT_CODES

    tabled = {code for code, _ in EXIT_CODES}
    assert tabled == code_constants() | {0, 130, 141}  # Ctrl-C, stdout closed (c3fs_cli.main)
    help_text = run_cli(["--help"]).ok().out
    readme = (ROOT / "README.md").read_text()
    for code, text in EXIT_CODES:
        assert re.search(rf"^\s+{code}\s+{re.escape(text)}$", help_text, re.M), (code, help_text)
        assert f"| {code} | {text} |" in readme, f"README's exit-code table lacks {code}"
    assert len(re.findall(r"^\| \d+ \| ", readme, re.M)) == len(EXIT_CODES)


# ls --json -----------------------------------------------------------------------------------
def test_one_ls_json_schema_for_every_path(run_cli, pushed) -> None:
    run_cli(["cp", "-r", str(pushed), "/projects/vision/datasets/ds"]).ok()
    fields = {"name", "path", "type", "mode", "size", "mtime_ns"}
    seen = {}
    for path in ("/", "/jobs/", "/jobs/j1", "/jobs/j1/sub", "/jobs/j1/a.txt", "/datasets/",
                 "/projects/", "/projects/vision/", "/projects/vision/jobs/"):
        listing = json.loads(run_cli(["ls", "--json", path]).ok().out)
        assert set(listing) == {"schema", "path", "entries"} and listing["schema"] == 1
        for entry in listing["entries"]:
            assert fields <= set(entry) <= fields | {"record", "target"}, (path, entry)
            assert isinstance(entry["mode"], int) and entry["type"] in ("file", "dir", "symlink")
            seen[entry["path"]] = entry
    assert seen["/jobs/j1"]["record"]["id"] == "j1" and seen["/jobs/j1"]["type"] == "dir"
    assert seen["/datasets/ds"]["record"]["kind"] == "dataset"
    assert seen["/jobs/j1/a.txt"]["mode"] == 0o644 and seen["/jobs/j1/a.txt"]["size"] == 6
    assert seen["/jobs/j1/link"]["target"] == "a.txt"
    assert seen["/projects/vision/jobs/latest"]["target"] == "j1"
    assert "record" not in seen["/jobs/j1/sub/b.bin"]


def exact(entry: dict, key: str) -> bytes:
    """A name, path or target of `--json` output as bytes: `{key}_b64`, else `{key}`."""
    if key + "_b64" in entry:
        return base64.b64decode(entry[key + "_b64"])
    return entry[key].encode()


def test_json_listings_keep_names_that_are_not_utf8_exact(run_cli, tmp_path: Path) -> None:
    src, changed = tmp_path / "w", tmp_path / "w2"
    names = {b"a\xff": b"NON-UTF8\n", b"a\\xff": b"LITERAL\n", "é".encode(): b"E\n"}
    for top in (src, changed):
        top.mkdir()
        for name, body in names.items():
            Path(os.fsdecode(os.fsencode(top) + b"/" + name)).write_bytes(body)
        os.symlink(b"t\xfd", os.fsencode(top) + b"/ln")
    Path(os.fsdecode(os.fsencode(changed) + b"/a\xff")).write_bytes(b"other\n")
    run_cli(["push", str(src), "-p", "p", "-j", "jw"]).ok()
    run_cli(["push", str(changed), "-p", "p", "-j", "jw2"]).ok()
    listing = json.loads(run_cli(["ls", "--json", "/jobs/jw"]).ok().out)
    entries = {exact(e, "name"): e for e in listing["entries"]}
    assert sorted(entries) == sorted([*names, b"ln"])  # two names, told apart
    assert {exact(e, "path") for e in entries.values()} == {b"/jobs/jw/" + n for n in entries}
    assert entries[b"a\xff"]["name_b64"] == base64.b64encode(b"a\xff").decode()
    assert exact(entries[b"ln"], "target") == b"t\xfd"
    for valid in (b"a\\xff", "é".encode()):  # UTF-8: as before, no other field
        assert entries[valid]["name"] == valid.decode()
        assert not {"name_b64", "path_b64"} & set(entries[valid])
    one = json.loads(run_cli(["ls", "--json", os.fsdecode(b"/jobs/jw/a\xff")]).ok().out)
    assert exact(one, "path") == b"/jobs/jw/a\xff"
    assert [exact(e, "name") for e in one["entries"]] == [b"a\xff"]
    diff = run_cli(["diff", "--json", "jw", "jw2"])
    assert diff.code == 1, diff.err
    assert [exact(c, "path") for c in json.loads(diff.out)["changed"]] == [b"a\xff"]
    out = tmp_path / "out"
    out.mkdir()
    run_cli(["cp", os.fsdecode(b"/jobs/jw/a\xff"), f"{out}/"]).ok()  # into a dir: its name
    assert os.listdir(os.fsencode(out)) == [b"a\xff"]                # as stored, not as shown
    assert Path(os.fsdecode(os.fsencode(out) + b"/a\xff")).read_bytes() == b"NON-UTF8\n"


# units ----------------------------------------------------------------------------------------
def test_progress_bars_count_in_iec_units_as_summaries_do() -> None:
    from c3fs_cli import output
    from rich.console import Console
    from rich.progress import Progress

    text = io.StringIO()
    console = Console(file=text, force_terminal=True, width=200, color_system=None)
    with Progress(*output.progress_columns(), console=console, auto_refresh=False) as bar:
        task = bar.add_task("cp", total=3 * 1024 * 1024)
        bar.advance(task, 1536 * 1024)
        bar.refresh()
    shown = text.getvalue()
    assert "1.5/3.0 MiB" in shown, shown
    assert not re.search(r"\d (k|M|G)B\b", shown)
    assert output.human(3 * 1024 * 1024) == "3.0 MiB"


def test_a_bar_of_a_copy_shows_files_done_of_their_total() -> None:
    from c3fs_cli import output
    from rich.console import Console
    from rich.progress import Progress

    text = io.StringIO()
    console = Console(file=text, force_terminal=True, width=200, color_system=None)
    with Progress(*output.progress_columns(files=40), console=console, auto_refresh=False) as bar:
        task = bar.add_task("pull", total=3 * 1024 * 1024, files_done=0)
        bar.update(task, advance=1536 * 1024, files_done=12)
        bar.refresh()
    shown = text.getvalue()
    assert "1.5/3.0 MiB" in shown and "12/40 files" in shown, shown


# completion -----------------------------------------------------------------------------------
def complete(words: str, env: dict[str, str] | None = None, timeout: float = 30) -> list[str]:
    """What the bash completion protocol answers for the command line `words` (the last
    word being completed)."""
    parts = words.split(" ")
    proc = subprocess.run([str(C3FS_BIN)], capture_output=True, text=True, timeout=timeout,
                          env=dict(env or os.environ, _C3FS_COMPLETE="bash_complete",
                                   COMP_WORDS=words, COMP_CWORD=str(len(parts) - 1)))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines() if line.startswith("plain,")]


def test_completion_of_paths_and_job_ids_from_the_index(run_cli, pushed) -> None:
    run_cli(["push", str(pushed / "sub"), "-p", "nlp", "-j", "j2"]).ok()
    assert complete("c3fs ls ") == ["/jobs/", "/projects/", "/datasets/"]
    assert complete("c3fs ls /j") == ["/jobs/"]
    assert complete("c3fs ls /jobs/") == ["/jobs/j1/", "/jobs/j2/"]
    assert complete("c3fs cat /jobs/j1/s") == ["/jobs/j1/sub/"]
    assert complete("c3fs cat /jobs/j1/sub/deep/") == ["/jobs/j1/sub/deep/c.txt"]
    assert complete("c3fs ls /projects/") == ["/projects/nlp/", "/projects/vision/"]
    assert complete("c3fs ls /projects/nlp/jobs/") == ["/projects/nlp/jobs/j2/",
                                                      "/projects/nlp/jobs/latest"]
    assert complete("c3fs pull j") == ["j1", "j2"]
    assert complete("c3fs lineage j2") == ["j2"]
    assert complete("c3fs cp /jobs/j2/ ") == []  # (a local file: the shell completes it)
    assert complete("c3fs cp /jobs/j2/ /tm") == []
    assert complete("c3fs cp /jo") == ["/jobs/"]
    assert "completion" in complete("c3fs comp")


def test_the_bash_script_completes_in_bash(pushed) -> None:
    script = subprocess.run([str(C3FS_BIN), "completion", "bash"], capture_output=True,
                            text=True, timeout=30, check=True).stdout
    for shell in ("zsh", "fish"):
        source = subprocess.run([str(C3FS_BIN), "completion", shell], capture_output=True,
                                text=True, timeout=30, check=True).stdout
        assert "_C3FS_COMPLETE" in source
    probe = (f'PATH={C3FS_BIN.parent}:$PATH; {script}\n'
             'COMP_WORDS=(c3fs ls /jobs/j); COMP_CWORD=2; _c3fs_completion c3fs 2>/dev/null\n'
             'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["/jobs/j1/"], done.stdout + done.stderr


@pytest.mark.s3
def test_completion_never_asks_a_remote_store(run_cli, s3_url: str, s3_server, tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("f")
    run_cli(["push", str(src), "-p", "p", "-j", "remote1", "--store", s3_url]).ok()
    env = dict(os.environ, C3FS_STORE=s3_url + "/")
    s3_server.pause()  # any request would now hang until the deadline
    try:
        assert complete("c3fs ls /jobs/", env, timeout=20) == ["/jobs/remote1/"]
        assert complete("c3fs ls /jobs/remote1/", env, timeout=20) == []  # files: local only
        assert complete("c3fs pull rem", env, timeout=20) == ["remote1"]
    finally:
        s3_server.resume()


@pytest.mark.parametrize("count", [0, 1, 1023, 1024, 1025, 2500])
def test_streamed_json_lists_are_the_text_of_the_whole_document(count, monkeypatch,
                                                                 capsys) -> None:
    """`ls --json` and `diff --json` write their lists a batch at a time: the text is
    exactly `json.dumps` of the whole document, at and across batch boundaries."""
    from c3fs_cli import output

    items = [{"path": f"d/{n}", "size": n, "none": None, "deep": {"z": [1, "é"], "a": 2}}
             for n in range(count)]
    fields = {"a": "x", "z": [1, {"b": 2}], "trees_read": 3}
    counts = output.print_json_lists(fields, {"removed": iter(items[:2]), "added": iter(items),
                                              "changed": iter(())})
    assert counts == {"added": count, "removed": min(count, 2), "changed": 0}
    whole = {**fields, "added": items, "removed": items[:2], "changed": []}
    assert capsys.readouterr().out == json.dumps(whole, indent=2, sort_keys=True) + "\n"
