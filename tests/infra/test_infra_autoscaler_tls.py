"""The autoscaler's serving certificate renews in the cluster (issue 24): cert-manager
issues it and injects its CA into the APIServices, the APIServices wait for a ready
autoscaler, and the liveness check restarts an autoscaler serving a replaced cert."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi_fleet import after_deploy, run_stack

from infra.workloads import AUTOSCALER_LIVENESS
from iofleet.processes import free_port
from tests.autoscaler.certs import CA, Issued


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[int, Issued, CA]]:
    """An HTTPS /healthz on 127.0.0.1 serving a cert issued by a test CA."""
    ca = CA(tmp_path, "iofleet-autoscaler-ca")
    issued = ca.issue("127.0.0.1", server=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.cert, issued.key)
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Healthz)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port, issued, ca
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _probe(port: int, tls_dir: Path) -> int:
    script = AUTOSCALER_LIVENESS.format(port=port, tls_dir=tls_dir)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=20, check=False
    )
    return done.returncode


def test_liveness_restarts_an_autoscaler_serving_a_replaced_certificate(
    serving: tuple[int, Issued, CA], tmp_path: Path
) -> None:
    port, issued, ca = serving
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    shutil.copy(issued.cert, mounted / "tls.crt")
    assert _probe(port, mounted) == 0  # serves what is mounted
    renewed = ca.issue("127.0.0.1", server=True)  # cert-manager renewed the Secret
    shutil.copy(renewed.cert, mounted / "tls.crt")
    assert _probe(port, mounted) == 1  # still the old one in memory: restart it


def test_liveness_fails_when_nothing_answers(tmp_path: Path) -> None:
    assert _probe(free_port(), tmp_path) != 0


@pulumi.runtime.test
def test_serving_cert_is_issued_and_renewed_in_the_cluster() -> Any:
    fleet = run_stack("prod-us-east-1")

    def check() -> None:
        (release,) = [
            r
            for r in fleet.of_type("kubernetes:helm.sh/v3:Release")
            if r.inputs["chart"] == "cert-manager"
        ]
        assert release.inputs["values"]["crds"]["enabled"] is True
        assert release.inputs["createNamespace"] is True
        certs = {
            c.inputs["metadata"]["name"]: c
            for c in fleet.resources
            if c.inputs.get("kind") == "Certificate"
        }
        serving = certs["iofleet-autoscaler"]
        spec = serving.inputs["spec"]
        assert spec["secretName"] == "iofleet-autoscaler-tls"
        assert (spec["duration"], spec["renewBefore"]) == ("2160h", "720h")
        assert "iofleet-autoscaler.iofleet.svc" in spec["dnsNames"]
        assert release.name in fleet.dependencies["autoscaler-selfsigned"]
        # No certificate material in the program or its state any more.
        assert not [r for r in fleet.resources if r.type.startswith("tls:")]
        for api in fleet.kubernetes("APIService"):
            notes = api.inputs["metadata"]["annotations"]
            assert notes["cert-manager.io/inject-ca-from"] == "iofleet/iofleet-autoscaler"
            assert "caBundle" not in api.inputs["spec"]
            assert {"autoscaler-deployment", serving.name} <= fleet.dependencies[api.name]
        assert serving.name in fleet.dependencies["autoscaler-deployment"]
        (deployment,) = fleet.kubernetes("Deployment", "iofleet-autoscaler")
        (container,) = deployment.inputs["spec"]["template"]["spec"]["containers"]
        assert "get_server_certificate" in container["livenessProbe"]["exec"]["command"][-1]
        # The expiry alert's metrics: cert-manager's Service (chart v1.21.1: port
        # http-metrics), scraped once the namespace the release makes exists.
        (monitor,) = fleet.kubernetes("ServiceMonitor", "cert-manager")
        assert monitor.inputs["metadata"]["namespace"] == "cert-manager"
        assert monitor.inputs["spec"]["endpoints"][0]["port"] == "http-metrics"
        assert "autoscaler-cert-manager" in fleet.dependencies[monitor.name]

    return after_deploy(check)
