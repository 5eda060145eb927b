"""`c3fs serve` handlers through Starlette's TestClient over a real store (LMDB, packs):
pages, filters, ranges, escaping, hostile names and artifacts, the guard, and the CLI."""

from __future__ import annotations

import re
import socket
import urllib.parse
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from webkit import (
    BIG,
    EVAL,
    EVIL_HTML,
    EVIL_SVG,
    HOSTILE_IMG_NAME,
    HOSTILE_NAME,
    PREP,
    TRAIN,
    chain,
    many_jobs,
)

from c3fs.objects.job import FAILED, SUCCEEDED, TIMEOUT
from c3fs.web import make_app

q = urllib.parse.quote


@pytest.fixture
def jobs(repo, tmp_path: Path):
    return chain(repo, tmp_path)


@pytest.fixture
def client(repo, jobs) -> TestClient:
    return TestClient(make_app(repo))


def raw(name: str | bytes, job: str = TRAIN) -> str:
    return f"/raw/jobs/{job}/{q(name, safe='/')}"


def test_home_and_job_list(client: TestClient) -> None:
    home = client.get("/")
    assert home.status_code == 200 and "vision" in home.text and "eval-team" in home.text
    page = client.get("/jobs")
    assert page.status_code == 200
    for job in (PREP, TRAIN, EVAL):
        assert f'href="/browse/jobs/{job}/"' in page.text
    assert "FAILED (SCRIPT_ERROR)" in page.text
    assert f'<a class="input" href="/browse/projects/vision/jobs/{TRAIN}/ckpt">' in page.text
    failed = client.get("/jobs", params={"status": FAILED})
    assert f'href="/browse/jobs/{EVAL}/"' in failed.text
    assert f'href="/browse/jobs/{TRAIN}/"' not in failed.text
    assert f'href="/browse/jobs/{TRAIN}/"' not in client.get("/jobs", params={"project": "eval-team"}).text
    assert client.get("/datasets").status_code == 200


def test_datasets_are_listed_and_browsed_the_same(repo, client: TestClient,
                                                  tmp_path: Path) -> None:
    from c3fs.jobs.push import push_dir
    from c3fs.objects.job import DATASET

    (tmp_path / "mini").mkdir()
    (tmp_path / "mini" / "labels.csv").write_text("id,label\n1,cat\n")
    push_dir(repo, tmp_path / "mini", "vision", "imagenet-mini", kind=DATASET)
    repo.refresh(force=True)
    listing = client.get("/datasets").text
    assert 'href="/browse/datasets/imagenet-mini/"' in listing
    assert f'href="/browse/jobs/{TRAIN}/"' not in listing
    page = client.get("/browse/projects/vision/datasets/imagenet-mini/").text
    assert "labels.csv" in page and 'href="/browse/datasets/imagenet-mini/labels.csv"' in page
    assert "<td>cat</td>" in client.get("/browse/datasets/imagenet-mini/labels.csv").text
    assert client.get("/raw/datasets/imagenet-mini/labels.csv").content == b"id,label\n1,cat\n"


def test_job_list_sorts_filters_and_pages(repo, jobs, client: TestClient) -> None:
    many_jobs(repo, jobs["prep"], 250, (SUCCEEDED, FAILED, TIMEOUT))
    repo.refresh(force=True)
    first = client.get("/jobs", params={"sort": "id"})
    ids = re.findall(r'href="/browse/jobs/(job_[a-z_0-9]+)/"', first.text)
    assert len(ids) == 100 and ids == sorted(ids) and "Page 1 of 3" in first.text
    last = client.get("/jobs", params={"sort": "id", "page": 3})
    assert len(re.findall(r'<td><a href="/browse/jobs/', last.text)) == 53
    down = re.findall(r'href="/browse/jobs/(job_[a-z_0-9]+)/"',
                      client.get("/jobs", params={"sort": "id", "order": "desc"}).text)
    assert down[0] == "job_train" and down == sorted(down, reverse=True)
    timeouts = client.get("/jobs", params={"status": TIMEOUT, "project": "bulk2"})
    assert "83 matching" in timeouts.text
    assert client.get("/jobs", params={"page": "x", "sort": "nonsense"}).status_code == 200


