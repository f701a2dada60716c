"""Hook side of the etcd backend: mode switches with a barrier, the worker, fence checks, fallback.

Imported only by charms that name an etcd relation, and only when a hook needs it; the etcd client,
the lock primitive and `cryptography` are imported inside the functions that use them.

The application runs one backend at a time (`rollingops-mode` in the peer app databag, chosen by
the leader). Every unit acknowledges the mode in its own `rollingops-backend`:

- mode etcd, unit on peer, etcd usable here: clean this unit's old etcd keys first if
  `rollingops-etcd-cleanup` is set, then switch to etcd. Its worker starts at the end of the
  dispatch when its queue is not empty.
- mode peer (or any etcd failure here): stop the worker, switch to peer, set the clean-up flag;
  the manager publishes the unit's queue (kept in its stored state while on etcd) in that hook.
  A `rollingops_lock_granted` dispatch queued behind that hook finds the unit on peer and runs
  nothing, so once the leader sees every unit on peer no unit can still be in an etcd critical
  section: only then does it grant on the peer backend.
- the leader returns the application to etcd only when every published queue is empty, no peer
  grant is outstanding and every unit acknowledged peer mode; it leaves etcd when etcd is not
  configured or a unit with work reports that it cannot use etcd (peer backend plus clean-up flag).
- each switch raises the application's fencing epoch (see the package docstring).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import ops

from . import _contract, _files
from ._controls import PAUSE_REASON_LIMIT
from ._models import (
    DONE_NOT_GRANTED,
    KEY_CLIENT_SECRET_ID,
    KEY_ETCD_REQUEST,
    LockGrant,
    OperationResult,
    ProcessingBackend,
    RollingOpsError,
    RollingOpsInvalidSecretContentError,
    RollingOpsLibMissingError,
    make_token,
    printable,
)
from ._peer import AppView, Grant, UnitView, execute_grant

if TYPE_CHECKING:
    from ._etcd_lock import AppState, EtcdLock

logger = logging.getLogger(__name__)

WORKER_MODULE = "charmlibs.rollingops._worker"
WORKER_LOG_LIMIT = 1 << 20  # bytes; the log is truncated when it grows past this
CLIENT_SECRET_LABEL = "rollingops-etcd-client"  # noqa: S105 - a label, not a secret
MTLS_SECRET_LABEL = "rollingops-etcd-mtls"  # noqa: S105


class Host(Protocol):
    """What the etcd backend uses of the manager that owns it (and nothing else).

    The manager hands an adapter of this shape to `EtcdBackend`; the backend never imports the
    manager, so the dependency goes one way: `_manager` -> `_etcd_backend`.
    """

    model: ops.Model
    base_dir: pathlib.Path
    charm_dir: pathlib.Path
    peer_relation_name: str
    etcd_relation_name: str | None
    cluster_id: str | None
    callback_targets: dict[str, Callable[..., Any]]
    max_parallel: int
    halt_after_failures: int | None

    def unit_view(self, relation: ops.Relation) -> UnitView:
        """This unit's view for this dispatch (read once, then shared)."""
        ...

    def write_me(self, relation: ops.Relation) -> None:
        """Publish this unit's view (its databag; its stored copy while on etcd)."""
        ...

    def run_callback(
        self, grant: LockGrant, callback: Callable[..., Any], kwargs: dict[str, Any]
    ) -> OperationResult:
        """Run one callback under `grant`; an exception counts as RETRY_RELEASE."""
        ...

    def executing(self, op_id: int | None) -> contextlib.AbstractContextManager[None]:
        """Mark op `op_id` as running for the body of the block (requests made then queue)."""
        ...


