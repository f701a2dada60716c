"""Stub Juju hook tools backed by one JSON state file (the dispatch smoke test and benchmark).

A real unit agent answers hook tools (`is-leader`, `config-get`, `relation-get`, `status-set`, ...)
over a socket, and so does this stub: each tool on PATH is the small compiled client
`hooktool_client.c` (as Juju's are one `jujuc` binary), and `agent.py`, a thread of the test
process, runs the tool below for it with `run()`. Each call loads the state file and a tool that
changes something writes it back, as a real agent answers from, and records to, its own state.
Without a C compiler each tool is instead a script running this file with Python:

    HOOKTOOLS_STATE=/tmp/x/state.json hooktool.py status-set --application=False active -- "hi"

The state file holds what Juju would know about one unit (see `charmdir.new_state`): the unit and
application names, leadership, config, relations with their databags, the unit/app statuses,
the workload version, and the current action's parameters and results. Every call is also
appended to `calls.jsonl` next to the state file, and `juju-log` lines to `juju-log.txt`.

Differences from Juju, on purpose: relation data is written at once (Juju publishes it at the end
of a successful hook and discards it on failure), there is no hook-level rollback, and only the
tools ops needs for this charm are implemented; any other tool exits 1 naming itself, so a charm
that starts to need it fails the smoke test loudly instead of passing by accident.

`juju-exec -u <unit> "<env assignments> <charm dir>/dispatch"` is emulated too: it waits for the
unit's hook lock (a flock on `hook.lock` in the state directory, which the test also takes around
each dispatch it runs, as the unit agent serialises hooks), then runs the command with the unit's
hook environment, like the real juju-exec does.
"""

from __future__ import annotations

import json
import os
import sys

STATE_ENV = "HOOKTOOLS_STATE"


class ToolError(Exception):
    """The tool was called wrongly; the message goes to stderr and the tool exits 1."""


class Call:
    """One tool call: the state file it acts on, the hook's JUJU_* variables, stdin, its output."""

    def __init__(self, state_path: str, env: dict[str, str], stdin: str = ""):
        self.state_path = state_path
        self.env = env
        self.stdin = stdin
        self.stdout: list[str] = []

    def out(self, value: object) -> None:
        """Print `value` as JSON, as hook tools do with --format=json."""
        self.stdout.append(json.dumps(value) + "\n")

    def load(self) -> dict:
        """What the agent knows now (read from the state file at every call)."""
        with open(self.state_path) as file:
            return json.load(file)

    def save(self, state: dict) -> None:
        """Record a change (atomically: the test may read the file at any time)."""
        tmp = f"{self.state_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as file:
            json.dump(state, file, indent=1, sort_keys=True)
        os.replace(tmp, self.state_path)


def _flag(args: list[str], name: str) -> bool:
    """Pop a boolean flag given as `--name`, `--name=true` or `--name=false`."""
    for arg in list(args):
        if arg == f"--{name}":
            args.remove(arg)
            return True
        if arg.startswith(f"--{name}="):
            args.remove(arg)
            return arg.split("=", 1)[1].lower() in ("true", "1", "yes")
    return False


def _option(args: list[str], *names: str) -> str | None:
    """Pop an option with a value (`-r 3`, `--format=json`)."""
    for index, arg in enumerate(args):
        for name in names:
            if arg == name and index + 1 < len(args):
                value = args[index + 1]
                del args[index : index + 2]
                return value
            if arg.startswith(f"{name}="):
                del args[index]
                return arg.split("=", 1)[1]
    return None


def _after_dashes(args: list[str]) -> list[str]:
    return args[args.index("--") + 1 :] if "--" in args else args


def _relation(state: dict, args: list[str], call: Call) -> tuple[str, dict]:
    ref = _option(args, "-r", "--relation")
    if ref is None:
        ref = call.env.get("JUJU_RELATION_ID", "")
    rel_id = ref.rsplit(":", 1)[-1]
    relation = state["relations"].get(rel_id)
    if relation is None:
        raise ToolError(f"relation not found: {ref!r}")
    if ":" in ref and ref.rsplit(":", 1)[0] != relation["endpoint"]:
        raise ToolError(f"relation {rel_id} is not on endpoint {ref.rsplit(':', 1)[0]!r}")
    return rel_id, relation


def is_leader(state: dict, args: list[str], call: Call) -> None:
    call.out(bool(state["leader"]))


