"""The sandbox contract: every backend must pass `SandboxContract`.

Here it runs against the fake backend and, where bubblewrap works, the local one;
tests/real/test_sandbox_docker.py runs the same class against real Docker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from upgate.cli_sandbox import sandbox_app
from upgate.errors import SandboxError, SandboxUnavailableError
from upgate.sandboxes.base import Mount, Sandbox
from upgate.sandboxes.config import (
    FakeSandboxConfig,
    LocalSandboxConfig,
    get_sandbox,
)
from upgate.sandboxes.fake import FakeSandbox
from upgate.sandboxes.pool import SandboxPool

MakeSandbox = Callable[..., Sandbox]


def make_source_tree(root: Path) -> Path:
    """A small target tree, with a .git folder that copy_in must skip."""
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "README.md").write_text("hello\n")
    (root / ".git").mkdir()
    (root / ".git" / "secret-config").write_text("token=do-not-copy\n")
    return root


class SandboxContract:
    """Behaviour every backend shares; a subclass provides the `make_sandbox` fixture."""

    def test_exec_ok(self, make_sandbox: MakeSandbox) -> None:
        result = make_sandbox().exec("echo hello")
        assert result.ok
        assert result.exit_code == 0
        assert result.stdout == "hello\n"
        assert result.limits_hit == ()

    def test_exec_failure_is_a_value(self, make_sandbox: MakeSandbox) -> None:
        result = make_sandbox().exec("echo oops >&2; exit 3")
        assert not result.ok
        assert result.exit_code == 3
        assert result.stderr == "oops\n"
        assert result.limits_hit == ()
        assert not result.timed_out

    def test_argv_is_not_reparsed_by_a_shell(self, make_sandbox: MakeSandbox) -> None:
        tricky = "a b 'c' \"d\" $HOME; echo injected"
        result = make_sandbox().exec(
            ["python3", "-c", "import sys; print(sys.argv[1])", tricky]
        )
        assert result.ok, result.summary()
        assert result.stdout == tricky + "\n"

    def test_missing_program_is_a_failed_result(self, make_sandbox: MakeSandbox) -> None:
        result = make_sandbox().exec(["no-such-program-upgate"])
        assert not result.ok
        assert result.exit_code != 0

    def test_timeout(self, make_sandbox: MakeSandbox) -> None:
        # How fast the kill lands is measured in benchmarks/bench_sandbox.py; here: the
        # command was killed before it could finish, and the result says so.
        result = make_sandbox().exec("echo begun; sleep 30; echo finished", timeout_s=1)
        assert result.timed_out
        assert "timeout" in result.limits_hit
        assert not result.ok
        assert "begun" in result.stdout
        assert "finished" not in result.stdout

    def test_background_process_does_not_hold_the_exec(self, make_sandbox: MakeSandbox) -> None:
        # An exec that waited for the background sleep would run into its own timeout.
        result = make_sandbox().exec("sleep 30 & echo started", timeout_s=20)
        assert result.ok, result.summary()
        assert not result.timed_out
        assert result.limits_hit == ()
        assert result.stdout == "started\n"

    def test_env_and_cwd(self, make_sandbox: MakeSandbox) -> None:
        sandbox = make_sandbox()
        sandbox.write_file("sub/x.txt", "x")
        result = sandbox.exec('echo "$FOO"; ls', env={"FOO": "bar baz"}, cwd="sub")
        assert result.ok, result.summary()
        assert result.stdout == "bar baz\nx.txt\n"

    def test_host_environment_is_not_inherited(
        self, make_sandbox: MakeSandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("UPGATE_TEST_SECRET", "s3cr3t-value")
        result = make_sandbox().exec("env")
        assert result.ok, result.summary()
        assert "s3cr3t-value" not in result.stdout
        assert "UPGATE_TEST_SECRET" not in result.stdout

    def test_write_read_list(self, make_sandbox: MakeSandbox) -> None:
        sandbox = make_sandbox()
        text = "quotes ' \" $(rm -rf /) `x` \\ and unicode: żółw ✓\n"
        sandbox.write_file("a/b/c.txt", text)
        sandbox.write_file("top.py", "print(1)\n")
        assert sandbox.read_file("a/b/c.txt") == text
        assert sandbox.read_file("/workspace/top.py") == "print(1)\n"
        assert sandbox.list_files() == ["a/b/c.txt", "top.py"]
        assert sandbox.list_files("a") == ["a/b/c.txt"]
        # The command sees the same files.
        result = sandbox.exec("cat a/b/c.txt")
        assert result.stdout == text

    def test_overwrite_file(self, make_sandbox: MakeSandbox) -> None:
        sandbox = make_sandbox()
        sandbox.write_file("f.txt", "first version, longer\n")
        sandbox.write_file("f.txt", "second\n")
        assert sandbox.read_file("f.txt") == "second\n"

    def test_read_missing_file(self, make_sandbox: MakeSandbox) -> None:
        with pytest.raises(FileNotFoundError):
            make_sandbox().read_file("nope.txt")

    @pytest.mark.parametrize(
        "path", ["../etc/passwd", "/etc/passwd", "a/../../x", "/workspace/../etc/hostname"]
    )
    def test_path_escape_refused(self, make_sandbox: MakeSandbox, path: str) -> None:
        sandbox = make_sandbox()
        with pytest.raises(SandboxError, match="escapes the workspace"):
            sandbox.read_file(path)
        with pytest.raises(SandboxError, match="escapes the workspace"):
            sandbox.write_file(path, "x")
        with pytest.raises(SandboxError, match="escapes the workspace"):
            sandbox.list_files(path)

    def test_symlink_out_of_the_workspace_refused(self, make_sandbox: MakeSandbox) -> None:
        sandbox = make_sandbox()
        assert sandbox.exec("ln -s /etc/hostname link").ok
        with pytest.raises(SandboxError):
            sandbox.read_file("link")

    def test_copy_in_diff_apply_copy_out(
        self, make_sandbox: MakeSandbox, tmp_path: Path
    ) -> None:
        source = make_source_tree(tmp_path / "src")
        first = make_sandbox()
        first.copy_in(source)
        assert first.list_files() == ["README.md", "pkg/mod.py"]
        assert first.diff() == ""
        edit = (
            "sed -i 's/a + b/a + b + 0/' pkg/mod.py && rm README.md && "
            "printf 'new\\n' > pkg/new.txt && printf '\\000\\001\\377' > blob.bin"
        )
        assert first.exec(edit).ok
        patch = first.diff()
        assert "+    return a + b + 0" in patch
        assert "deleted file mode" in patch
        assert "GIT binary patch" in patch
        assert "secret-config" not in patch

        second = make_sandbox()
        second.copy_in(source)
        applied = second.apply_diff(patch)
        assert applied.ok, applied.summary()
        assert second.diff() == patch
        assert second.list_files() == ["blob.bin", "pkg/mod.py", "pkg/new.txt"]

        out = tmp_path / "out"
        second.copy_out(".", out)
        assert (out / "pkg" / "mod.py").read_text().endswith("a + b + 0\n")
        assert (out / "blob.bin").read_bytes() == b"\x00\x01\xff"
        assert not (out / "README.md").exists()
        assert not (out / ".git").exists()
        second.copy_out("pkg/new.txt", tmp_path / "single.txt")
        assert (tmp_path / "single.txt").read_text() == "new\n"

    def test_bad_patch_is_a_failed_result(
        self, make_sandbox: MakeSandbox, tmp_path: Path
    ) -> None:
        sandbox = make_sandbox()
        sandbox.copy_in(make_source_tree(tmp_path / "src"))
        result = sandbox.apply_diff("--- a/nothing\n+++ b/nothing\n@@ -1 +1 @@\n-x\n+y\n")
        assert not result.ok
        assert sandbox.diff() == ""

    def test_diff_needs_a_baseline(self, make_sandbox: MakeSandbox) -> None:
        with pytest.raises(SandboxError, match="copy_in"):
            make_sandbox().diff()

    def test_output_truncation(self, make_sandbox: MakeSandbox) -> None:
        sandbox = make_sandbox(max_output_bytes=1000)
        result = sandbox.exec(["python3", "-c", "print('x' * 50000)"])
        assert result.exit_code == 0
        assert result.truncated
        assert "output" in result.limits_hit
        assert not result.ok
        assert result.stdout.startswith("x" * 1000)
        assert result.stdout.endswith("[upgate: output truncated at 1000 bytes]")
        assert len(result.stdout) < 1100

    def test_output_lines_arrive_while_the_command_runs(
        self, make_sandbox: MakeSandbox, tmp_path: Path
    ) -> None:
        # The command prints, then waits for a file that the listener creates only once it
        # saw that first line. A backend that handed lines over only at the end would leave
        # the command waiting until its timeout, and this test would fail on `ok`.
        signal_dir = tmp_path / "signal"
        signal_dir.mkdir()
        signal_dir.chmod(0o777)
        sandbox = make_sandbox(mounts=[Mount(source=signal_dir, target="/signal")])
        go = str(signal_dir / "go") if isinstance(sandbox, FakeSandbox) else "/signal/go"
        seen: list[str] = []

        def listen(line: str) -> None:
            seen.append(line)
            if line == "first":
                (signal_dir / "go").write_text("go")

        result = sandbox.exec(
            'echo first; echo on-stderr >&2; while [ ! -e "$GO" ]; do sleep 0.05; done; '
            "echo second; printf unterminated",
            env={"GO": go}, timeout_s=60, on_output=listen,
        )
        assert result.ok, result.summary()
        assert not result.timed_out
        # What exec returns does not change with a listener.
        assert result.stdout == "first\nsecond\nunterminated"
        assert result.stderr == "on-stderr\n"
        assert seen.index("first") < seen.index("second") < seen.index("unterminated")
        assert sorted(seen) == ["first", "on-stderr", "second", "unterminated"]

    def test_a_failing_listener_does_not_break_the_command(
        self, make_sandbox: MakeSandbox
    ) -> None:
        calls: list[str] = []

        def broken(line: str) -> None:
            calls.append(line)
            raise RuntimeError("listener bug")

        result = make_sandbox().exec("echo one; echo two; exit 4", on_output=broken)
        assert result.exit_code == 4
        assert result.stdout == "one\ntwo\n"
        assert calls == ["one"]  # dropped after it raised

    def test_listeners_get_no_more_than_the_output_cap(self, make_sandbox: MakeSandbox) -> None:
        sandbox = make_sandbox(max_output_bytes=1000)
        seen: list[str] = []
        result = sandbox.exec(
            ["python3", "-c", "for i in range(5000): print('line', i)"], on_output=seen.append
        )
        assert "output" in result.limits_hit
        assert seen[0] == "line 0"
        assert 0 < sum(len(line) + 1 for line in seen) <= 1000 + 200
        assert "line 4999" not in seen

    def test_cpu_seconds_of_a_busy_command_exceed_a_sleeping_one(
        self, make_sandbox: MakeSandbox
    ) -> None:
        sandbox = make_sandbox()
        busy = sandbox.exec(["python3", "-c", "x = 0\nfor i in range(4_000_000): x += i"])
        idle = sandbox.exec("sleep 1")
        assert busy.ok and idle.ok
        assert busy.cpu_s is not None
        assert idle.cpu_s is not None
        assert busy.cpu_s > 0
        assert idle.cpu_s < busy.cpu_s

    def test_start_and_stop_idempotent(self, make_sandbox: MakeSandbox) -> None:
        sandbox = make_sandbox()
        sandbox.start()
        assert sandbox.exec("true").ok
        sandbox.stop()
        sandbox.stop()
        with pytest.raises(SandboxError):
            sandbox.exec("true")

    def test_reset_empties_the_workspace_and_forgets_the_baseline(
        self, make_sandbox: MakeSandbox, tmp_path: Path
    ) -> None:
        source = make_source_tree(tmp_path / "src")
        sandbox = make_sandbox()
        sandbox.copy_in(source)
        assert sandbox.exec("echo dirt > dirt.txt && mkdir -p deep/er && touch deep/er/x").ok
        sandbox.reset()
        assert sandbox.list_files() == []
        with pytest.raises(SandboxError, match="baseline"):
            sandbox.diff()
        sandbox.copy_in(source)
        assert sandbox.list_files() == ["README.md", "pkg/mod.py"]
        assert sandbox.diff() == ""
        sandbox.stop()
        with pytest.raises(SandboxError):
            sandbox.reset()

    def test_describe_says_what_the_backend_isolates(self, make_sandbox: MakeSandbox) -> None:
        text = make_sandbox().describe()
        backend, _, detail = text.partition(":")
        assert backend.split(" ")[1] == "sandbox", text
        assert len(detail.split()) >= 8, text

    def test_pool_hands_out_fresh_workspaces(
        self, sandbox_config: Any, tmp_path: Path
    ) -> None:
        source = make_source_tree(tmp_path / "src")
        with SandboxPool(sandbox_config, size=1) as pool:
            with pool.acquire(source) as sandbox:
                assert sandbox.exec("echo dirt > dirt.txt").ok
                assert "dirt.txt" in sandbox.diff()
            with pool.acquire(source) as again:
                assert again is sandbox  # the same warm sandbox...
                assert again.list_files() == ["README.md", "pkg/mod.py"]  # ...emptied
                assert again.diff() == ""


def _bwrap_works() -> str | None:
    """None when bubblewrap can create its namespaces here, else why not."""
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    probe = subprocess.run(
        ["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--", "/bin/true"],
        capture_output=True, text=True, check=False,
    )
    return None if probe.returncode == 0 else f"bwrap cannot run here: {probe.stderr.strip()}"


@pytest.fixture(params=["fake", "local"])
def sandbox_config(request: pytest.FixtureRequest) -> Any:
    """Each host-side backend's default configuration."""
    if request.param == "local":
        reason = _bwrap_works()
        if reason is not None:
            pytest.skip(reason)
        return LocalSandboxConfig(default_timeout_s=30)
    return FakeSandboxConfig(default_timeout_s=30)


