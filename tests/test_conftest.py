"""The suite's own checks (tests/conftest.py), run on sample tests in a scratch directory."""

from __future__ import annotations

from pathlib import Path

import pytest

SAMPLES = '''
import logging

import pytest

log = logging.getLogger("c3fs.somewhere")


def test_unexpected():
    log.warning("the disk is on fire")


@pytest.mark.logs("on fire")
def test_declared():
    log.error("the disk is on fire")


def test_checks_the_log_itself(caplog):
    log.warning("the disk is on fire")
    assert "on fire" in caplog.text


def test_info_is_not_a_warning():
    log.info("all is well")


def test_other_libraries_are_not_checked():
    logging.getLogger("boto").warning("not ours")


@pytest.mark.fuse
def test_a_mount():
    pass
'''


@pytest.mark.logs("the disk is on fire")  # the samples run in this process
def test_an_unexpected_c3fs_warning_fails_its_test(pytester: pytest.Pytester,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_samples=SAMPLES)
    monkeypatch.setattr("fusehelp.fuse_works", lambda: False)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, errors=1, skipped=1)  # test_unexpected: an error
    result.stdout.fnmatch_lines(["*test_unexpected*", "*WARNING c3fs.somewhere: the disk is on fire*"])
