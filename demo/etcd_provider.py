"""A stand-in for charmed-etcd's provider side of `etcd_client` v1 (etcd_provider_charm/ metadata).

It answers what charmed-etcd 3.6 answers and refuses what it refuses (demo/etcd_contract.py is
the judge of a request):

- a request whose `secret-mtls` is missing, empty or not `secret:...` makes its hook raise, as the
  real provider's does: the stand-in's unit goes into error and the simulation fails loudly;
- a request it cannot parse (not v1, mixed with v0 fields, bad salt or request id) is logged and
  never answered;
- the mTLS secret must be readable (granted to this relation instance): reading it otherwise
  raises in the hook, as an unguarded `secret-get` does;
- the answer is nested: its application databag holds `requests`, a JSON list with one entry
  per accepted request (`resource`, `salt`, `request-id` echoed, `endpoints`, `secret-user`,
  `secret-tls`, `version`), and no top-level `endpoints` / `tls-ca`. `secret-user` (fields
  `username` = the common name of the requirer's certificate, `uris`) and `secret-tls` (fields
  `tls-ca`, `tls`) are secrets of this application, granted to the relation;
- the user named by that common name may read and write under the requested `resource` prefix
  only (`grant_access`): the simulator's etcd refuses every other key, as RBAC does.

The etcd behind it is the simulator's in-memory `FakeEtcd`; the addresses are never dialled.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib

import ops

from .etcd_contract import Unanswerable, check_requirer_bag

logger = logging.getLogger(__name__)

SPEC_DIR = pathlib.Path(__file__).with_name("etcd_provider_charm")
ENDPOINTS = "10.99.0.1:2379,10.99.0.2:2379"
URIS = "https://10.99.0.1:2379,https://10.99.0.2:2379"
ETCD_VERSION = "3.6.13"


def grant_access(username: str, prefix: str) -> None:
    """Give user `username` readwrite on keys under `prefix`, as charmed-etcd does for a request.

    The simulator's etcd installs the real grant (`etcd_world.routing`); with no etcd behind
    the provider there is nothing to grant.
    """


@functools.cache
def server_pems() -> dict[str, str]:
    """A real CA and certificate PEM for the simulated etcd servers (made once per process)."""
    from charmlibs.rollingops._certs import generate_client_credentials

    creds = generate_client_credentials("simulated-etcd-server")
    return {"tls-ca": creds["client-ca"], "tls": creds["client-cert"]}


def common_name(pem: str) -> str:
    """The common name of the first certificate in `pem` (the leaf)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    leaf = x509.load_pem_x509_certificates(pem.encode())[0]
    return str(leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


class EtcdProviderCharm(ops.CharmBase):
    """Answers every valid v1 request of every requirer, in its application databag."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        events = self.on["etcd-client"]
        for event in (events.relation_joined, events.relation_changed, self.on.leader_elected):
            framework.observe(event, self._answer)

    def _answer(self, _: ops.EventBase) -> None:
        if not self.unit.is_leader():
            return
        for relation in self.model.relations["etcd-client"]:
            if relation.app is not None:
                self._answer_relation(relation)

    def _answer_relation(self, relation: ops.Relation) -> None:
        assert relation.app is not None
        try:
            requests = check_requirer_bag(relation.data[relation.app])
        except Unanswerable as error:
            logger.error("etcd-client request of %s not answered: %s", relation.app.name, error)
            requests = []
        bag = relation.data[self.app]
        previous = {a.get("request-id"): a for a in _answers(bag)}
        answers = [self._answer_one(relation, r, previous.get(r["request-id"])) for r in requests]
        encoded = json.dumps(answers, sort_keys=True)
        if answers and bag.get("requests") != encoded:
            bag["requests"] = encoded
        elif not answers and "requests" in bag:
            del bag["requests"]

    def _answer_one(self, relation: ops.Relation, request: dict, previous: dict | None) -> dict:
        mtls = self.model.get_secret(id=request["secret-mtls"]).get_content(refresh=True)
        username = common_name(mtls["mtls-cert"])
        user_content = {"username": username, "uris": URIS}
        grant_access(username, request["resource"])  # charmed-etcd: a role on the prefix
        if previous is not None:
            user_id, tls_id = previous["secret-user"], previous["secret-tls"]
            user = self.model.get_secret(id=user_id)
            if user.get_content(refresh=True) != user_content:
                user.set_content(user_content)
        else:
            user = self.app.add_secret(user_content)
            tls = self.app.add_secret(server_pems())
            user.grant(relation)
            tls.grant(relation)
            user_id, tls_id = user.id, tls.id
        return {
            "resource": request["resource"],
            "salt": request["salt"],
            "request-id": request["request-id"],
            "endpoints": ENDPOINTS,
            "secret-user": user_id,
            "secret-tls": tls_id,
            "version": ETCD_VERSION,
        }


def _answers(bag: ops.RelationDataContent) -> list[dict]:
    try:
        answers = json.loads(bag.get("requests") or "[]")
    except ValueError:
        return []
    return [a for a in answers if isinstance(a, dict)] if isinstance(answers, list) else []
