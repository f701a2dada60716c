"""Stub Juju hook tools backed by one JSON state file (the dispatch smoke test and benchmark).

A real unit agent answers hook tools (`is-leader`, `config-get`, `relation-get`, `status-set`, ...)
over a socket; here each tool is a tiny shell wrapper on PATH that runs this program with its own
name as the first argument:

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

import fcntl
import json
import os
import subprocess
import sys

STATE_ENV = "HOOKTOOLS_STATE"


class ToolError(Exception):
    """The tool was called wrongly; the message goes to stderr and the tool exits 1."""


def _state_path() -> str:
    return os.environ[STATE_ENV]


def _load() -> dict:
    with open(_state_path()) as file:
        return json.load(file)


def _save(state: dict) -> None:
    path = _state_path()
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as file:
        json.dump(state, file, indent=1, sort_keys=True)
    os.replace(tmp, path)


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


def _relation(state: dict, args: list[str]) -> tuple[str, dict]:
    ref = _option(args, "-r", "--relation")
    if ref is None:
        ref = os.environ.get("JUJU_RELATION_ID", "")
    rel_id = ref.rsplit(":", 1)[-1]
    relation = state["relations"].get(rel_id)
    if relation is None:
        raise ToolError(f"relation not found: {ref!r}")
    if ":" in ref and ref.rsplit(":", 1)[0] != relation["endpoint"]:
        raise ToolError(f"relation {rel_id} is not on endpoint {ref.rsplit(':', 1)[0]!r}")
    return rel_id, relation


def _out(value: object) -> None:
    sys.stdout.write(json.dumps(value) + "\n")


def is_leader(state: dict, args: list[str]) -> None:
    _out(bool(state["leader"]))


def config_get(state: dict, args: list[str]) -> None:
    _option(args, "--format")
    keys = [a for a in args if not a.startswith("-")]
    _out(state["config"].get(keys[0]) if keys else state["config"])


def status_set(state: dict, args: list[str]) -> None:
    app = _flag(args, "application")
    words = [a for a in args if a != "--"]
    status, message = words[0], " ".join(words[1:])
    if status not in ("active", "blocked", "maintenance", "waiting", "unknown"):
        raise ToolError(f"invalid status {status!r}")
    if app and not state["leader"]:
        raise ToolError("cannot set application status: this unit is not the leader")
    state["app-status" if app else "unit-status"] = {"status": status, "message": message}
    state.setdefault("status-history", []).append([("app" if app else "unit"), status, message])
    _save(state)


def status_get(state: dict, args: list[str]) -> None:
    app = _flag(args, "application")
    _option(args, "--format")
    if app:
        current = state["app-status"]
        _out(
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
        _out({**state["unit-status"], "status-data": {}})


def application_version_set(state: dict, args: list[str]) -> None:
    state["workload-version"] = " ".join(_after_dashes(args))
    _save(state)


def action_get(state: dict, args: list[str]) -> None:
    _option(args, "--format")
    keys = [a for a in args if not a.startswith("-")]
    params = state["action"]["params"]
    _out(params.get(keys[0]) if keys else params)


def action_set(state: dict, args: list[str]) -> None:
    for pair in args:
        key, _, value = pair.partition("=")
        state["action"]["results"][key] = value
    _save(state)


def action_fail(state: dict, args: list[str]) -> None:
    state["action"]["failed"] = " ".join(_after_dashes(args)) or "action failed"
    _save(state)


def action_log(state: dict, args: list[str]) -> None:
    state["action"]["log"].append(" ".join(_after_dashes(args)))
    _save(state)


def relation_ids(state: dict, args: list[str]) -> None:
    _option(args, "--format")
    endpoint = args[0] if args else os.environ.get("JUJU_RELATION", "")
    _out(
        [
            f"{r['endpoint']}:{i}"
            for i, r in sorted(state["relations"].items())
            if r["endpoint"] == endpoint
        ]
    )


def relation_list(state: dict, args: list[str]) -> None:
    _option(args, "--format")
    app = _flag(args, "app")
    _, relation = _relation(state, args)
    _out(relation["remote-app"] if app else relation["remote-units"])


def relation_get(state: dict, args: list[str]) -> None:
    _option(args, "--format")
    app = _flag(args, "app")
    _, relation = _relation(state, args)
    words = [a for a in args if a == "-" or not a.startswith("-")]
    key = words[0] if words else "-"
    owner = words[1] if len(words) > 1 else (os.environ.get("JUJU_REMOTE_UNIT") or state["unit"])
    if app:
        owner = owner.split("/")[0]
    data = relation["data"].get(owner, {})
    _out(data if key == "-" else data.get(key))


def relation_set(state: dict, args: list[str]) -> None:
    app = _flag(args, "app")
    rel_id, relation = _relation(state, args)
    if _option(args, "--file") != "-":
        raise ToolError("this stub only supports relation-set --file -")
    if app and not state["leader"]:
        raise ToolError("cannot write application data: this unit is not the leader")
    owner = state["app"] if app else state["unit"]
    bag = relation["data"].setdefault(owner, {})
    for key, value in json.loads(sys.stdin.read() or "{}").items():
        if value == "":
            bag.pop(key, None)
        else:
            bag[key] = str(value)
    state["relations"][rel_id] = relation
    _save(state)


def relation_model_get(state: dict, args: list[str]) -> None:
    _out({"uuid": state["env"]["JUJU_MODEL_UUID"]})


def network_get(state: dict, args: list[str]) -> None:
    address = state.get("address", "127.0.0.1")
    _out(
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


def juju_exec(state: dict, args: list[str]) -> None:
    """`juju-exec -u <unit> "<command>"`: run it under the hook lock with the hook environment."""
    unit = _option(args, "-u", "--unit")
    if unit != state["unit"] or len(args) != 1:
        raise ToolError(
            f"stub juju-exec runs one command on {state['unit']}, got -u {unit} {args}"
        )
    # The agent runs the command in a fresh hook context: nothing of the caller's environment
    # (e.g. ops' OPERATOR_DISPATCH marker, the action's variables) is inherited.
    env = dict(state["env"])
    lock_path = os.path.join(os.path.dirname(_state_path()), "hook.lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _load().get("closed"):  # the test has finished with this unit
            sys.exit(0)
        result = subprocess.run(["/bin/sh", "-c", args[0]], env=env, check=False)
    sys.exit(result.returncode)


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
    "juju-exec": juju_exec,
}

# Tools a charm may call that this stub does not implement: present on PATH, so a call fails with
# a clear message (exit 1, as a real tool error) rather than "command not found".
UNSUPPORTED = (
    "action-fail-with-reason",
    "close-port",
    "credential-get",
    "goal-state",
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


def main(argv: list[str]) -> int:
    """Run the tool named by argv[1] with the rest of argv."""
    name, args = argv[1], argv[2:]
    directory = os.path.dirname(_state_path())
    with open(os.path.join(directory, "calls.jsonl"), "a") as calls:
        calls.write(json.dumps([name, *args]) + "\n")
    tool = TOOLS.get(name)
    if tool is None:
        sys.stderr.write(f"ERROR stub hook tool {name!r} is not implemented (tests/dispatch)\n")
        return 1
    try:
        tool(_load(), args)
    except ToolError as error:
        sys.stderr.write(f"ERROR {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