def config_get(state: dict, args: list[str], call: Call) -> None:
    _option(args, "--format")
    keys = [a for a in args if not a.startswith("-")]
    call.out(state["config"].get(keys[0]) if keys else state["config"])


def status_set(state: dict, args: list[str], call: Call) -> None:
    app = _flag(args, "application")
    words = [a for a in args if a != "--"]
    status, message = words[0], " ".join(words[1:])
    if status not in ("active", "blocked", "maintenance", "waiting", "unknown"):
        raise ToolError(f"invalid status {status!r}")
    if app and not state["leader"]:
        raise ToolError("cannot set application status: this unit is not the leader")
    state["app-status" if app else "unit-status"] = {"status": status, "message": message}
    state.setdefault("status-history", []).append([("app" if app else "unit"), status, message])
    call.save(state)


def status_get(state: dict, args: list[str], call: Call) -> None:
    app = _flag(args, "application")
    _option(args, "--format")
    if app:
        current = state["app-status"]
        call.out(
            {
                "application-status": {
                    "status": current["status"],
                    "message": current["message"],
                    "status-data": {},
                    "units": {state["unit"]: {**state["unit-status"], "status-data": {}}},
                }
            }
        )
    else:
        call.out({**state["unit-status"], "status-data": {}})


def application_version_set(state: dict, args: list[str], call: Call) -> None:
    state["workload-version"] = " ".join(_after_dashes(args))
    call.save(state)


def action_get(state: dict, args: list[str], call: Call) -> None:
    _option(args, "--format")
    keys = [a for a in args if not a.startswith("-")]
    params = state["action"]["params"]
    call.out(params.get(keys[0]) if keys else params)


def action_set(state: dict, args: list[str], call: Call) -> None:
    for pair in args:
        key, _, value = pair.partition("=")
        state["action"]["results"][key] = value
    call.save(state)


def action_fail(state: dict, args: list[str], call: Call) -> None:
    state["action"]["failed"] = " ".join(_after_dashes(args)) or "action failed"
    call.save(state)


def action_log(state: dict, args: list[str], call: Call) -> None:
    state["action"]["log"].append(" ".join(_after_dashes(args)))
    call.save(state)


def relation_ids(state: dict, args: list[str], call: Call) -> None:
    _option(args, "--format")
    endpoint = args[0] if args else call.env.get("JUJU_RELATION", "")
    call.out(
        [
            f"{r['endpoint']}:{i}"
            for i, r in sorted(state["relations"].items())
            if r["endpoint"] == endpoint
        ]
    )


def relation_list(state: dict, args: list[str], call: Call) -> None:
    _option(args, "--format")
    app = _flag(args, "app")
    _, relation = _relation(state, args, call)
    call.out(relation["remote-app"] if app else relation["remote-units"])


def relation_get(state: dict, args: list[str], call: Call) -> None:
    _option(args, "--format")
    app = _flag(args, "app")
    _, relation = _relation(state, args, call)
    words = [a for a in args if a == "-" or not a.startswith("-")]
    key = words[0] if words else "-"
    owner = words[1] if len(words) > 1 else (call.env.get("JUJU_REMOTE_UNIT") or state["unit"])
    if app:
        owner = owner.split("/")[0]
    data = relation["data"].get(owner, {})
    call.out(data if key == "-" else data.get(key))


def relation_set(state: dict, args: list[str], call: Call) -> None:
    app = _flag(args, "app")
    rel_id, relation = _relation(state, args, call)
    if _option(args, "--file") != "-":
        raise ToolError("this stub only supports relation-set --file -")
    if app and not state["leader"]:
        raise ToolError("cannot write application data: this unit is not the leader")
    owner = state["app"] if app else state["unit"]
    bag = relation["data"].setdefault(owner, {})
    for key, value in json.loads(call.stdin or "{}").items():
        if value == "":
            bag.pop(key, None)
        else:
            bag[key] = str(value)
    state["relations"][rel_id] = relation
    call.save(state)


def relation_model_get(state: dict, args: list[str], call: Call) -> None:
    call.out({"uuid": state["env"]["JUJU_MODEL_UUID"]})


def goal_state(state: dict, args: list[str], call: Call) -> None:
    """`goal-state`: every unit is where it should be (this one, and the peers relations list)."""
    since = "2026-01-01T00:00:00Z"
    units = {state["unit"]: {"status": "active", "since": since}}
    relations: dict[str, dict] = {}
    for relation in state["relations"].values():
        related = relations.setdefault(relation["endpoint"], {})
        related[relation["remote-app"]] = {"status": "joined", "since": since}
        for name in relation["remote-units"]:
            related[name] = {"status": "joined", "since": since}
            if name.split("/")[0] == state["app"]:
                units[name] = {"status": "active", "since": since}
    call.out({"units": units, "relations": relations})


