"""The critic's second, independent runner: the same test functions, without pytest.

Code that can tell it is under test (pytest loaded, `PYTEST_CURRENT_TEST`, the caller's
frames, a conftest.py in the working folder, a call counter) passes every pytest run and
is wrong in real use. So after the trusted pytest runs, each side runs the visible and
hidden test files once more through a small stdlib-only driver that upgate writes into the
sandbox's /tmp (outside the workspace): a fresh `python3 -I` interpreter in an empty
folder, a minimal environment (PATH, HOME, LANG only), faulthandler off,
`sys.argv == ["app"]`, pytest dropped from `sys.modules` before any call, the source
packages imported before any test module, each test module loaded by file path under a
neutral name, and every argument-free test function called several times in a row. Tests
that need fixtures, parameters or marks are reported as not plain-runnable, never failed.
The report is one JSON line behind a per-run random marker; `upgate.evals.plainrun`
compares it with the pytest report.
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
from collections.abc import Sequence

from upgate.evals.plainrun import PlainReport, parse_plain
from upgate.sandboxes.base import Sandbox

log = logging.getLogger(__name__)

REPEATS = 20
"""Calls per test function, in one process (call-count tricks show)."""

DRIVER = r'''
import ast, faulthandler, importlib.util, inspect, io, json, os, pkgutil, signal, sys, time
class Overtime(BaseException):
    pass
def overtime(*_):
    raise Overtime("took longer than the plain runner allows")
signal.signal(signal.SIGALRM, overtime)
def limit(seconds):
    signal.setitimer(signal.ITIMER_REAL, seconds)
faulthandler.disable()
ws, marker, repeats, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
paths, sources = json.loads(sys.argv[5]), json.loads(sys.argv[6])
sys.argv = ["app"]
real_out = os.fdopen(os.dup(1), "w")
sys.stdout = sys.stderr = io.StringIO()
roots = [os.path.join(ws, s) for s in ("src", "")]
sys.path[:0] = [r for r in roots if os.path.isdir(r)]
names = []
for src in sources:
    rel = src.strip("/")
    if rel == "src" and os.path.isdir(os.path.join(ws, "src")):
        names += [n[:-3] if n.endswith(".py") else n for n in sorted(os.listdir(
            os.path.join(ws, "src"))) if n.endswith(".py") or os.path.isfile(
            os.path.join(ws, "src", n, "__init__.py"))]
    elif rel:
        rel = rel[4:] if rel.startswith("src/") else rel
        names.append((rel[:-3] if rel.endswith(".py") else rel).replace("/", "."))
def preload(name):
    try:
        limit(10)
        importlib.import_module(name)
    except BaseException:
        pass
    finally:
        limit(0)
for name in names:
    preload(name)
    mod = sys.modules.get(name)
    for info in pkgutil.walk_packages(getattr(mod, "__path__", []) or [], name + "."):
        if not info.name.endswith("__main__"):
            preload(info.name)

def files():
    for p in paths:
        full = os.path.join(ws, p)
        if os.path.isfile(full):
            yield p
            continue
        for d, dirs, names in sorted(os.walk(full)):
            dirs.sort()
            for n in sorted(names):
                if n.endswith(".py") and (n.startswith("test_") or n.endswith("_test.py")):
                    yield os.path.relpath(os.path.join(d, n), ws)

def found(tree):
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            yield None, node
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef) and sub.name.startswith("test"):
                    yield node, sub

HOOKS = {"setup", "teardown", "setup_module", "teardown_module", "setup_function",
         "teardown_function", "setup_method", "teardown_method", "setUp", "tearDown",
         "setup_class", "teardown_class"}

stash = {}

def drop_pytest():
    for k in [k for k in sys.modules if k in ("pytest", "py") or k.startswith(
            ("_pytest", "pytest", "pluggy", "py."))]:
        stash[k] = sys.modules.pop(k)

def autouse(rel, text):
    """Whether an autouse fixture (the module's own, or a conftest's above it) applies."""
    if "autouse" in text:
        return True
    d = os.path.dirname(os.path.join(ws, rel))
    while True:
        try:
            with open(os.path.join(d, "conftest.py"), encoding="utf-8") as fh:
                if "autouse" in fh.read():
                    return True
        except OSError:
            pass
        if os.path.realpath(d) == os.path.realpath(ws) or os.path.dirname(d) == d:
            return False
        d = os.path.dirname(d)

def plain(fn, method):
    if getattr(fn, "pytestmark", None) or inspect.iscoroutinefunction(fn):
        return False
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) == (1 if method else 0)

report = {}
for n, rel in enumerate(files()):
    key_mod = rel[:-3].replace(os.sep, ".").replace("/", ".")
    try:
        with open(os.path.join(ws, rel), encoding="utf-8") as fh:
            text = fh.read()
        tree = ast.parse(text)
    except BaseException:
        continue
    fixed = autouse(rel, text)
    tests = list(found(tree))
    sys.modules.update(stash)
    try:
        spec = importlib.util.spec_from_file_location("plain_module_%d" % n,
                                                      os.path.join(ws, rel))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        limit(30)
        spec.loader.exec_module(mod)
        broken = ""
    except BaseException as exc:
        broken = "import: %s: %s" % (type(exc).__name__, str(exc)[:200])
    finally:
        limit(0)
    drop_pytest()
    module_plain = not broken and not fixed and not getattr(mod, "pytestmark", None) and not (
        HOOKS & set(vars(mod)))
    for cls, node in tests:
        key = (key_mod + ("." + cls.name if cls else "")) + "::" + node.name
        if broken:
            report[key] = ["failed", broken]
            continue
        owner = getattr(mod, cls.name, None) if cls else mod
        fn = getattr(owner, node.name, None)
        if (not module_plain or fn is None or not callable(fn) or (cls and (
                HOOKS & set(dir(owner)) or getattr(owner, "pytestmark", None)
                or "__init__" in vars(owner))) or not plain(fn, cls is not None)):
            report[key] = ["not_plain", ""]
            continue
        outcome, first, start = "passed", "", time.monotonic()
        limit(30)
        try:
            for i in range(repeats):
                try:
                    (fn(owner()) if cls else fn())
                except BaseException as exc:
                    outcome, first = "failed", "call %d: %s: %s" % (
                        i + 1, type(exc).__name__, str(exc)[:200])
                    break
                if time.monotonic() - start > budget:
                    break
        except Overtime:
            outcome, first = "failed", "call %d: took longer than the plain runner allows" % (
                i + 1)
        finally:
            limit(0)
        report[key] = [outcome, first]
real_out.write("\n" + marker + json.dumps(report) + "\n")
real_out.flush()
os._exit(0)
'''


def plain_command(paths: Sequence[str], sources: Sequence[str], marker: str, *,
                  repeats: int = REPEATS, budget_s: float = 2.0) -> str:
    """The shell line that writes the driver into /tmp and runs it from an empty folder."""
    tmp = f"/tmp/upgate-plain-{secrets.token_hex(8)}"  # noqa: S108 (inside the sandbox)
    args = " ".join(shlex.quote(a) for a in (
        marker, str(repeats), str(budget_s), json.dumps(list(paths)),
        json.dumps(list(sources))))
    return (
        f'WS="$PWD" && mkdir -p {tmp}/cwd && printf %s {shlex.quote(DRIVER)} > {tmp}/drive.py'
        f' && cd {tmp}/cwd && env -i PATH="$PATH" HOME="$HOME" LANG="${{LANG:-C.UTF-8}}" '
        f'python3 -I -B {tmp}/drive.py "$WS" {args}; rc=$?; cd / && rm -rf {tmp}; exit $rc'
    )


def run_plain(box: Sandbox, paths: Sequence[str], sources: Sequence[str],
              timeout_s: float) -> PlainReport:
    """Run the driver on `paths` (workspace-relative) in `box`; problems come back as values."""
    marker = f"@@upgate-plain-{secrets.token_hex(12)}@@"
    result = box.exec(plain_command(paths, sources, marker), timeout_s=timeout_s)
    if result.timed_out or result.limits_hit:
        return PlainReport(problem=f"the plain run hit a limit: {result.summary(200)}")
    report = parse_plain(result.stdout, marker)
    log.debug("plain run: %s", report.summary())
    return report
