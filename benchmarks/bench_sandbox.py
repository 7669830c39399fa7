"""Sandbox benchmark: cold start, warm exec latency, evaluation throughput, pool vs no pool,
and how fast the limits act (a timeout's kill, a background process, a refused connection,
an output flood): the wall-clock side of what the contract tests check by outcome.

Every figure is also given as a ratio to a plain host subprocess doing the same thing in
the same run, so numbers from different machines compare.

    python benchmarks/bench_sandbox.py [--backend docker|local|fake] [--evals 8] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from upgate.sandboxes.config import (
    DockerSandboxConfig,
    FakeSandboxConfig,
    LocalSandboxConfig,
    get_sandbox,
)
from upgate.sandboxes.pool import SandboxPool

EVAL_COMMAND = ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
TINY_COMMAND = ["python3", "-c", "pass"]


def make_project(root: Path) -> Path:
    """A tiny project with a module and a few tests: one 'evaluation' runs its tests."""
    (root / "tests").mkdir(parents=True)
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "tests" / "test_calc.py").write_text(
        "import sys, os\nsys.path.insert(0, os.getcwd())\nfrom calc import add\n\n"
        + "".join(f"def test_add_{i}():\n    assert add({i}, 1) == {i + 1}\n\n" for i in range(20))
    )
    return root


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of `fn` takes."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


HOST_PYTHON: list[str] = [sys.executable]


def baseline_python() -> str:
    """A host venv with exactly the sandbox image's packages (pytest), so runs compare."""
    from upgate.sandboxes.images import cache_dir, prepare_wheelhouse

    venv = cache_dir() / "bench-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        wheels = prepare_wheelhouse("sandbox")
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links",
             str(wheels), "-r", str(wheels / "requirements.txt")],
            check=True,
        )
    return str(python)


def host_run(argv: list[str], cwd: Path | None = None) -> None:
    """The baseline: the same command as a plain host subprocess."""
    if argv[0] == "python3":
        argv = [HOST_PYTHON[0], *argv[1:]]
    subprocess.run(argv, cwd=cwd, capture_output=True, check=True)


def host_eval(project: Path) -> None:
    """The baseline evaluation: copy the project to a temp dir and run its tests."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "p"
        shutil.copytree(project, work)
        host_run(EVAL_COMMAND, cwd=work)


def run_parallel(task: Callable[[], Any], count: int, workers: int) -> float:
    """Seconds for `count` calls of `task` on `workers` threads."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(task) for _ in range(count)]:
            future.result()
    return time.perf_counter() - started


def limit_figures(config: Any) -> dict[str, float]:
    """Seconds each limit takes to act; the tests check only that it acted."""
    figures: dict[str, float] = {}
    with get_sandbox(config) as sandbox:
        sandbox.exec(TINY_COMMAND)
        started = time.perf_counter()
        result = sandbox.exec("sleep 100", timeout_s=2)
        assert result.timed_out, result.summary()
        figures["timeout_2s_kill_lag_s"] = time.perf_counter() - started - 2
        started = time.perf_counter()
        result = sandbox.exec("sleep 30 & echo started", timeout_s=20)
        assert result.ok, result.summary()
        figures["background_process_exec_s"] = time.perf_counter() - started
        started = time.perf_counter()
        result = sandbox.exec("yes", timeout_s=2)
        assert result.timed_out, result.summary()
        figures["output_flood_2s_kill_lag_s"] = time.perf_counter() - started - 2
        probe = "import socket\ntry:\n    socket.create_connection(('10.255.255.1', 80), 5)\n" \
                "except OSError:\n    pass\n"
        started = time.perf_counter()
        sandbox.exec(["python3", "-c", probe])
        figures["blocked_connect_s"] = time.perf_counter() - started
    return figures


def main() -> int:
    """Run the benchmark and print (and optionally save) its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["docker", "local", "fake"], default="docker")
    parser.add_argument("--cold", type=int, default=5, help="cold starts to time")
    parser.add_argument("--warm", type=int, default=30, help="warm execs to time")
    parser.add_argument("--evals", type=int, default=8, help="evaluations per throughput run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    config: Any = {
        "docker": DockerSandboxConfig,
        "local": LocalSandboxConfig,
        "fake": FakeSandboxConfig,
    }[args.backend]()
    if args.backend == "docker":
        from upgate.sandboxes.images import ensure_image

        config = config.model_copy(update={"image": ensure_image("sandbox")})
    HOST_PYTHON[0] = baseline_python()
    figures: dict[str, Any] = {
        "backend": args.backend,
        "workers": args.workers,
        "load_avg_1m_at_start": os.getloadavg()[0],
    }
    project = make_project(Path(tempfile.mkdtemp(prefix="upgate-bench-")) / "project")
    figures.update(limit_figures(config))

    def cold() -> None:
        sandbox = get_sandbox(config)
        sandbox.start()
        assert sandbox.exec(["true"]).ok
        sandbox.stop()

    cold()  # first start pays one-off costs (image lookup, page cache)
    cold_s = [timed(cold) for _ in range(args.cold)]
    host_true = [timed(lambda: host_run(["true"])) for _ in range(args.cold)]
    figures["cold_start_p50_s"] = statistics.median(cold_s)
    figures["cold_start_vs_host"] = statistics.median(cold_s) / statistics.median(host_true)

    with get_sandbox(config) as sandbox:
        sandbox.exec(TINY_COMMAND)
        warm = [timed(lambda: sandbox.exec(TINY_COMMAND)) for _ in range(args.warm)]
    host_warm = [timed(lambda: host_run(TINY_COMMAND)) for _ in range(args.warm)]
    figures["warm_exec_p50_s"] = percentile(warm, 50)
    figures["warm_exec_p95_s"] = percentile(warm, 95)
    figures["host_exec_p50_s"] = percentile(host_warm, 50)
    figures["warm_exec_p50_vs_host"] = percentile(warm, 50) / percentile(host_warm, 50)

    def fresh_eval() -> None:
        with get_sandbox(config) as sb:
            sb.copy_in(project)
            result = sb.exec(EVAL_COMMAND, timeout_s=120)
            assert result.ok, result.summary()

    n, w = args.evals, args.workers
    host_serial = run_parallel(lambda: host_eval(project), n, 1)
    host_parallel = run_parallel(lambda: host_eval(project), n, w)
    fresh_serial = run_parallel(fresh_eval, n, 1)
    fresh_parallel = run_parallel(fresh_eval, n, w)
    with SandboxPool(config, size=w) as pool:

        def pooled_eval() -> None:
            with pool.acquire(project) as sb:
                result = sb.exec(EVAL_COMMAND, timeout_s=120)
                assert result.ok, result.summary()

        pooled_eval()  # the pool is started; time steady state
        pool_serial = run_parallel(pooled_eval, n, 1)
        pool_parallel = run_parallel(pooled_eval, n, w)

    for name, seconds, baseline in (
        ("host_serial", host_serial, host_serial),
        ("host_parallel", host_parallel, host_parallel),
        ("fresh_serial", fresh_serial, host_serial),
        ("fresh_parallel", fresh_parallel, host_parallel),
        ("pool_serial", pool_serial, host_serial),
        ("pool_parallel", pool_parallel, host_parallel),
    ):
        figures[f"{name}_evals_per_s"] = n / seconds
        figures[f"{name}_s_per_eval"] = seconds / n
        figures[f"{name}_vs_host"] = seconds / baseline
    shutil.rmtree(project.parent, ignore_errors=True)

    width = max(len(k) for k in figures)
    for key, value in figures.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
