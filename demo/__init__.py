"""The demo: the real charm on a simulated Juju controller (`python -m demo`, `tox -e demo`).

It holds what the demo and the soaks need on top of the simulator (`jujusim`): the engines
registry (one entry per coordination engine the charm offers), the in-memory fakes of the demo
service and of etcd, and a stand-in etcd provider charm.
"""
