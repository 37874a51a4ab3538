"""A Docker engine and a registry for image tests, without Docker (../shared/testing.md).

Real parts: podman's Docker-compatible API (`podman system service`, which the docker SDK
talks to as it would to dockerd), the CNCF `docker-registry` with htpasswd auth, and an HTTP
server for tarball build contexts. Stand-in: the base image is a busybox-static rootfs
imported into podman (nothing can be pulled from the internet here).

Everything lives in one temp dir with private podman config/storage; only the processes
started here are stopped. Debian packages: podman runc docker-registry busybox-static
(scripts/test installs them).
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import docker
import httpx

from sierra_operator.local.server import free_port

BASE_IMAGE = "localhost/busybox:base"
USER, PASSWORD = "lab", "pw-Zq81-never-logged"
TOOLS = ("podman", "docker-registry", "runc", "busybox")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


@dataclass
class ImageEnv:
    """podman's Docker API + an authenticated registry + a context server, in ``root``."""

    root: Path
    docker_host: str = ""
    registry: str = ""
    contexts_url: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _httpd: http.server.ThreadingHTTPServer | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "CONTAINERS_CONF": str(self.root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.root / "registries.conf"),
        }

    def start(self) -> ImageEnv:
        reg_port = free_port()
        self.registry = f"127.0.0.1:{reg_port}"
        (self.root / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            '[engine]\nruntime = "runc"\n'
        )
        (self.root / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{self.root}/graph"\n'
            f'runroot = "{self.root}/run"\n'
        )
        (self.root / "registries.conf").write_text(
            f'[[registry]]\nlocation = "{self.registry}"\ninsecure = true\n'
        )
        sock = self.root / "podman.sock"
        self.docker_host = f"unix://{sock}"
        self._spawn("podman", ["podman", "system", "service", "--time=0", self.docker_host])
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        (self.root / "htpasswd").write_text(f"{USER}:{hashed}\n")
        (self.root / "registry.yml").write_text(
            "version: 0.1\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root}/registry\n"
            f"http:\n  addr: {self.registry}\n"
            f"auth:\n  htpasswd:\n    realm: test\n    path: {self.root}/htpasswd\n"
        )
        self._spawn("registry", ["docker-registry", "serve", str(self.root / "registry.yml")])
        self._serve_contexts()
        self._wait_ready()
        self._import_base()
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.root / f"{name}.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                argv,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def _serve_contexts(self) -> None:
        (self.root / "contexts").mkdir()
        handler = functools.partial(_QuietHandler, directory=str(self.root / "contexts"))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.contexts_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with docker.APIClient(base_url=self.docker_host) as api:
                    api.version()
                if httpx.get(f"http://{self.registry}/v2/", timeout=2).status_code == 401:
                    return
            except Exception:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"podman or the registry did not start; logs in {self.root}")

    def _import_base(self) -> None:
        """busybox-static as a one-file rootfs, imported as BASE_IMAGE."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(shutil.which("busybox") or "/bin/busybox", arcname="bin/busybox")
            for applet in ("sh", "echo", "cat", "true", "false", "mkdir", "ls"):
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        subprocess.run(
            ["podman", "import", "-", BASE_IMAGE],
            input=buf.getvalue(),
            env={**os.environ, **self.env},
            check=True,
            capture_output=True,
        )

    def context(self, name: str, files: dict[str, str]) -> str:
        """Publish a .tar.gz build context; returns its URL."""
        path = self.root / "contexts" / f"{name}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for fname, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(fname)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return f"{self.contexts_url}/{path.name}"

    def registry_digest(self, name: str, tag: str) -> str | None:
        """What the registry itself says ``name:tag`` is."""
        resp = httpx.head(
            f"http://{self.registry}/v2/{name}/manifests/{tag}",
            auth=(USER, PASSWORD),
            headers={
                "Accept": "application/vnd.oci.image.manifest.v1+json, "
                "application/vnd.docker.distribution.manifest.v2+json"
            },
        )
        return resp.headers.get("docker-content-digest") if resp.status_code == 200 else None

    def dockerconfigjson(self, password: str = PASSWORD) -> str:
        import base64
        import json

        auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
        return json.dumps({"auths": {self.registry: {"auth": auth}}})

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def start_image_env() -> ImageEnv:
    return ImageEnv(Path(tempfile.mkdtemp(prefix="sierra-img-"))).start()
