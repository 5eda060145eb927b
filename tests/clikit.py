"""The result of one `c3fs` invocation, shared by the main suite and tests/reliability."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def assert_one_line_error(self) -> str:
        """Exit code != 0 and stderr is exactly one `c3fs: error: ...` line, no traceback."""
        assert self.code != 0, f"expected a failure, got exit 0; stderr: {self.err!r}"
        assert "Traceback" not in self.err, self.err
        assert len(self.err_lines) == 1, f"expected one error line, got: {self.err!r}"
        assert self.err_lines[0].startswith("c3fs: error: "), self.err
        return self.err_lines[0]

    one_line_error = assert_one_line_error

    def ok(self) -> CliResult:
        assert self.code == 0, f"exit {self.code}\nstdout: {self.out}\nstderr: {self.err}"
        return self