def network_get(state: dict, args: list[str], call: Call) -> None:
    address = state.get("address", "127.0.0.1")
    call.out(
        {
            "bind-addresses": [
                {
                    "mac-address": "",
                    "interface-name": "lo",
                    "addresses": [{"hostname": "", "value": address, "cidr": f"{address}/32"}],
                }
            ],
            "egress-subnets": [f"{address}/32"],
            "ingress-addresses": [address],
        }
    )


def juju_exec(state_path: str, args: list[str]) -> int:
    """`juju-exec -u <unit> "<command>"`: run it under the hook lock with the hook environment.

    Not answered by the agent: it runs a whole hook (which calls tools itself), so it is always a
    script (`main`), started detached by the charm.
    """
    import fcntl  # only this command needs these two
    import subprocess

    state = Call(state_path, {}).load()
    unit = _option(args, "-u", "--unit")
    if unit != state["unit"] or len(args) != 1:
        raise ToolError(
            f"stub juju-exec runs one command on {state['unit']}, got -u {unit} {args}"
        )
    # The agent runs the command in a fresh hook context: nothing of the caller's environment
    # (e.g. ops' OPERATOR_DISPATCH marker, the action's variables) is inherited.
    env = dict(state["env"])
    lock_path = os.path.join(os.path.dirname(state_path), "hook.lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if Call(state_path, {}).load().get("closed"):  # the test has finished with this unit
            return 0
        return subprocess.run(["/bin/sh", "-c", args[0]], env=env, check=False).returncode


TOOLS = {
    "is-leader": is_leader,
    "config-get": config_get,
    "status-set": status_set,
    "status-get": status_get,
    "application-version-set": application_version_set,
    "action-get": action_get,
    "action-set": action_set,
    "action-fail": action_fail,
    "action-log": action_log,
    "relation-ids": relation_ids,
    "relation-list": relation_list,
    "relation-get": relation_get,
    "relation-set": relation_set,
    "relation-model-get": relation_model_get,
    "network-get": network_get,
    "goal-state": goal_state,
}

# Tools a charm may call that this stub does not implement: present on PATH, so a call fails with
# a clear message (exit 1, as a real tool error) rather than "command not found".
UNSUPPORTED = (
    "action-fail-with-reason",
    "close-port",
    "credential-get",
    "juju-reboot",
    "leader-get",
    "leader-set",
    "open-port",
    "opened-ports",
    "resource-get",
    "secret-add",
    "secret-get",
    "secret-grant",
    "secret-ids",
    "secret-info-get",
    "secret-remove",
    "secret-revoke",
    "secret-set",
    "state-delete",
    "state-get",
    "state-set",
    "storage-add",
    "storage-get",
    "storage-list",
)


def _record(state_path: str, name: str, args: list[str]) -> None:
    """Append the call to calls.jsonl next to the state file (the benchmark counts them)."""
    with open(os.path.join(os.path.dirname(state_path), "calls.jsonl"), "a") as calls:
        calls.write(json.dumps([name, *args]) + "\n")


def run(name: str, args: list[str], call: Call) -> tuple[int, str]:
    """Run the tool `name` for `call` (its output goes to `call.stdout`); return (exit, stderr)."""
    _record(call.state_path, name, args)
    tool = TOOLS.get(name)
    if tool is None:
        return 1, f"ERROR stub hook tool {name!r} is not implemented (tests/dispatch)\n"
    try:
        tool(call.load(), list(args), call)
    except ToolError as error:
        return 1, f"ERROR {error}\n"
    return 0, ""


def main(argv: list[str]) -> int:
    """Run the tool named by argv[1] with the rest of argv (the tools without the agent)."""
    name, args, state_path = argv[1], argv[2:], os.environ[STATE_ENV]
    if name == "juju-exec":
        _record(state_path, name, args)
        try:
            return juju_exec(state_path, args)
        except ToolError as error:
            sys.stderr.write(f"ERROR {error}\n")
            return 1
    env = {key: value for key, value in os.environ.items() if key.startswith("JUJU_")}
    call = Call(state_path, env, sys.stdin.read() if name == "relation-set" else "")
    code, error = run(name, args, call)
    sys.stdout.write("".join(call.stdout))
    sys.stderr.write(error)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