class EtcdBackend:
    """The etcd backend of one manager (one per dispatch)."""

    def __init__(self, host: Host):
        self.manager = host
        self._pending_result: tuple[int, int | None, str] | None = None
        self._lock: EtcdLock | None = None

    # --- availability ------------------------------------------------------------------------

    @property
    def base_dir(self):
        return self.manager.base_dir

    def configured(self) -> bool:
        """The charm names an etcd relation, it exists, and `cluster_id` is known."""
        name = self.manager.etcd_relation_name
        return (
            name is not None
            and self.manager.cluster_id is not None
            and self.manager.model.get_relation(name) is not None
        )

    def _config(self) -> _files.EtcdConfig | None:
        try:
            return _files.read_config(self.base_dir)
        except RollingOpsError as error:
            logger.error("local etcd config unusable: %s", error)
            return None

    def usable(self) -> bool:
        """Configured and the local config (endpoints, certificates) exists and parses."""
        return self.configured() and self._config() is not None

    def _etcd_lock(self) -> EtcdLock:
        """The lock over the local config; RollingOpsError when it cannot be built (never more)."""
        if self._lock is None:
            from ._etcd_lock import EtcdLock
            from ._models import RollingOpsEtcdNotConfiguredError

            config = self._config()
            if config is None:
                raise RollingOpsEtcdNotConfiguredError("no local etcd config")
            try:
                self._lock = EtcdLock.from_config(config, self.manager.model.unit.name)
            except (ValueError, OSError) as error:  # a config the client cannot use
                raise RollingOpsEtcdNotConfiguredError(f"etcd client: {error}") from error
        return self._lock

    def busy_units(self, timeout: float) -> set[str]:
        """Units of this application (model and app) holding the etcd lock or a ticket.

        One range read through a client of its own (one attempt of at most `timeout` seconds;
        grpc is imported here). Other applications sharing the cluster_id, and units of another
        model, are left out: an owner is `<model uuid>.<app>-<number>`. Raises RollingOpsError.
        """
        with self._one_shot_lock(timeout) as lock:
            owners = lock.busy_owners()
        model = self.manager.model
        ours = f"{model.uuid}.{model.app.name}-"
        numbers = (owner[len(ours) :] for owner in owners if owner.startswith(ours))
        return {f"{model.app.name}/{number}" for number in numbers if number.isdigit()}

    # --- mode ----------------------------------------------------------------------------------

    def follow_mode(self, app: AppView, me: UnitView) -> None:
        """Acknowledge the application's mode in this unit's databag (see the module docstring)."""
        if me.backend is ProcessingBackend.ETCD:
            if app.mode is not ProcessingBackend.ETCD:
                self._to_peer(me, "the application runs on the peer backend")
            elif not self.usable():
                self._to_peer(me, "etcd is not configured or its local config is unusable")
            return
        if app.mode is not ProcessingBackend.ETCD:
            return
        if not self.usable():
            if me.queue and not me.etcd_cleanup:
                logger.warning("etcd mode but etcd is unusable here: asking for the peer backend")
                me.etcd_cleanup = True  # tells the leader this unit cannot run on etcd
            return
        if me.etcd_cleanup:
            try:
                self._etcd_lock().cleanup_owner()
            except RollingOpsError as error:
                logger.warning("etcd clean-up failed, staying on the peer backend: %s", error)
                return
            me.etcd_cleanup = False
        me.backend = ProcessingBackend.ETCD
        logger.info("this unit now runs on the etcd backend")

    def choose_mode(
        self, app: AppView, units: Mapping[str, UnitView], *, hold: bool = False
    ) -> None:
        """Leader: pick the application's backend (peer <-> etcd) without breaking exclusion.

        `hold`: do not return to etcd (the lock is paused, or etcd may still hold a pause key of
        ours that the manager could not delete yet).
        """
        readable = [unit for unit in units.values() if unit.readable]
        if app.mode is ProcessingBackend.ETCD:
            stuck = [
                unit.name
                for unit in readable
                if unit.backend is ProcessingBackend.PEER and unit.queue and unit.etcd_cleanup
            ]
            if not self.usable() or stuck:
                why = f"units {stuck} cannot use etcd" if stuck else "etcd is not usable"
                logger.warning("switching the application to the peer backend: %s", why)
                app.switch_mode(ProcessingBackend.PEER)
            return
        if (
            self.usable()
            and app.grant is None
            and len(readable) == len(units)
            and not any(unit.queue for unit in readable)
            and all(unit.backend is ProcessingBackend.PEER for unit in readable)
        ):
            # Every unit acknowledged peer mode: no etcd grant of an older epoch can still run.
            if hold:
                return
            logger.info("peer queues drained: switching the application to the etcd backend")
            app.switch_mode(ProcessingBackend.ETCD)

    def set_paused(self, paused: bool) -> None:
        """Put (or delete) this application's pause key in etcd. Raises RollingOpsError.

        A put is marked in a local file first, a delete unmarks after it (see `_controls`).
        """
        if paused:
            _files.mark_pause(self.base_dir)
            self._etcd_lock().set_paused(True)
        else:
            self._etcd_lock().set_paused(False)
            _files.clear_pause_mark(self.base_dir)

    def pause_marked(self) -> bool:
        """Whether etcd may hold a pause key of ours that the databag may not record."""
        return _files.pause_marked(self.base_dir)

    def mark_pause(self) -> None:
        """A new leader: a predecessor may have left a pause key (see `_controls`)."""
        _files.mark_pause(self.base_dir)

    def forget_pause_mark(self) -> None:
        """No longer leader: the new leader's own mark covers whatever key we left."""
        _files.clear_pause_mark(self.base_dir)

    def resume(self, *, keep_paused: bool, force: bool) -> bool:
        """Clear a halt in etcd (strikes to 0, pause key deleted; see `EtcdLock.resume`).

        Returns whether a worker's halt was there. Raises RollingOpsError.
        """
        return self._etcd_lock().resume(keep_paused=keep_paused, force=force)

    def app_state(self, timeout: float) -> AppState:
        """This application's slots, line, roll record and pause key (one etcd read).

        Through a client of its own (one attempt within `timeout` s). Raises RollingOpsError.
        """
        with self._one_shot_lock(timeout) as lock:
            model = self.manager.model
            return lock.app_state(f"{model.uuid}.{model.app.name}")

    @contextlib.contextmanager
    def _one_shot_lock(self, timeout: float) -> Generator[EtcdLock, None, None]:
        """A client of its own for one read (one attempt within `timeout` s), closed after.

        Raises RollingOpsEtcdNotConfiguredError when this unit has no usable etcd config.
        """
        from ._etcd_lock import EtcdLock
        from ._models import RollingOpsEtcdNotConfiguredError

        config = self._config()
        if config is None:
            raise RollingOpsEtcdNotConfiguredError("this unit has no usable etcd config")
        try:
            lock = EtcdLock.from_config(
                config, self.manager.model.unit.name, timeout=timeout, attempts=1
            )
        except (ValueError, OSError) as error:
            raise RollingOpsEtcdNotConfiguredError(f"etcd client: {error}") from error
        try:
            yield lock
        finally:
            lock.close()

    def _to_peer(self, me: UnitView, why: str) -> None:
        logger.warning("falling back to the peer backend: %s", why)
        self.stop_worker()
        with contextlib.suppress(OSError, RollingOpsError):
            _files.clear_worker_status(self.base_dir)
        me.backend = ProcessingBackend.PEER
        me.etcd_cleanup = True

    def fall_back(self, why: str) -> None:
        """Any etcd failure in a hook: go to the peer backend (the caller writes the bag)."""
        relation = self.manager.model.get_relation(self.manager.peer_relation_name)
        if relation is None:
            return
        me = self.manager.unit_view(relation)
        if me.backend is ProcessingBackend.ETCD:
            self._to_peer(me, why)
        elif me.queue:
            me.etcd_cleanup = True

    # --- worker ----------------------------------------------------------------------------------

    def worker_holding(self) -> bool:
        """Whether the worker holds the lock after this hook (a pure read of worker-status.json).

        A grant this hook has finished with (its result is pending, and not `retry-hold`) counts
        as released: the worker releases it as soon as the hook commits, and in etcd mode no
        other hook may come to update the status.
        """
        try:
            status = _files.read_worker_status(self.base_dir)
        except (OSError, RollingOpsError):
            return False
        if status is None or status.holding is None:
            return False
        pending = self._pending_result
        return not (
            pending is not None
            and pending[0] == status.holding
            and pending[2] != OperationResult.RETRY_HOLD.value
        )

    def worker_paused(self) -> str | None:
        """The etcd pause key's value that holds this unit's live worker back, or None.

        Pure local reads (worker-status.json, the worker's flock; no hook tool, no etcd): the
        worker writes it before each wait and clears it when it acquires or the key is gone, so
        it is as fresh as the worker's last attempt. A dead worker's value does not count.
        """
        try:
            status = _files.read_worker_status(self.base_dir)
            if status is None or status.paused is None:
                return None
            if not _files.worker_alive(self.base_dir):
                return None
            return printable(status.paused, PAUSE_REASON_LIMIT)  # text from etcd
        except (OSError, RollingOpsError):
            return None

    def stop_worker(self) -> None:
        """SIGTERM the live worker (flock-guarded) and wait for its exit."""
        try:
            if _files.worker_alive(self.base_dir):
                _files.stop_worker(self.base_dir)
        except (OSError, RollingOpsError) as error:
            logger.warning("could not stop the etcd worker: %s", error)

    def check_worker_health(self) -> None:
        """update-status: a worker that marked itself failed while work is pending → fall back."""
        try:
            status = _files.read_worker_status(self.base_dir)
        except (OSError, RollingOpsError):
            return
        if status is not None and status.failed and self._pending_work():
            self.fall_back("the etcd worker marked itself failed")

    def _pending_work(self) -> bool:
        relation = self.manager.model.get_relation(self.manager.peer_relation_name)
        return relation is not None and bool(self.manager.unit_view(relation).queue)

    def note_queue(self, me: UnitView) -> None:
        """Nothing now: the work hint is written once, at the end of the dispatch."""

    def end_of_dispatch(self) -> bool:
        """pre_commit: publish the etcd request (leader); hand work to the worker (etcd units).

        Returns False when the request could not be published (the next hook tries again).
        """
        relation = self.manager.model.get_relation(self.manager.peer_relation_name)
        if relation is None:
            return True
        published = True
        if self.manager.model.unit.is_leader() and self.configured():
            try:
                self._publish_request(relation)
            except (RollingOpsError, ValueError, ops.ModelError) as error:
                logger.error("could not publish the etcd request: %s", error)
                published = False
        me = self.manager.unit_view(relation)
        if me.backend is not ProcessingBackend.ETCD:
            return published
        try:
            with _files.queue_lock(self.base_dir):
                head = me.queue[0].id if me.queue else None
                _files.write_work(
                    self.base_dir,
                    len(me.queue),
                    head,
                    self.manager.max_parallel,
                    self.manager.halt_after_failures,
                )
                if me.queue and not _files.worker_alive(self.base_dir):
                    self._start_worker()
        except RollingOpsLibMissingError as error:
            logger.error("%s", error)
            self._to_peer(me, "the worker cannot be launched")
            self.manager.write_me(relation)
        except (OSError, RollingOpsError) as error:
            logger.error("could not hand work to the etcd worker: %s", error)
            self._to_peer(me, str(error))
            self.manager.write_me(relation)
        return published

    def _start_worker(self) -> None:
        path = [entry for entry in sys.path if entry]
        if importlib.util.find_spec(WORKER_MODULE) is None:
            raise RollingOpsLibMissingError(f"{WORKER_MODULE} is not importable")
        from ._worker import worker_argv

        env = {key: value for key, value in os.environ.items() if key != "JUJU_CONTEXT_ID"}
        env["PYTHONPATH"] = os.pathsep.join(path)
        log_path = _files.etcd_dir(self.base_dir) / "worker.log"
        if log_path.exists() and log_path.stat().st_size > WORKER_LOG_LIMIT:
            log_path.write_text("")
        argv = worker_argv(
            str(self.base_dir), self.manager.model.unit.name, str(self.manager.charm_dir)
        )
        with open(log_path, "a") as log:
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        logger.info("started the etcd worker")

    # --- the granted hook ------------------------------------------------------------------

    def on_lock_granted(self, raw_token: str) -> None:
        """The worker holds the etcd lock under `raw_token`: fence check, then run the head op."""
        relation = self.manager.model.get_relation(self.manager.peer_relation_name)
        if relation is None:
            return
        me = self.manager.unit_view(relation)
        app = AppView.read(relation.data[self.manager.model.app])
        try:
            token = int(raw_token)
        except ValueError:
            logger.error("bad %s=%r: ignoring this dispatch", "ROLLINGOPS_LOCK_TOKEN", raw_token)
            return
        if me.backend is not ProcessingBackend.ETCD or app.mode is not ProcessingBackend.ETCD:
            logger.info("etcd grant %s arrived after the switch to peer: running nothing", token)
            self._pending_result = (token, None, DONE_NOT_GRANTED)
            return
        try:
            fencing = make_token(app.epoch, token)
        except ValueError as error:
            self._pending_result = (token, None, DONE_NOT_GRANTED)
            self.fall_back(str(error))
            return
        try:
            slot = self._etcd_lock().keep_slot(token)  # kept alive while the operation runs
        except RollingOpsError as error:
            self._pending_result = (token, None, DONE_NOT_GRANTED)
            self.fall_back(f"fence check failed: {error}")
            return
        if slot is None:
            logger.warning("etcd lock token %s is no longer ours: running nothing", token)
            self._pending_result = (token, None, DONE_NOT_GRANTED)
            return
        manager = self.manager
        head = me.queue[0].id if me.queue else None
        try:
            with manager.executing(head):
                done = execute_grant(
                    me, Grant(me.name, fencing, head), manager.callback_targets, self._run_etcd
                )
        finally:
            slot.stop()
        self._pending_result = (token, done.op, done.result)  # the worker speaks etcd revisions

    def _run_etcd(self, grant: LockGrant, callback: Any, kwargs: dict[str, Any]):
        etcd_grant = LockGrant(
            ProcessingBackend.ETCD, grant.token, grant.op_id, grant.callback_id, grant.attempt
        )
        return self.manager.run_callback(etcd_grant, callback, kwargs)

    def write_pending_result(self) -> None:
        """Framework commit: report the granted hook's result to the worker (never on failure)."""
        if self._pending_result is None:
            return
        token, op, result = self._pending_result
        try:
            _files.write_result(self.base_dir, token, op, result)
        except (OSError, RollingOpsError) as error:
            logger.error("could not write result.json: %s", error)

    # --- sync lock ---------------------------------------------------------------------------

    def _etcd_epoch(self) -> int | None:
        """The fencing epoch of etcd grants: the app's epoch while it runs on etcd, else None."""
        relation = self.manager.model.get_relation(self.manager.peer_relation_name)
        if relation is None:
            return None
        app = AppView.read(relation.data[self.manager.model.app])
        if not app.readable or app.mode is not ProcessingBackend.ETCD:
            return None
        return app.epoch

    def sync_available(self) -> bool:
        """The application and this unit run on etcd (the sync lock is then the etcd lock)."""
        relation = self.manager.model.get_relation(self.manager.peer_relation_name)
        if relation is None or not self.usable() or self._etcd_epoch() is None:
            return False
        return self.manager.unit_view(relation).backend is ProcessingBackend.ETCD

    @contextlib.contextmanager
    def sync_lock(self, timeout: int | None) -> Generator[LockGrant | None, None, None]:
        """Yield an etcd LockGrant, or None when etcd failed (the caller uses its fallback).

        The token carries the epoch read before acquiring, and only if it is still the current
        one once the lock is held: if the application left etcd mode meanwhile, the lock is
        released and this is an etcd failure like any other (None).
        """
        stack = contextlib.ExitStack()
        try:
            epoch = self._etcd_epoch()
            if epoch is None:
                raise RollingOpsError("the application does not run on etcd")
            token = stack.enter_context(self._etcd_lock().sync_lock(timeout))
            if self._etcd_epoch() != epoch:
                raise RollingOpsError(f"the application left etcd epoch {epoch} while acquiring")
            fencing = make_token(epoch, token)
        except TimeoutError:
            raise  # contention, not a failure: the caller reports "busy"
        except (RollingOpsError, OSError, ValueError) as error:  # never raise on etcd's account
            stack.close()
            self.fall_back(f"sync lock: {error}")
            yield None
            return
        with stack:
            yield LockGrant(ProcessingBackend.ETCD, fencing, None, None, 0)

    # --- relation (the etcd_client contract, v1: see _contract.py) -----------------------------

    def problem(self) -> str | None:
        """Why this unit refused the provider's answer (None: accepted, not come, no relation).

        The local file first: the relation is looked up (a hook tool call) only if it says
        something.
        """
        try:
            problem = _files.read_problem(self.base_dir)
        except (OSError, RollingOpsError) as error:
            problem = f"local etcd state unreadable: {error}"
        return problem if problem is not None and self.configured() else None

    def on_relation_changed(self) -> None:
        """Check the provider's answer to our request; write the local config, or refuse it.

        A refused answer (bad endpoints, a PEM that does not parse, a user that is not our
        certificate's common name, a secret we cannot read, only answers for other request ids)
        is logged, recorded for `state`, and the local config is deleted: this unit then runs on
        (or falls back to) the peer backend. Nothing raises out of this hook.
        """
        problem = None  # stays None when the answer is used or has not come yet
        try:
            config = self._provider_config()
            if config is not None:
                _files.write_config(self.base_dir, **config)
        except (RollingOpsError, OSError) as error:
            config, problem = None, str(error)
            logger.error("etcd provider data refused, using the peer backend: %s", problem)
        try:
            if config is None:
                _files.delete_config(self.base_dir)
            _files.write_problem(self.base_dir, problem)
        except (OSError, RollingOpsError) as error:
            logger.error("could not update the local etcd state: %s", error)

    def _provider_config(self) -> dict[str, Any] | None:
        """The checked answer to our request as `write_config` arguments; None while none came.

        Raises RollingOpsError (ProviderDataError mostly) saying what is wrong.
        """
        from ._etcd_lock import lock_prefix, owner_name

        manager = self.manager
        name = manager.etcd_relation_name
        relation = manager.model.get_relation(name) if name else None
        peer = manager.model.get_relation(manager.peer_relation_name)
        # ops types Relation.app as always set, but it is None when Juju names no remote app.
        no_app = relation is not None and relation.app is None  # pyright: ignore[reportUnnecessaryComparison]
        if relation is None or no_app or peer is None or not manager.cluster_id:
            return None
        ours = peer.data[manager.model.app]
        request = _contract.parse_request(ours.get(KEY_ETCD_REQUEST))
        secret_id = ours.get(KEY_CLIENT_SECRET_ID)
        if request is None or not secret_id:
            return None  # our leader has not published a request yet
        answer = _contract.find_answer(relation.data[relation.app], request.request_id)
        if answer is None:
            return None
        user = self._secret_content(answer.secret_user, "the provider's secret-user")
        _contract.require_fields(user, ["username"], "the provider's secret-user")
        tls = self._secret_content(answer.secret_tls, "the provider's secret-tls")
        _contract.require_fields(tls, ["tls-ca"], "the provider's secret-tls")
        server_ca = _contract.check_certificates(tls["tls-ca"], "the provider's tls-ca")
        client = self._secret_content(secret_id, "our client certificate secret")
        cert, key = client.get("client-cert"), client.get("client-key")
        common_name = _contract.client_common_name(cert, key)
        if user["username"] != common_name:
            raise _contract.ProviderDataError(
                f"the provider's user {user['username'][:64]!r} is not our certificate's "
                f"common name {common_name!r}"
            )
        return {
            "endpoints": answer.endpoints,
            "prefix": lock_prefix(manager.cluster_id),
            "owner": owner_name(manager.model.uuid, manager.model.unit.name),
            "server_ca_pem": server_ca,
            "cert_pem": cert,
            "key_pem": key,
        }

    def _secret_content(self, uri: str, what: str) -> dict[str, str]:
        try:
            return dict(self.manager.model.get_secret(id=uri).get_content(refresh=True))
        except ops.ModelError as error:  # SecretNotFoundError included
            raise _contract.ProviderDataError(f"{what} ({uri}) is unreadable: {error}") from None

    def _publish_request(self, peer: ops.Relation) -> None:
        """Leader: keep one stable v1 request, publish it and grant our mTLS secret to it.

        The client certificate is made once (lazily); the request (with its salt) is kept in the
        peer application databag and renewed only when the prefix or the certificate changes.
        Whenever our databag on the etcd relation lacks that exact request (first hook, a
        re-created relation, data from an older version) the mTLS secret is granted to this
        relation instance, then the request written. Steady state: no secret or grant call.
        """
        from ._etcd_lock import lock_prefix

        manager = self.manager
        app = manager.model.app
        etcd = manager.model.get_relation(manager.etcd_relation_name or "")
        if etcd is None or manager.cluster_id is None:
            return
        prefix = lock_prefix(manager.cluster_id)
        ours = peer.data[app]
        request = _contract.parse_request(ours.get(KEY_ETCD_REQUEST))
        if not ours.get(KEY_CLIENT_SECRET_ID):
            request = _contract.new_request(prefix, self._new_credentials(ours))
        elif request is None or request.resource != prefix:
            mtls = request.secret_mtls if request is not None else self._mtls_uri(ours)
            request = _contract.new_request(prefix, mtls)
        if ours.get(KEY_ETCD_REQUEST) != request.to_json():
            ours[KEY_ETCD_REQUEST] = request.to_json()
        bag = etcd.data[app]
        wanted = request.databag()
        if all(bag.get(key) == value for key, value in wanted.items()):
            return
        try:
            mtls = manager.model.get_secret(id=request.secret_mtls)
        except ops.SecretNotFoundError:
            del ours[KEY_ETCD_REQUEST]  # its secret is gone: the next leader hook makes a new one
            raise
        mtls.grant(etcd)
        bag.update(wanted)
        logger.info("published etcd request %s for prefix %s", request.request_id, prefix)

    def _new_credentials(self, ours: ops.RelationDataContent) -> str:
        """Make our client certificate; store it (and its public half for the provider).

        Returns the URI of the mTLS secret (field `mtls-cert`, the certificate alone).
        """
        from ._certs import generate_client_credentials

        model = self.manager.model
        common_name = f"rollingops-{model.uuid[:8]}-{model.app.name}"
        content = generate_client_credentials(common_name)
        ours[KEY_CLIENT_SECRET_ID] = self._put_secret(CLIENT_SECRET_LABEL, content)
        return self._put_secret(MTLS_SECRET_LABEL, {"mtls-cert": content["client-cert"]})

    def _mtls_uri(self, ours: ops.RelationDataContent) -> str:
        """The mTLS secret's URI, read as its owner (a label lookup's `.id` is None)."""
        model = self.manager.model
        try:
            return _secret_uri(model.get_secret(label=MTLS_SECRET_LABEL).get_info())
        except ops.SecretNotFoundError:
            pass  # made by an older version without it: make it from the client certificate
        content = model.get_secret(id=ours[KEY_CLIENT_SECRET_ID]).get_content(refresh=True)
        if not content.get("client-cert"):
            raise RollingOpsInvalidSecretContentError("our client secret lacks client-cert")
        return self._put_secret(MTLS_SECRET_LABEL, {"mtls-cert": content["client-cert"]})

    def _put_secret(self, label: str, content: dict[str, str]) -> str:
        """Create our app secret `label` with `content` (or update it if it exists); its URI."""
        model = self.manager.model
        try:
            secret = model.get_secret(label=label)
        except ops.SecretNotFoundError:
            return _secret_uri(model.app.add_secret(content, label=label))
        secret.set_content(content)
        return _secret_uri(secret.get_info())

    def on_relation_broken(self) -> None:
        """The etcd relation is gone: delete the local config and fall back."""
        with contextlib.suppress(OSError, RollingOpsError):
            _files.delete_config(self.base_dir)
            _files.write_problem(self.base_dir, None)
        self.fall_back("the etcd relation was removed")

    def on_secret_changed(self, event: Any) -> None:
        """A new revision of a provider secret (user or CA): check the answer again."""
        self.on_relation_changed()


def _secret_uri(secret: ops.Secret | ops.SecretInfo) -> str:
    uri = secret.id
    if not _contract.is_secret_uri(uri):
        raise RollingOpsError(f"Juju gave no URI for secret {secret!r}")
    return uri
