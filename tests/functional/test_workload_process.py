"""The real demo service, run as a local process through workload.py's process manager.

Nothing is mocked: the service binds a real port on 127.0.0.1, warms up, reports ready on a pipe,
answers /health and /version, and stops on SIGTERM.
"""

import socket

import pytest

import workload


def _health() -> dict:
    answer = workload.health()
    assert answer is not None, "the service does not answer /health"
    return answer


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def service(tmp_path, monkeypatch):
    monkeypatch.setenv("COORDINATED_OPS_ROOT", str(tmp_path))
    monkeypatch.setenv("COORDINATED_OPS_SERVICE_MANAGER", "process")
    workload.install("1.0.0")
    workload.ensure_config(_free_port(), 0.2)
    yield
    workload.stop()


def test_install_start_health_version(service):
    assert workload.is_installed()
    assert workload.get_version() == "1.0.0"
    assert workload.health() is None  # installed, not started: nothing answers
    workload.start()
    assert workload.is_running()
    assert _health()["version"] == "1.0.0"
    assert workload.served_version() == "1.0.0"


def test_restart_gives_a_new_process_that_serves_the_new_version(service):
    workload.start()
    first_pid = _health()["pid"]
    workload.install("1.1.0")
    assert workload.served_version() == "1.0.0"  # installing does not restart
    workload.restart()
    answer = _health()
    assert answer["pid"] != first_pid
    assert answer["version"] == "1.1.0"


def test_stop_means_not_serving(service):
    workload.start()
    workload.stop()
    assert not workload.is_running()
    assert workload.health() is None


def test_start_fails_clearly_when_the_service_cannot_bind(service, tmp_path):
    port = int(workload._read_env()["PORT"])
    with socket.socket() as blocker:
        blocker.bind(("0.0.0.0", port))
        blocker.listen()
        with pytest.raises(workload.WorkloadError, match="did not report ready"):
            workload.start()


def test_ensure_config_reports_changes(service):
    port = int(workload._read_env()["PORT"])
    assert workload.ensure_config(port, 0.2) is False
    assert workload.ensure_config(port, 0.3) is True
