"""`iofleet render` against what runs: node ids read from real servers, HAProxy under a
low fd limit, and the templates rendered from an installed wheel."""

from __future__ import annotations

import asyncio
import resource
import shutil
import subprocess
import sys
import venv
from pathlib import Path

from typer.testing import CliRunner

from iofleet.balancers import nginx_options, start_nginx
from iofleet.cli import app
from iofleet.node_ids import resolve_backends
from iofleet.processes import free_port, stop_pid, tcp_answers, wait_until
from tests.support.cluster import NODES, Crowd
from tests.support.jsclient import JsClients
from tests.support.procs import ServerProcess

REPO = Path(__file__).resolve().parents[2]


def specs(servers: list[ServerProcess]) -> list[str]:
    return [f"127.0.0.1:{s.port}:{s.admin_port}" for s in servers]


def test_render_names_backends_by_the_servers_node_ids(servers: list[ServerProcess]) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["render", "nginx", *(f"-b{spec}" for spec in specs(servers))])
    assert result.exit_code == 0, result.output
    for node in NODES:
        assert f"{node} iofleet_node_{node};" in result.output

    wrong = f"node1=127.0.0.1:{servers[0].port}:{servers[0].admin_port}"
    result = runner.invoke(app, ["render", "haproxy", "-b", wrong])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"iofleet render: backend 127.0.0.1:{servers[0].port} runs node id 'n1', not 'node1'"
    ]

    # A server that does not answer: one line, and the way out.
    dead = f"127.0.0.1:{free_port()}:{free_port()}"
    result = runner.invoke(app, ["render", "haproxy", "-b", dead])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "--no-ask-servers" in result.output


async def test_polling_clients_stay_sticky_through_nginx_rendered_for_them(
    servers: list[ServerProcess], js: JsClients, tmp_path: Path
) -> None:
    """Servers run as n1..n3; the backends are given without names, as a user would."""
    backends = await asyncio.to_thread(resolve_backends, specs(servers))
    options = nginx_options("127.0.0.1", free_port(), backends, tmp_path)
    balancer = await asyncio.to_thread(start_nginx, options, tmp_path)
    try:
        crowd = Crowd(js, balancer.url, cookies=False)
        names = [f"poll{i}" for i in range(15)]
        for name in names:
            await crowd.open(name, transports=["polling"])
        await crowd.wait_connected(names)
        await crowd.join(names, "all")
        await js.emit(names[0], "chat:message", {"room": "all", "text": "hi"})
        await crowd.wait_received(names, "hi")
        await asyncio.sleep(3)  # a few 1 s ping cycles: each poll must find its server
        assert crowd.failures(names) == []
        assert all(len(crowd.hellos(n)) == 1 for n in names)
    finally:
        balancer.stop()


def _run_haproxy_with_fd_limit(config: str, tmp_path: Path, limit: int) -> tuple[bool, str]:
    """Start HAProxy with a hard fd limit of `limit`; (listening?, its output)."""
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    log = tmp_path / "haproxy.log"

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    with log.open("wb") as out:
        process = subprocess.Popen(
            ["haproxy", "-f", str(path)], stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=lower_limit,  # noqa: PLW1509 (the test starts no threads before it)
        )  # fmt: skip
    try:
        port = int(config.split("bind 127.0.0.1:")[1].split(maxsplit=1)[0])
        try:
            wait_until(lambda: tcp_answers("127.0.0.1", port), 10, "haproxy", process)
            return True, log.read_text()
        except RuntimeError:
            return False, log.read_text()
    finally:
        stop_pid(process.pid, grace=5, process=process)


def test_haproxy_starts_under_a_low_fd_hard_limit(tmp_path: Path) -> None:
    runner = CliRunner()
    base = [
        "render", "haproxy", "--listen", f"127.0.0.1:{free_port()}", "--admin-socket", "",
        "-b", "127.0.0.1:1", "--no-ask-servers",
    ]  # fmt: skip
    derived = runner.invoke(app, base)
    assert derived.exit_code == 0, derived.output
    assert "maxconn" not in "".join(
        line for line in derived.output.splitlines() if not line.lstrip().startswith("#")
    )
    started, output = _run_haproxy_with_fd_limit(derived.output, tmp_path, 4096)
    assert started, output

    fixed = runner.invoke(app, [*base, "--maxconn", "100000"])
    assert "maxconn 100000" in fixed.output
    assert "fd limit (ulimit -n) of" in fixed.output  # the comment says what it needs
    started, output = _run_haproxy_with_fd_limit(fixed.output, tmp_path, 4096)
    assert not started, output


def test_render_works_from_an_installed_wheel(tmp_path: Path) -> None:
    """Build the wheel, install it (no deps: the test venv lends its own) outside the repo."""
    # Build from a copy of what a release holds, so nothing lands in the repo (build/).
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("server", "iofleet"):
        shutil.copytree(
            REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    dist = tmp_path / "dist"
    # uv, the installer `make setup` bootstraps (the test venv, made by `uv sync`, has no pip).
    uv = REPO / ".uv" / "bin" / "uv"
    build = subprocess.run(
        [str(uv), "build", "--wheel", "--quiet", "--out-dir", str(dist), str(source)],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next(dist.glob("iofleet-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # The runtime dependencies come from this test venv's site-packages (offline, fast);
    # the repo itself is not on the path, so only the wheel's files can answer.
    site = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ours = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "borrowed.pth").write_text("\n".join(ours) + "\n")
    shutil.unpack_archive(wheel, site, format="zip")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for kind in ("haproxy", "nginx"):
        result = subprocess.run(
            [str(python), "-c", "from iofleet.cli import app; app()", "render", kind,
             "-b", "a=127.0.0.1:8001", "--no-ask-servers"],
            capture_output=True, text=True, timeout=60, check=False, cwd=outside,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "127.0.0.1:8001" in result.stdout
    where = subprocess.run(
        [str(python), "-c", "import iofleet; print(iofleet.__file__)"],
        capture_output=True, text=True, check=True, cwd=outside,
    ).stdout  # fmt: skip
    assert where.startswith(site), where