def test_a_listing_page_is_that_of_a_sorted_list() -> None:
    """`listing` reads the records once and keeps the rows up to its page; each page (ties
    in the order given, descending too, past the end the last) is the sorted list's."""
    import random

    from c3fs.objects.job import JobRecord
    from c3fs.web import catalog

    rng = random.Random(7)
    records = [JobRecord(id=f"j{n:04d}", project=rng.choice("abc"), root="0" * 64,
                         status=rng.choice((SUCCEEDED, FAILED, TIMEOUT)),
                         created=float(rng.randrange(50)), logical_bytes=rng.randrange(3),
                         files=rng.randrange(4)) for n in range(730)]
    for sort in catalog.SORTS:
        for descending in (False, True):
            for page, status in ((1, ""), (2, ""), (8, ""), (99, ""), (3, FAILED)):
                query = catalog.Query(sort=sort, descending=descending, page=page, status=status)
                got = catalog.listing(iter(records), query)
                matching = [r for r in records if not status or r.status == status]
                expect = sorted(matching, key=catalog.SORTS[sort], reverse=descending)
                pages = -(-len(matching) // catalog.PAGE)
                shown = min(page, pages)
                assert [r.id for r in got.rows] == [
                    r.id for r in expect[(shown - 1) * catalog.PAGE : shown * catalog.PAGE]]
                assert (got.total, got.pages) == (len(matching), pages)
                assert got.statuses == sorted({r.status for r in records})
                assert got.projects == ["a", "b", "c"]


def test_job_page_shows_record_files_thumbnails_inputs_and_consumers(client: TestClient,
                                                                       jobs) -> None:
    page = client.get(f"/browse/jobs/{TRAIN}/")
    assert page.status_code == 200
    text = page.text
    assert jobs["train"].root in text and "python train.py" in text
    assert f'href="/browse/jobs/{PREP}"' in text  # its input, as a link
    assert f'href="/browse/jobs/{EVAL}/"' in text  # its consumer (named by project path)
    assert "No logs: this job was pushed" in text
    assert 'href="/browse/jobs/job_train/plots/"' in text
    plots = client.get(f"/browse/jobs/{TRAIN}/plots/").text
    for name in ("loss_0.png", "loss_2.png", "dot.gif", "curve.svg"):
        assert f'<img src="/raw/jobs/{TRAIN}/plots/{name}?inline=1"' in plots
    evaluate = client.get(f"/browse/jobs/{EVAL}/").text
    assert "FAILED (SCRIPT_ERROR)" in evaluate and "exit code 3" in evaluate
    assert f'href="/browse/projects/vision/jobs/{TRAIN}/ckpt"' in evaluate


def test_previews_json_csv_text_and_images(client: TestClient) -> None:
    metrics = client.get(f"/browse/jobs/{TRAIN}/metrics.json").text
    assert "<td>val.acc</td><td>0.91</td>" in metrics
    assert "<td>note</td><td>&lt;b&gt;bold&lt;/b&gt;</td>" in metrics
    records = client.get(f"/browse/jobs/{EVAL}/eval.json").text
    assert "<th>split</th><th>acc</th>" in records and "<td>test</td><td>0.88</td>" in records
    history = client.get(f"/browse/jobs/{TRAIN}/history.csv").text
    assert "<th>step</th><th>loss</th>" in history and "<td>49</td>" in history
    assert "<td>51</td>" not in history and "First rows only" in history
    log = client.get(f"/browse/jobs/{TRAIN}/train.log").text
    assert "line 199\n" in log and "line 200\n" not in log and "First lines only" in log
    image = client.get(f"/browse/jobs/{TRAIN}/plots/loss_1.png").text
    assert f'<img src="/raw/jobs/{TRAIN}/plots/loss_1.png?inline=1"' in image
    assert "No preview" in client.get(f"/browse/jobs/{TRAIN}/weights.bin").text


def test_download_whole_file_and_ranges(client: TestClient, tmp_path: Path) -> None:
    whole = client.get(raw("weights.bin"))
    assert whole.status_code == 200 and len(whole.content) == BIG
    assert (tmp_path / "train" / "weights.bin").read_bytes() == whole.content
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "application/octet-stream"
    assert whole.headers["content-disposition"].startswith('attachment; filename="weights.bin"')
    part = client.get(raw("weights.bin"), headers={"Range": "bytes=1048570-2097160"})
    assert part.status_code == 206 and part.content == whole.content[1048570:2097161]
    assert part.headers["content-range"] == f"bytes 1048570-2097160/{BIG}"
    tail = client.get(raw("weights.bin"), headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == whole.content[-100:]
    open_end = client.get(raw("weights.bin"), headers={"Range": f"bytes={BIG - 5}-"})
    assert open_end.content == whole.content[-5:]
    beyond = client.get(raw("weights.bin"), headers={"Range": f"bytes={BIG}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{BIG}"
    several = client.get(raw("weights.bin"), headers={"Range": "bytes=0-1,5-6"})
    assert several.status_code == 200 and len(several.content) == BIG
    head = client.head(raw("weights.bin"))
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(BIG)
    again = client.get(raw("weights.bin"), headers={"If-None-Match": whole.headers["etag"]})
    assert again.status_code == 304
    stale = client.get(raw("weights.bin"), headers={"Range": "bytes=0-9", "If-Range": '"x"'})
    assert stale.status_code == 200 and len(stale.content) == BIG


def test_hostile_names_are_escaped_and_still_served(client: TestClient) -> None:
    page = client.get(f"/browse/jobs/{TRAIN}/").text
    assert "<script>" not in page and "alert(" not in page.replace("alert(&#34;", "")
    assert "&lt;script&gt;alert(&#34;name&#34;)&lt;script&gt;.txt" in page
    plots = client.get(f"/browse/jobs/{TRAIN}/plots/").text
    assert "<img src=x" not in plots and "onerror=alert(1)&gt;.png" in plots
    assert client.get(raw(HOSTILE_NAME)).content == b"hostile name"
    weird = client.get(raw(b"bad\xffname.txt"))
    assert weird.status_code == 200 and weird.content == b"not utf-8 in the name"
    assert "filename*=UTF-8''bad%FFname.txt" in weird.headers["content-disposition"]
    assert "bad\\xffname.txt" in page
    assert client.get(raw(HOSTILE_IMG_NAME, TRAIN).replace(TRAIN, f"{TRAIN}/plots")).status_code == 200


def test_a_name_holding_a_newline_is_browsed_and_served(repo, tmp_path: Path) -> None:
    """A file, and a folder with what is below it, whose names hold a newline: the links
    the pages make lead to them (not a bare 404)."""
    from c3fs.jobs.push import push_dir

    src = tmp_path / "nl"
    (src / "d\nir").mkdir(parents=True)
    (src / "d\nir" / "in.txt").write_bytes(b"inside")
    (src / "new\nline.txt").write_bytes(b"newline name")
    push_dir(repo, src, "p", "job_nl")
    client = TestClient(make_app(repo))
    assert client.get(raw("new\nline.txt", "job_nl")).content == b"newline name"
    folder = client.get("/browse/jobs/job_nl/" + q("d\nir") + "/")
    assert folder.status_code == 200 and "in.txt" in folder.text
    assert client.get(raw("d\nir/in.txt", "job_nl")).content == b"inside"
    job = client.get("/browse/jobs/job_nl/").text
    assert q("new\nline.txt") in job  # the page's own link


def test_hostile_svg_and_html_are_never_rendered_as_markup(client: TestClient) -> None:
    for name, body in (("evil.svg", EVIL_SVG), ("report.html", EVIL_HTML)):
        download = client.get(raw(name))
        assert download.content == body
        assert download.headers["content-type"] == "application/octet-stream"
        assert download.headers["content-disposition"].startswith("attachment;")
        assert download.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in download.headers["content-security-policy"]
    as_image = client.get(raw("evil.svg") + "?inline=1")
    assert as_image.headers["content-type"] == "image/svg+xml"
    assert "sandbox" in as_image.headers["content-security-policy"]
    html_inline = client.get(raw("report.html") + "?inline=1")
    assert html_inline.headers["content-type"] == "application/octet-stream"
    assert html_inline.headers["content-disposition"].startswith("attachment;")
    for page in (client.get(f"/browse/jobs/{TRAIN}/evil.svg").text,
                 client.get(f"/browse/jobs/{TRAIN}/report.html").text):
        assert "<script>alert" not in page and "<svg xmlns" not in page and "<html><body>" not in page
    assert f'<img src="/raw/jobs/{TRAIN}/evil.svg?inline=1"' in \
        client.get(f"/browse/jobs/{TRAIN}/evil.svg").text
    assert "&lt;script&gt;alert(&#39;html&#39;)" in client.get(f"/browse/jobs/{TRAIN}/report.html").text


def test_every_page_has_security_headers(client: TestClient) -> None:
    for url in ("/", "/jobs", f"/browse/jobs/{TRAIN}/", f"/lineage/jobs/{TRAIN}", "/balance",
                "/static/style.css", "/nowhere", f"/browse/jobs/{TRAIN}/missing"):
        response = client.get(url)
        assert response.headers["x-content-type-options"] == "nosniff", url
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "unsafe-inline" not in csp, url
    assert client.get("/static/c3fs.js").status_code == 200


def test_paths_stay_inside_the_job(client: TestClient) -> None:
    for url in (f"/browse/jobs/{TRAIN}/%2E%2E/{PREP}/", f"/raw/jobs/{TRAIN}/%2e%2e/{PREP}/data.csv",
                f"/raw/jobs/{TRAIN}/plots/%2E%2E/metrics.json", f"/browse/jobs/{TRAIN}/escape/x",
                f"/raw/jobs/{TRAIN}/escape", f"/raw/jobs/{TRAIN}/plots", "/raw/jobs/job_none/x",
                "/lineage/jobs/job_none", "/lineage/nothing/x"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "root:" not in response.text, url
    link = client.get(f"/browse/jobs/{TRAIN}/escape")
    assert link.status_code == 200 and "never followed" in link.text
    assert "../../../../etc/passwd" in link.text


def test_read_only_by_construction(client: TestClient) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        response = client.request(method, f"/raw/jobs/{TRAIN}/metrics.json")
        assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"
    head = client.head("/jobs")
    assert head.status_code == 200 and head.content == b""


def test_token_as_bearer_or_cookie(repo, jobs) -> None:
    client = TestClient(make_app(repo, token="s3cret"))
    assert client.get("/jobs").status_code == 401
    assert client.get("/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/jobs", headers={"Cookie": "c3fs_token=nope"}).status_code == 401
    login = client.get("/jobs?token=s3cret&status=FAILED", follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/jobs?status=FAILED"
    assert "HttpOnly" in login.headers["set-cookie"]
    assert client.get("/jobs").status_code == 200  # the client kept the cookie
    assert client.get("/jobs?token=wrong", headers={"Cookie": "c3fs_token=x"}).status_code == 401


def test_lineage_graph_of_the_three_stage_chain(client: TestClient) -> None:
    middle = client.get(f"/lineage/jobs/{TRAIN}").text
    svg = middle[middle.index("<svg"):middle.index("</svg>")]
    for job in (PREP, TRAIN, EVAL):
        assert f'data-ref="{job}"' in svg
    assert svg.count('class="edge"') == 2
    assert f'href="/lineage/jobs/{EVAL}"' in svg and "FAILED (SCRIPT_ERROR)" in svg
    first = client.get(f"/lineage/jobs/{PREP}").text
    assert first.count('class="edge"') == 2 and f'data-ref="{EVAL}"' in first
    last = client.get(f"/lineage/jobs/{EVAL}").text
    assert last.count('class="edge"') == 2 and f'data-ref="{PREP}"' in last


def test_balance_page_charts_usage_per_project(client: TestClient) -> None:
    page = client.get("/balance")
    assert page.status_code == 200
    assert page.text.count('class="series"') == 2  # vision and eval-team
    assert "<title>vision</title>" in page.text and "<title>eval-team</title>" in page.text
    assert client.get("/balance?measure=logical").text.count('class="series"') == 2


@pytest.mark.logs("is corrupt")
def test_damaged_data_is_an_error_page_never_wrong_bytes(repo, client: TestClient,
                                                          store_env) -> None:
    """Damage within the first block: the status is not sent yet, so it is a 500 page. (The
    first chunk is damaged: where a third of the way into a pack falls in the file depends on
    the order parallel ingest stored its chunks in, past the first block in some runs.)"""
    from c3fs.vfs import Vfs

    node = Vfs(repo).resolve(f"/jobs/{TRAIN}/weights.bin")
    loc = repo.index.lookup(node.entry.chunk_ids()[0])
    pack = store_env.store / "packs" / loc.pack_id[:2] / loc.pack_id
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    response = client.get(raw("weights.bin"))
    assert response.status_code == 500
    assert "is corrupt" in response.text or "damaged" in response.text


def test_damage_after_the_first_block_cuts_the_download_short(repo, jobs, store_env,
                                                               caplog) -> None:
    """Past the first block the status is sent: a damaged chunk ends the body early (the
    client sees fewer bytes than Content-Length), every byte sent is right."""
    from c3fs.vfs import Vfs

    node = Vfs(repo).resolve(f"/jobs/{TRAIN}/weights.bin")
    loc = repo.index.lookup(node.entry.chunk_ids()[-1])
    pack = store_env.store / "packs" / loc.pack_id[:2] / loc.pack_id
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    client = TestClient(make_app(repo), raise_server_exceptions=False)
    right = (store_env.root / "train" / "weights.bin").read_bytes()
    with caplog.at_level("ERROR"):
        response = client.get(raw("weights.bin"))
    assert response.headers["content-length"] == str(BIG)
    assert 0 < len(response.content) < BIG and response.content == right[:len(response.content)]
    assert "stopped at byte" in caplog.text and "is corrupt" in caplog.text
    part = client.get(raw("weights.bin"), headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == right[:100]


# the command ------------------------------------------------------------------------------
def test_serve_refuses_a_bad_bind_with_one_line(run_cli, store_env) -> None:
    assert "--bind" in run_cli(["serve", "--bind", "nonsense"]).assert_one_line_error()
    assert "--bind" in run_cli(["serve", "--bind", "127.0.0.1:99999"]).assert_one_line_error()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        line = run_cli(["serve", "--bind", f"127.0.0.1:{port}"]).assert_one_line_error()
        assert "cannot listen" in line
    finally:
        busy.close()


def test_serve_warns_when_it_listens_beyond_loopback(caplog) -> None:
    from c3fs_cli.serve import parse_bind

    with caplog.at_level("WARNING", logger="c3fs"):
        assert parse_bind("127.0.0.1:8484") == ("127.0.0.1", 8484)
        assert parse_bind("[::1]:0") == ("::1", 0)
        assert parse_bind("localhost:1") == ("localhost", 1)
        assert not caplog.records
        assert parse_bind("0.0.0.0:8484") == ("0.0.0.0", 8484)
    assert "anyone who can reach it" in caplog.text and "--token" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="c3fs"):
        parse_bind("192.0.2.7:80", token="t")
    assert "anyone who can reach it" in caplog.text and "--token" not in caplog.text


def test_serve_help_has_examples(run_cli) -> None:
    result = run_cli(["serve", "--help"]).ok()
    assert "Examples:" in result.out and "--token" in result.out


def test_job_page_shows_the_last_lines_of_its_logs_and_serves_them_whole(repo, c3fs_bin,
                                                                         tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    script = "for i in $(seq 1 80); do echo out-$i; done; echo '<script>x</script>' >&2"
    assert c3fs_bin("run", "-p", "p", "-j", "logged", "--", "sh", "-c", script, cwd=work).code == 0
    (tmp_path / "src").mkdir()
    assert c3fs_bin("push", str(tmp_path / "src"), "-p", "p", "-j", "pushed").code == 0
    client = TestClient(make_app(repo))
    page = client.get("/browse/jobs/logged/").text
    assert "out-80" in page and "out-31\n" in page and "out-30\n" not in page  # the last 50
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x" not in page
    whole = client.get("/logs/jobs/logged/stdout")
    assert whole.status_code == 200 and whole.text.count("out-") == 80
    assert whole.headers["content-disposition"].startswith("attachment")
    assert whole.headers["x-content-type-options"] == "nosniff"
    assert client.get("/logs/jobs/logged/environ").status_code == 404
    assert client.get("/logs/nope/logged/stdout").status_code == 404
    assert "No logs" in client.get("/browse/jobs/pushed/").text