@pytest.fixture
def make_sandbox(sandbox_config: Any) -> Iterator[MakeSandbox]:
    """A factory of started sandboxes, all stopped after the test."""
    made: list[Sandbox] = []

    def make(mounts: list[Mount] | None = None, **overrides: Any) -> Sandbox:
        sandbox = get_sandbox(sandbox_config.model_copy(update=overrides), mounts or [])
        sandbox.start()
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        sandbox.stop()


class TestHostBackendsContract(SandboxContract):
    """The contract on the fake and local backends."""


def test_fake_stop_removes_its_folder() -> None:
    sandbox = get_sandbox(FakeSandboxConfig())
    sandbox.start()
    folder = sandbox.workspace_dir  # type: ignore[attr-defined]
    assert folder.is_dir()
    sandbox.stop()
    assert not folder.exists()


def test_local_without_bwrap_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(SandboxUnavailableError, match="apt-get install bubblewrap"):
        get_sandbox(LocalSandboxConfig())


def test_local_describe_names_what_it_does_not_isolate() -> None:
    if _bwrap_works() is not None:
        pytest.skip("bubblewrap cannot run here")
    text = get_sandbox(LocalSandboxConfig()).describe()
    assert "NOT isolated" in text
    assert "kernel" in text


def test_local_has_no_network_and_no_host_files(tmp_path: Path) -> None:
    if _bwrap_works() is not None:
        pytest.skip("bubblewrap cannot run here")
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host only")
    with get_sandbox(LocalSandboxConfig()) as sandbox:
        reached = sandbox.exec(
            ["python3", "-c", "import socket; socket.create_connection(('10.255.255.1', 80), 3)"]
        )
        assert not reached.ok
        assert "unreachable" in reached.stderr.lower()
        assert not sandbox.exec(["cat", str(secret)]).ok
        assert not sandbox.exec("touch /usr/x").ok


