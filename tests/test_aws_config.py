"""Credentials the AWS way (profiles of ~/.aws, credential_process) against a moto server
that checks them, and the c3fs config file (`c3fs config show`, precedence, errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import C3FS_BIN
from s3server import MotoServer

RIGHT_SECRET = "Right/Secret+Key-ThatMustNeverBeShown-0123456789"
WRONG_SECRET = "Wrong/Secret+Key-ThatMustNeverBeShown-9876543210"
ROLE = "arn:aws:iam::123456789012:role/writer"


@pytest.fixture(scope="module")
def iam_server():
    """A moto server of its own that checks credentials; knows one user's key, returned."""
    server = MotoServer.launch()
    try:
        server.create_bucket("guarded")
        import boto3

        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        iam.create_user(UserName="ml")
        iam.put_user_policy(UserName="ml", PolicyName="all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="ml")["AccessKey"]
        iam.create_role(RoleName="writer", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}))
        iam.put_role_policy(RoleName="writer", PolicyName="all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        server.require_auth()
        yield server, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        server.stop()


def aws_home(tmp_path: Path, key_id: str, secret: str) -> dict[str, str]:
    """A HOME with ~/.aws/config and ~/.aws/credentials: profiles `team` (the right key),
    `wrong` (a key the server does not know), `process` (the right key from a
    credential_process, temporary, as SSO and roles give)."""
    aws = tmp_path / "home" / ".aws"
    aws.mkdir(parents=True)
    helper = tmp_path / "creds.py"
    answer = {"Version": 1, "AccessKeyId": key_id, "SecretAccessKey": secret,
              "Expiration": "2099-01-01T00:00:00Z"}
    helper.write_text(f"import json; print(json.dumps({answer!r}))")
    (aws / "credentials").write_text(
        f"[team]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n\n"
        f"[wrong]\naws_access_key_id = AKIAWRONGWRONGWRONG1\naws_secret_access_key = {WRONG_SECRET}\n")
    (aws / "config").write_text(
        "[profile team]\nregion = us-east-1\n\n[profile wrong]\nregion = us-east-1\n\n"
        f"[profile process]\nregion = us-east-1\ncredential_process = {sys.executable} {helper}\n\n"
        f"[profile role]\nregion = us-east-1\nrole_arn = {ROLE}\nsource_profile = team\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path / "home"), AWS_CONFIG_FILE=str(aws / "config"),
               AWS_SHARED_CREDENTIALS_FILE=str(aws / "credentials"),
               C3FS_CACHE_DIR=str(tmp_path / "cache"), C3FS_CONFIG=str(tmp_path / "none.toml"),
               AWS_EC2_METADATA_DISABLED="true")
    env.pop("C3FS_STORE", None)
    return env


def c3fs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(C3FS_BIN), *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.s3
def test_a_named_profile_works_and_a_wrong_one_is_one_line(iam_server, tmp_path: Path) -> None:
    server, key_id, secret = iam_server
    env = aws_home(tmp_path, key_id, secret)
    env["AWS_ENDPOINT_URL"] = server.endpoint
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello\n")
    store = "s3://guarded/c3"
    pushed = c3fs(env, "push", str(src), "-p", "p", "-j", "job1", "--store", store,
                  "--profile", "team")
    assert pushed.returncode == 0, pushed.stderr
    outputs = [pushed]
    for how in (["--profile", "team"], ["--profile", "process"]):  # options after the command
        listed = c3fs(env, "ls", "--json", "/jobs/", "--store", store, *how)
        assert listed.returncode == 0, listed.stderr
        assert [e["name"] for e in json.loads(listed.stdout)["entries"]] == ["job1"]
        outputs.append(listed)
    by_env = c3fs(dict(env, AWS_PROFILE="team"), "cat", "/jobs/job1/a.txt", "--store", store)
    assert by_env.returncode == 0 and by_env.stdout == "hello\n", by_env.stderr
    config = tmp_path / "c3fs.toml"
    config.write_text(f'store = "{store}"\nprofile = "team"\n')
    by_file = c3fs(dict(env, C3FS_CONFIG=str(config)), "cat", "/jobs/job1/a.txt")
    assert by_file.returncode == 0 and by_file.stdout == "hello\n", by_file.stderr

    wrong = c3fs(env, "--profile", "wrong", "-vv", "ls", "/jobs/", "--store", store)
    assert wrong.returncode == 5
    errors = [line for line in wrong.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "refused access to bucket 'guarded'" in errors[0], wrong.stderr
    assert "profile 'wrong'" in errors[0]
    missing = c3fs(env, "ls", "/jobs/", "--store", store, "--profile", "nobody")
    assert missing.returncode == 5 and missing.stderr.count("\n") == 1, missing.stderr
    assert "no AWS profile 'nobody'" in missing.stderr
    shown = c3fs(dict(env, C3FS_CONFIG=str(config)), "config", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = {r["key"]: r for r in json.loads(shown.stdout)["settings"]}
    assert rows["profile"]["value"] == "team" and rows["profile"]["source"].startswith("file ")
    assert "shared-credentials-file" in rows["credentials"]["source"]
    outputs += [wrong, missing, shown, c3fs(env, "-vv", "config", "show", "--store", store,
                                            "--profile", "process")]
    for proc in outputs:
        for secret_text in (secret, WRONG_SECRET):
            assert secret_text not in proc.stdout + proc.stderr
    logs = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert all(secret.encode() not in p.read_bytes() for p in logs)


@pytest.mark.s3
def test_an_explicit_profile_beats_keys_in_the_environment(iam_server, tmp_path: Path) -> None:
    """`--profile` ignores AWS_ACCESS_KEY_ID (as `aws --profile` does); AWS_PROFILE or the
    config file's profile do not: keys in the environment win over them."""
    server, key_id, secret = iam_server
    env = aws_home(tmp_path, key_id, secret)
    env.update(AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID="AKIABADBADBADBADBAD1",
               AWS_SECRET_ACCESS_KEY=WRONG_SECRET)
    store = "s3://guarded/c3"
    good = c3fs(env, "config", "show", "--store", store, "--profile", "team")
    assert good.returncode == 0, good.stderr
    assert "AWS profile 'team'" in good.stdout
    bad = c3fs(dict(env, AWS_PROFILE="team"), "config", "show", "--store", store)
    assert bad.returncode == 5 and "environment" in bad.stdout
    assert WRONG_SECRET not in good.stdout + good.stderr + bad.stdout + bad.stderr


@pytest.mark.s3
def test_temporary_credentials_of_a_role_and_of_a_container(iam_server, tmp_path: Path) -> None:
    """A `role_arn` profile (botocore asks STS, here the same server) and container
    credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI, as ECS and EKS give): keys with a
    session token and an expiry, handed to obstore by the refreshing provider."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import boto3

    server, key_id, secret = iam_server
    env = aws_home(tmp_path, key_id, secret)
    env["AWS_ENDPOINT_URL"] = server.endpoint
    src = tmp_path / "src"
    src.mkdir()
    (src / "r.txt").write_text("role\n")
    store = "s3://guarded/roles"
    by_role = c3fs(env, "push", str(src), "-p", "p", "-j", "byrole", "--store", store,
                   "--profile", "role", "-v")
    assert by_role.returncode == 0, by_role.stderr
    sts = boto3.client("sts", endpoint_url=server.endpoint, region_name="us-east-1",
                       aws_access_key_id=key_id, aws_secret_access_key=secret)
    assumed = sts.assume_role(RoleArn=ROLE, RoleSessionName="container")["Credentials"]
    answer = json.dumps({"AccessKeyId": assumed["AccessKeyId"],
                         "SecretAccessKey": assumed["SecretAccessKey"],
                         "Token": assumed["SessionToken"],
                         "Expiration": assumed["Expiration"].isoformat()}).encode()
    asked = []

    class Credentials(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args) -> None:
            pass

    http = HTTPServer(("127.0.0.1", 0), Credentials)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        in_container = dict(env, AWS_CONTAINER_CREDENTIALS_FULL_URI=
                            f"http://127.0.0.1:{http.server_port}/creds")
        read = c3fs(in_container, "cat", "/jobs/byrole/r.txt", "--store", store)
        shown = c3fs(in_container, "config", "show", "--store", store, "--json")
    finally:
        http.shutdown()
    assert read.returncode == 0 and read.stdout == "role\n", read.stderr
    assert asked == ["/creds"] * len(asked) and asked
    rows = {r["key"]: r for r in json.loads(shown.stdout)["settings"]}
    assert rows["credentials"]["source"] == "the AWS default chain, container-role"
    for proc in (by_role, read, shown):
        for text in (secret, assumed["SecretAccessKey"], assumed["SessionToken"]):
            assert text not in proc.stdout + proc.stderr


# the config file ------------------------------------------------------------------------------
def test_precedence_flag_env_file_default(run_cli, tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "c3fs" / "config.toml"
    config.parent.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("C3FS_CONFIG", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    config.write_text('# team defaults\nregion = "eu-west-1"\nproject = "vision"\n'
                      'disk_cache = "2GiB"\n')

    def shown(*args: str) -> dict[str, dict]:
        result = run_cli([*args, "config", "show", "--local", "--json"])
        assert result.code == 0, result.err
        data = json.loads(result.out)
        assert data["config_file"] == str(config)
        return {r["key"]: r for r in data["settings"]}

    rows = shown()
    assert rows["region"] == {"key": "region", "value": "eu-west-1", "source": f"file {config}:2"}
    assert rows["cache_dir"]["source"] == "env C3FS_CACHE_DIR"  # (the suite sets it)
    assert rows["project"]["source"] == f"file {config}:3"
    assert rows["endpoint"] == {"key": "endpoint", "value": None, "source": "default"}
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    assert shown()["region"]["source"] == "env AWS_REGION"
    rows = shown("--region", "ap-south-1", "--disk-cache", "3GiB")
    assert (rows["region"]["value"], rows["region"]["source"]) == ("ap-south-1", "--region")
    assert rows["disk_cache"]["source"] == "--disk-cache"
    assert os.environ.get("C3FS_REGION") is None  # a flag's export ends with the command
    assert shown()["region"]["source"] == "env AWS_REGION"


def test_the_config_files_store_and_project_are_used(run_cli, tmp_path: Path,
                                                     monkeypatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'store = "{tmp_path / "teamstore"}"\nproject = "vision"\n')
    monkeypatch.setenv("C3FS_CONFIG", str(config))
    monkeypatch.delenv("C3FS_STORE")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    pushed = run_cli(["push", str(src), "-j", "j1", "--json"])  # no -p: the config's project
    assert pushed.code == 0, pushed.err
    assert json.loads(pushed.out)["project"] == "vision"
    assert (tmp_path / "teamstore" / "config").exists()
    assert run_cli(["ls", "/projects/vision/jobs/"]).out == "j1/\nlatest\n"


@pytest.mark.parametrize("text, line, words", [
    ('store = "/x"\nproject = vision\n', 2, "not valid TOML"),
    ('store = "/x"\n\nendpiont = "http://x"\n', 3, "unknown key 'endpiont'"),
    ('[s3]\nendpoint = "http://x"\n', 1, "unknown key 's3'"),
    ('region = 3\n', 1, "region must be a string"),
    ('disk_cache = "lots"\n', 1, "not a size"),
])
def test_a_bad_config_file_is_one_line_naming_file_and_line(run_cli, tmp_path: Path, monkeypatch,
                                                             text: str, line: int, words: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    monkeypatch.setenv("C3FS_CONFIG", str(config))
    result = run_cli(["ls", "/jobs/"])
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1 and words in result.err
    assert f"c3fs: error: {config}:{line}: " in result.err


def test_config_show_names_the_endpoint_and_region_an_aws_profile_gives(tmp_path: Path) -> None:
    """Where requests go, when an AWS profile says it (`endpoint_url`, `region`), not
    "- default"; a profile without them: AWS's region, said to be the default."""
    env = aws_home(tmp_path, "AKIAEXAMPLEEXAMPLE01", "secret-not-shown")
    config, credentials = Path(env["AWS_CONFIG_FILE"]), Path(env["AWS_SHARED_CREDENTIALS_FILE"])
    config.write_text(config.read_text() + "\n[profile site]\nregion = eu-west-3\n"
                      "endpoint_url = http://127.0.0.1:9/\n\n[profile bare]\n")
    credentials.write_text(credentials.read_text() + "".join(
        f"\n[{name}]\naws_access_key_id = AKIAEXAMPLEEXAMPLE02\naws_secret_access_key = s\n"
        for name in ("site", "bare")))
    for profile, endpoint, region, source in (
            ("site", "http://127.0.0.1:9/", "eu-west-3", "AWS profile 'site' (from env AWS_PROFILE)"),
            ("bare", None, "us-east-1", "default (AWS's)")):
        shown = c3fs(dict(env, AWS_PROFILE=profile), "config", "show", "--store", "s3://b/c3",
                     "--local", "--json")
        assert shown.returncode == 0, shown.stderr
        rows = {r["key"]: r for r in json.loads(shown.stdout)["settings"]}
        assert (rows["endpoint"]["value"], rows["region"]["value"]) == (endpoint, region)
        assert rows["region"]["source"] == source
        if endpoint:
            assert rows["endpoint"]["source"] == source
