"""No fixed sleeps and no polling loops anywhere in charmlibs.rollingops.

A static check over every module of the package (its AST, not its behaviour):

- ``time.sleep`` / ``sleep`` / ``asyncio.sleep`` may be called only inside the functions listed in
  ``SLEEP_ALLOWED`` (the post-failure backoff helper, if the package ever needs its own; today
  tenacity does the backoff and the list is empty);
- a *timed* wait (``.wait(t)``, ``.join(t)``, ``select(..., t)``, ``.poll(t)``, ``.acquire(...,
  timeout=t)``) inside a loop is a polling loop, allowed only in ``TIMED_WAIT_IN_LOOP_ALLOWED``:
  the lease keep-alive heartbeat, the one periodic wait the library needs (an etcd lease expires
  unless it is renewed in time).

Untimed blocking (an etcd watch read, ``Popen.wait()``, a blocking ``flock``) is how the library
waits and is not flagged. The behavioural half of this rule is in tests/functional: worker
processes run with ``time.sleep`` patched to raise.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "lib" / "charmlibs" / "rollingops"

SLEEP_ALLOWED: set[tuple[str, str]] = set()
TIMED_WAIT_IN_LOOP_ALLOWED = {("_etcd_lock.py", "Lease._heartbeat")}

SLEEP_NAMES = {"sleep"}
TIMED_WAIT_METHODS = {"wait", "join", "poll", "select", "acquire", "wait_for"}


def _call_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _has_timeout(call: ast.Call, name: str) -> bool:
    if any(kw.arg in ("timeout", "timeout_seconds") for kw in call.keywords):
        return True
    if name == "select":
        return len(call.args) >= 4
    if name == "acquire":
        return len(call.args) >= 2
    if name == "wait_for":
        return len(call.args) >= 2
    return len(call.args) >= 1


class _Checker(ast.NodeVisitor):
    def __init__(self, module: str):
        self.module = module
        self.scope: list[str] = []
        self.loop_depth = 0
        self.problems: list[str] = []

    def _where(self, node: ast.AST) -> str:
        return (
            f"{self.module}:{getattr(node, 'lineno', '?')} in {'.'.join(self.scope) or '<module>'}"
        )

    def _scoped(self, node: ast.AST, name: str) -> None:
        self.scope.append(name)
        saved, self.loop_depth = self.loop_depth, 0  # a nested function is not inside the loop
        self.generic_visit(node)
        self.loop_depth = saved
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scoped(node, node.name)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._scoped(node, node.name)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scoped(node, node.name)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        saved, self.loop_depth = self.loop_depth, 0
        self.generic_visit(node)
        self.loop_depth = saved

    def _loop(self, node: ast.AST) -> None:
        self.loop_depth += 1
        self.generic_visit(node)
        self.loop_depth -= 1

    visit_While = visit_For = visit_AsyncFor = _loop  # noqa: N815

    def visit_Call(self, node: ast.Call) -> None:
        name = _call_name(node)
        function = ".".join(self.scope)
        if name in SLEEP_NAMES and (self.module, function) not in SLEEP_ALLOWED:
            self.problems.append(f"sleep call at {self._where(node)}")
        if (
            self.loop_depth
            and name in TIMED_WAIT_METHODS
            and _has_timeout(node, name)
            and (self.module, function) not in TIMED_WAIT_IN_LOOP_ALLOWED
        ):
            self.problems.append(f"timed wait {name}() inside a loop at {self._where(node)}")
        self.generic_visit(node)


def check_source(source: str, module: str) -> list[str]:
    """Return the sleep and polling-loop violations of one module's source."""
    checker = _Checker(module)
    checker.visit(ast.parse(source))
    return checker.problems


def test_package_modules_exist():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert "_etcd_lock.py" in modules and "_worker.py" in modules


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_sleep_and_no_polling_loop(path: pathlib.Path):
    assert check_source(path.read_text(), path.name) == []


def test_allowlisted_heartbeat_is_still_where_the_list_says():
    """If the heartbeat moves or is renamed, the allowlist must follow (no stale exceptions)."""
    source = (PACKAGE / "_etcd_lock.py").read_text()
    tree = ast.parse(source)
    lease = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Lease")
    assert any(isinstance(n, ast.FunctionDef) and n.name == "_heartbeat" for n in lease.body)


@pytest.mark.parametrize(
    "snippet",
    [
        "import time\ndef f():\n    time.sleep(10)\n",
        "from time import sleep\ndef f():\n    while True:\n        sleep(1)\n",
        "def f(ev):\n    while not done():\n        ev.wait(15)\n",
        "def f(ev):\n    for _ in range(3):\n        ev.wait(timeout=1)\n",
        "import select\ndef f(fd):\n    while True:\n        select.select([fd], [], [], 0.5)\n",
        "def f(t):\n    while t.is_alive():\n        t.join(1)\n",
    ],
)
def test_checker_flags_sleeps_and_polling(snippet: str):
    assert check_source(snippet, "example.py")


@pytest.mark.parametrize(
    "snippet",
    [
        "def f(proc):\n    while True:\n        proc.wait()\n",  # untimed: a real condition
        "def f(ev):\n    ev.wait(30)\n",  # a caller timeout, not in a loop
        "def f(watch):\n    while True:\n        watch.next(None)\n",
    ],
)
def test_checker_accepts_condition_waits(snippet: str):
    assert check_source(snippet, "example.py") == []