def test_config_rejects_unknown_keys() -> None:
    from pydantic import TypeAdapter, ValidationError

    from upgate.sandboxes.config import SandboxConfig

    adapter: TypeAdapter[Any] = TypeAdapter(SandboxConfig)
    assert adapter.validate_python({"type": "docker"}).memory == "512m"
    assert isinstance(adapter.validate_python({"type": "fake"}), FakeSandboxConfig)
    with pytest.raises(ValidationError, match="memroy"):
        adapter.validate_python({"type": "docker", "memroy": "1g"})


def test_cli_run_with_fake_backend(tmp_path: Path) -> None:
    source = make_source_tree(tmp_path / "src")
    runner = CliRunner()
    ok = runner.invoke(
        sandbox_app, ["run", "--backend", "fake", "--target", str(source), "--", "ls", "pkg"]
    )
    assert ok.exit_code == 0, ok.output
    assert "exit code 0" in ok.output
    assert "mod.py" in ok.output
    slow = runner.invoke(
        sandbox_app, ["run", "--backend", "fake", "--timeout", "1", "--", "sleep", "20"]
    )
    assert slow.exit_code != 0
    assert "limits hit: timeout" in slow.output


def test_environment_leak_guard_is_real() -> None:
    """The leak test above would catch a leak: a plain subprocess does see the variable."""
    env = {**os.environ, "UPGATE_TEST_SECRET": "visible"}
    out = subprocess.run(["env"], env=env, capture_output=True, text=True, check=True).stdout
    assert "UPGATE_TEST_SECRET=visible" in out


class _ResetFails(FakeSandbox):
    """The fake backend, except that emptying the workspace breaks."""

    def reset(self) -> None:
        raise SandboxError("cannot empty the workspace")


def test_the_pool_replaces_a_sandbox_that_cannot_be_reset(tmp_path: Path) -> None:
    made: list[Sandbox] = []

    def factory() -> Sandbox:
        made.append(_ResetFails(FakeSandboxConfig()))
        return made[-1]

    source = make_source_tree(tmp_path / "src")
    with SandboxPool(FakeSandboxConfig(), size=1, factory=factory) as pool:
        with pool.acquire(source) as first:
            assert first.exec("echo dirt > dirt.txt").ok
        with pool.acquire(source) as second:
            assert second is not first
            assert second.list_files() == ["README.md", "pkg/mod.py"]
    assert len(made) == 3  # each give-back replaced the one that could not be emptied
