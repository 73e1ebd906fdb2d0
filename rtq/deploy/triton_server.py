"""A real `tritonserver` on loopback ports: its verdict on a model folder, and serving for tests and users.

The server comes from `nvidia-pytriton`'s wheel, installed by `./workflow.sh triton-setup` into its
own venv (it needs numpy<2). The wheel ships only the Python backend, and its stub apart from it
(`python_backend_stubs/<python version>/`), so the backend folder the server is pointed at is
assembled here from the two. The stub embeds the venv's Python: PYTHONPATH gives it the venv's
packages (numpy, onnxruntime, openvino), LD_LIBRARY_PATH the wheel's bundled libraries and the
libpython of the venv's own interpreter (the system's is used where that has none).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rtq.errors import UserError
from rtq.paths import PROJECT_ROOT

TRITON_VENV = PROJECT_ROOT / ".venv-triton"
SETUP_FIX = "run ./workflow.sh triton-setup"
# Logged at start on every machine without a CUDA driver; it says nothing about the models.
NO_GPU_NOISE = "CudaDriverHelper has not been initialized."
_LOG_LINE = re.compile(r'^[EWI]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "?(?P<text>.*?)"?$')


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of the server live in the triton venv."""

    venv: Path
    server: Path
    libs: Path
    site_packages: Path
    python_version: str  # "3.11": which stub the venv's Python needs

    @property
    def backend_dir(self) -> Path:
        return self.venv / "rtq-backends"


def find_triton(venv: Path = TRITON_VENV) -> TritonInstall | None:
    """The server in `venv`, or None when `./workflow.sh triton-setup` has not been run."""
    found = sorted(venv.glob("lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not found:
        return None
    server = found[-1]
    site = server.parents[3]
    version = site.parent.name.removeprefix("python")
    return TritonInstall(venv, server, site / "nvidia_pytriton.libs", site, version)


def require_triton(venv: Path = TRITON_VENV) -> TritonInstall:
    install = find_triton(venv)
    if install is None:
        raise UserError(f"no tritonserver in {str(venv)!r}: {SETUP_FIX}")
    return install


def assemble_backends(install: TritonInstall) -> Path:
    """`<venv>/rtq-backends/python/`: the wheel's Python backend plus the stub for the venv's Python."""
    dist = install.server.parents[1]
    stub = dist / "python_backend_stubs" / install.python_version / "triton_python_backend_stub"
    if not stub.is_file():
        raise UserError(f"the triton venv's Python {install.python_version} has no backend stub in {dist}: "
                        f"recreate it with a Python from 3.8 to 3.13 ({SETUP_FIX})")
    target = install.backend_dir / "python"
    target.mkdir(parents=True, exist_ok=True)
    for source in [*sorted((dist / "backends" / "python").glob("*.*")), stub]:
        if source.is_file() and not (target / source.name).is_file():
            shutil.copy2(source, target / source.name)
    return install.backend_dir


def base_python_lib(install: TritonInstall) -> Path:
    """The lib folder of the Python the venv was made from, which holds its libpython for the stub."""
    for line in (install.venv / "pyvenv.cfg").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return Path(value.strip()).parent / "lib"
    return install.venv / "lib"


def server_env(install: TritonInstall) -> dict[str, str]:
    """The environment the server and its Python stubs need (see the module docstring)."""
    env = dict(os.environ)
    libs = (str(install.libs), str(base_python_lib(install)), env.get("LD_LIBRARY_PATH", ""))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    env["PYTHONPATH"] = str(install.site_packages)
    env["PATH"] = os.pathsep.join((str(install.venv / "bin"), env.get("PATH", "")))
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(
    install: TritonInstall, repo: Path, models: Sequence[str], http: int, grpc: int
) -> list[str]:
    """Explicit model control and no auto-completion: the server checks the configs as written."""
    return [
        str(install.server), f"--model-repository={repo.resolve()}",
        f"--backend-directory={assemble_backends(install)}",
        "--model-control-mode=explicit", *[f"--load-model={m}" for m in models],
        "--disable-auto-complete-config", "--exit-on-error=true", "--strict-readiness=true",
        "--http-address=127.0.0.1", f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
        "--allow-metrics=false", "--log-verbose=0",
    ]


def log_errors(log: str) -> list[str]:
    """The server's error lines without their prefix (time, thread, source file)."""
    found = []
    for line in log.splitlines():
        match = _LOG_LINE.match(line.strip())
        if line.startswith("E") and match and match.group("text") != NO_GPU_NOISE:
            found.append(match.group("text").replace('\\"', '"'))
    return found


@dataclass
class RunningServer:
    """A started server: its loopback URLs, its log file and its process."""

    http_url: str
    grpc_url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as reply:
                return int(reply.status) == 200
        except OSError:
            return False

    def stop(self) -> None:
        """End the server and the stubs it started (its own process group)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def start_server(install: TritonInstall, repo: Path, models: Sequence[str], log_dir: Path) -> RunningServer:
    http, grpc = free_port(), free_port()
    log_path = log_dir / "tritonserver.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            server_command(install, repo, models, http, grpc), stdout=log_file, stderr=subprocess.STDOUT,
            env=server_env(install), start_new_session=True,
        )
    return RunningServer(f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", log_path, process)


def wait_ready(server: RunningServer, timeout_s: float) -> bool:
    """True once the server is ready (every model loaded); False when it exits or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        if server.ready():
            return True
        time.sleep(0.25)
    return False


@contextlib.contextmanager
def _started(repo: str | Path, models: Sequence[str], venv: Path) -> Iterator[RunningServer]:
    """A server logging into a temporary folder, stopped (stubs too) when the block ends."""
    install = require_triton(venv)
    with tempfile.TemporaryDirectory(prefix="rtq-triton-") as tmp:
        server = start_server(install, Path(repo), models, Path(tmp))
        try:
            yield server
        finally:
            server.stop()


@dataclass(frozen=True)
class Verdict:
    """Whether the server loaded the models, and what it said when it did not."""

    loaded: bool
    errors: list[str]
    log: str

    @property
    def message(self) -> str:
        return "loaded" if self.loaded else " | ".join(self.errors) or "server did not start (see its log)"


def server_verdict(repo: str | Path, models: Sequence[str], timeout_s: float = 120.0,
                   venv: Path = TRITON_VENV) -> Verdict:
    """Start a server that must load `models` from `repo`, and report whether it could."""
    with _started(repo, models, venv) as server:
        loaded = wait_ready(server, timeout_s)
        server.stop()  # the whole log, shutdown included, before its folder goes
        log = server.log
    return Verdict(loaded, log_errors(log), log)


@contextlib.contextmanager
def serving(repo: str | Path, models: Sequence[str], timeout_s: float = 120.0,
            venv: Path = TRITON_VENV) -> Iterator[RunningServer]:
    """A server on loopback ports with `models` loaded, stopped when the block ends."""
    with _started(repo, models, venv) as server:
        if not wait_ready(server, timeout_s):
            errors = log_errors(server.log) or ["not ready in time"]
            raise UserError(f"tritonserver did not load {list(models)} from {str(repo)!r}: {errors[0]}")
        yield server
