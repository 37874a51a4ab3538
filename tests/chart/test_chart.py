"""The Helm chart, rendered by the real helm binary (scripts/install_helm.py puts it in .venv).

Every rendered object must parse as the Kubernetes kind it claims, field for field (a
misspelled or misplaced field fails the round trip through the client's models); the RBAC,
CRD, version and settings the chart carries must be the code's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient

from sierra_operator import __version__
from sierra_operator.cluster import rbac
from sierra_operator.cluster.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sierra-operator"
HELM = shutil.which("helm", path=str(Path(sys.executable).parent)) or shutil.which("helm")

pytestmark = pytest.mark.unit

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "external-prefect": [
        "--set", "prefect.server.enabled=false",
        "--set", "prefect.apiUrl=https://prefect.example.org/api",
        "--set", "prefect.apiKeySecret.name=prefect-cloud",
    ],
    "dind": ["--set", "docker.dind.enabled=true"],
    "docker-host-namespaced": [
        "--set", "docker.host=tcp://buildkit.builds:2375",
        "--set", "operator.watchNamespaces={lab-a,lab-b}",
        "--set", "operator.workerImage=registry.example.org/worker:1",
    ],
    "postgresql-bundled": ["--set", "prefect.server.database.type=postgresql"],
    "postgresql-existing": [
        "--set", "prefect.server.database.type=postgresql",
        "--set", "prefect.server.database.postgresql.existingSecret.name=prefect-db",
    ],
}  # fmt: skip


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None, "no helm: `python scripts/install_helm.py` (scripts/test runs it)"
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=check)


def render(*flags: str) -> list[dict[str, Any]]:
    out = helm("template", "sierra-operator", str(CHART), "-n", "sierra-system", *flags).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def operator_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "sierra-operator"]
    return dep


def operator_containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        c["name"]: c for c in operator_deployment(docs)["spec"]["template"]["spec"]["containers"]
    }


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return operator_containers(docs)["operator"]


class _Response:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.data = json.dumps(doc)


def _model_name(doc: dict[str, Any]) -> str:
    version = doc["apiVersion"].split("/")[-1]
    return f"{version.capitalize()}{doc['kind']}"


def _prune(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _prune(v) for k, v in node.items() if v is not None and v != {} and v != []}
    if isinstance(node, list):
        return [_prune(v) for v in node]
    return node


async def round_trip(docs: list[dict[str, Any]]) -> list[Any]:
    """Each object through the client's model of its kind and back."""
    async with ApiClient() as api:
        return [
            api.sanitize_for_serialization(api.deserialize(_Response(doc), _model_name(doc)))
            for doc in docs
        ]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lint_and_every_object_parses_as_its_kind(variant: str) -> None:
    lint = helm("lint", "--strict", str(CHART), *VARIANTS[variant], check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(*VARIANTS[variant])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Pod"} <= kinds
    for doc, back in zip(docs, asyncio.run(round_trip(docs)), strict=True):
        assert _prune(back) == _prune(doc), f"{doc['kind']} {doc['metadata']['name']}: fields lost"


def test_chart_crds_are_the_repos_crds() -> None:
    chart_crds = sorted(p.name for p in (CHART / "crds").iterdir())
    assert chart_crds == sorted(p.name for p in (REPO / "crds").iterdir())
    for name in chart_crds:
        assert (CHART / "crds" / name).read_text() == (REPO / "crds" / name).read_text(), (
            f"charts/sierra-operator/crds/{name} differs: copy crds/{name} over it"
        )


def test_cluster_role_is_exactly_the_codes_calls() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "sierra_operator.cli", "rbac"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (CHART / "files" / "rbac-rules.yaml").read_text() == generated, (
        "regenerate: sierra-operator rbac > charts/sierra-operator/files/rbac-rules.yaml"
    )
    (role,) = by_kind(render(), "ClusterRole")
    assert rbac.calls_of(role["rules"]) == rbac.operator_calls()
    assert not any("*" in v for rule in role["rules"] for v in rule.values()), "no wildcards"
    (binding,) = by_kind(render(), "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "sierra-operator", "namespace": "sierra-system"}
    ]
    without = render("--set", "rbac.create=false")
    assert not by_kind(without, "ClusterRole") and not by_kind(without, "ClusterRoleBinding")


def test_versions_agree() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["version"] == chart["appVersion"] == project["version"] == __version__


def test_operator_reads_the_settings_the_chart_gives_it() -> None:
    docs = render(*VARIANTS["docker-host-namespaced"])
    container = operator_container(docs)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = OperatorSettings.from_env(env)
    assert settings.namespaces == ["lab-a", "lab-b"]
    assert settings.worker_image == "registry.example.org/worker:1"
    (server,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-prefect")]
    port = server["spec"]["ports"][0]["port"]
    name = server["metadata"]["name"]
    assert settings.prefect_api_url == f"http://{name}.sierra-system.svc:{port}/api"
    assert env["DOCKER_HOST"] == "tcp://buildkit.builds:2375"
    default = OperatorSettings.from_env(
        {e["name"]: e["value"] for e in operator_container(render())["env"] if "value" in e}
    )
    assert default.namespaces == [] and default.worker_image.endswith(f":{__version__}")


def test_external_prefect_uses_its_url_and_key_from_a_secret() -> None:
    docs = render(*VARIANTS["external-prefect"])
    assert not [d for d in docs if "prefect-server" in json.dumps(d.get("metadata", {}))]
    env = {e["name"]: e for e in operator_container(docs)["env"]}
    assert env["SIERRA_OPERATOR_PREFECT_API_URL"]["value"] == "https://prefect.example.org/api"
    assert env["PREFECT_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "prefect-cloud",
        "key": "api-key",
    }
    assert "value" not in env["PREFECT_API_KEY"], "the key itself never appears in the manifest"


def test_operator_pod_is_locked_down_and_probed() -> None:
    container = operator_container(render())
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    dep = operator_deployment(render())
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert dep["spec"]["strategy"]["type"] == "Recreate", "never two operators at once"
    liveness = container["args"][container["args"].index("--liveness") + 1]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
        assert liveness.endswith(f":{container['ports'][0]['containerPort']}/healthz")
    containers = operator_containers(render(*VARIANTS["dind"]))
    assert containers["dind"]["securityContext"]["privileged"] is True
    env = {e["name"]: e.get("value") for e in containers["operator"]["env"]}
    assert env["DOCKER_HOST"] == "tcp://127.0.0.1:2375"


def test_helm_test_hook_checks_operator_and_prefect() -> None:
    (pod,) = by_kind(render(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    urls = [a for a in pod["spec"]["containers"][0]["args"] if a.startswith("http://")]
    assert any(u.endswith("/healthz") for u in urls) and any(
        u.endswith("/api/health") for u in urls
    )


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--set", "operator.logLevel=LOUD"], ["logLevel", "INFO"]),
        (["--set", "operator.loglevel=INFO"], ["loglevel"]),
        (["--set", "operator.reconcileSeconds=0"], ["reconcileSeconds"]),
        (["--set", "prefect.apiUrl=prefect:4200"], ["apiUrl"]),
        (["--set", "prefect.server.enabled=false"], ["prefect.apiUrl", "prefect.server.enabled"]),
        (
            ["--set", "docker.dind.enabled=true", "--set", "docker.host=tcp://x:2375"],
            ["docker.host"],
        ),
        (["--set", "prefect.server.database.type=mysql"], ["database/type", "postgresql"]),
        (
            ["--set", "prefect.server.database.postgresql.existingSecret.name=db"],
            ["prefect.server.database.postgresql.existingSecret.name", "type=postgresql"],
        ),
        (
            [
                "--set", "prefect.server.database.type=postgresql",
                "--set", "prefect.server.enabled=false",
                "--set", "prefect.apiUrl=https://prefect.example.org/api",
            ],
            ["prefect.server.database.type", "prefect.server.enabled"],
        ),
        (
            ["--set", "prefect.server.database.type=postgresql",
             "--set", "prefect.server.database.postgresql.existingSecret.key="],
            ["existingSecret/key"],
        ),
        (["--set", "operator.submitConcurrency=0"], ["submitConcurrency"]),
    ],
)  # fmt: skip
def test_bad_values_are_refused_naming_the_value(flags: list[str], names: list[str]) -> None:
    out = helm("template", "sierra-operator", str(CHART), *flags, check=False)
    assert out.returncode != 0, f"{flags} was accepted"
    for name in names:
        assert name in out.stderr, out.stderr


def test_kind_workflow_targets_exist_and_scripts_parse() -> None:
    """The docs' "Try it on kind" commands: every make target exists (dry run) and the
    cluster script is valid bash. (Running them needs Docker: tests/e2e.)"""
    targets = ["kind-up", "image", "kind-load", "deploy", "e2e", "kind-down"]
    dry = subprocess.run(["make", "-n", *targets], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "kind-config.yaml" in (REPO / "scripts" / "kind-up.sh").read_text()
    assert "charts/sierra-operator" in dry.stdout and "docker build" in dry.stdout
    syntax = subprocess.run(["bash", "-n", "scripts/kind-up.sh"], cwd=REPO, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr
    admin = (REPO / "docs" / "admin.md").read_text()
    assert "make kind-up image kind-load deploy" in admin
    kind = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    roles = [node["role"] for node in kind["nodes"]]
    assert roles == ["control-plane", "worker", "worker"]
    shared = {m["containerPath"] for node in kind["nodes"] for m in node["extraMounts"]}
    pv = yaml.safe_load_all((REPO / "deploy" / "kind" / "shared-root.yaml").read_text())
    paths = {doc["spec"]["hostPath"]["path"] for doc in pv if doc["kind"] == "PersistentVolume"}
    assert paths == shared, "the PV's hostPath is what every node mounts"


def _mounted(container: dict[str, Any], path: str) -> bool:
    return any(
        path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
        for m in container.get("volumeMounts", [])
    )


def test_read_only_containers_write_only_to_their_volumes() -> None:
    """Containers with a read-only root filesystem get every path Prefect writes pointed at a
    mounted volume: PREFECT_HOME, HOME, the SQLite file, and the UI bundle (which Prefect
    otherwise copies into its own site-packages at start)."""
    docs = render()
    server = next(
        c
        for d in by_kind(docs, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["name"] == "prefect-server"
    )
    for container in (server, operator_container(docs)):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e.get("value", "") for e in container["env"]}
        for name in ("PREFECT_HOME", "HOME"):
            assert _mounted(container, env[name]), f"{container['name']}: {name}={env[name]}"
    env = {e["name"]: e.get("value", "") for e in server["env"]}
    assert _mounted(server, env["PREFECT_UI_STATIC_DIRECTORY"])
    database = env["PREFECT_API_DATABASE_CONNECTION_URL"].split(":///", 1)[1]
    assert _mounted(server, database)


def test_one_non_root_user_across_image_chart_and_worker_pods() -> None:
    """The Dockerfile's user owns the image's HOME; the chart's pods and the worker pods the
    operator renders must run as that same uid."""
    from sierra_operator.cluster.manifests import RUN_AS_USER

    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"USER {RUN_AS_USER}:{RUN_AS_USER}" in dockerfile
    assert f"--uid {RUN_AS_USER}" in dockerfile
    for dep in by_kind(render(), "Deployment"):
        assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == RUN_AS_USER


def test_the_prefect_server_is_ready_only_when_it_reaches_its_database() -> None:
    """Readiness is Prefect's /api/ready (200 only when the database answers), liveness its
    /api/health (the process serves): a server whose PostgreSQL is away gets no traffic but
    is not restarted for it."""
    server = prefect_server_container(render())
    assert server["readinessProbe"]["httpGet"]["path"] == "/api/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/api/health"


def prefect_server_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = [
        c
        for d in by_kind(docs, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["name"] == "prefect-server"
    ]
    return container


def prefect_database_url(env: list[dict[str, Any]], secrets: dict[tuple[str, str], str]) -> str:
    """The database URL the real Prefect settings make of a container's ``env`` (Secrets
    resolved from ``secrets`` as the kubelet would): proves the chart's variable names are
    ones Prefect reads, not ones it silently ignores."""
    values = {}
    for var in env:
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            values[var["name"]] = secrets[(ref["name"], ref["key"])]
        else:
            values[var["name"]] = var["value"]
    code = (
        "from prefect.settings import get_current_settings as s; "
        "print(s().server.database.connection_url.get_secret_value())"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **values, "PREFECT_HOME": "/tmp/sierra-chart-test-prefect"},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_sqlite_is_the_default_database_and_its_pvc_goes_with_it() -> None:
    default, pg = render(), render(*VARIANTS["postgresql-bundled"])
    url = prefect_database_url(prefect_server_container(default)["env"], {})
    assert url == "sqlite+aiosqlite:////data/prefect.db"
    assert [p["metadata"]["name"] for p in by_kind(default, "PersistentVolumeClaim")] == [
        "sierra-operator-prefect"
    ]
    assert not by_kind(default, "StatefulSet") and not by_kind(default, "Secret")
    assert not by_kind(pg, "PersistentVolumeClaim"), "no SQLite PVC with PostgreSQL"
    env = {e["name"]: e for e in operator_container(default)["env"]}
    settings = OperatorSettings.from_env({k: v["value"] for k, v in env.items() if "value" in v})
    assert settings.submit_concurrency == 1, "SQLite answers 503 to concurrent creates"


def test_bundled_postgresql_has_a_pvc_and_a_generated_password_from_its_secret() -> None:
    docs = render(*VARIANTS["postgresql-bundled"])
    (stateful,) = by_kind(docs, "StatefulSet")
    (secret,) = by_kind(docs, "Secret")
    (claim,) = stateful["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    pod = stateful["spec"]["template"]["spec"]
    (db,) = pod["containers"]
    assert {m["name"] for m in db["volumeMounts"]} == {"data", "run", "tmp"}
    assert db["securityContext"]["readOnlyRootFilesystem"] is True
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) == 32
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    db_env = {e["name"]: e for e in db["env"]}
    assert db_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": "password",
    }
    server = prefect_server_container(docs)
    assert password not in json.dumps(docs).replace(secret["data"]["password"], "")
    url = prefect_database_url(server["env"], {(secret["metadata"]["name"], "password"): password})
    (service,) = [
        s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-postgresql")
    ]
    host = f"{service['metadata']['name']}.sierra-system.svc"
    assert url == f"postgresql+asyncpg://prefect:{password}@{host}:5432/prefect"
    assert service["spec"]["selector"] == stateful["spec"]["template"]["metadata"]["labels"]
    assert stateful["spec"]["serviceName"] == service["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in operator_container(docs)["env"]}
    # 2, not more: more in flight slow the other batches' advances (bench/README.md)
    assert OperatorSettings.from_env(env).submit_concurrency == 2


def test_bundled_postgresql_password_from_a_secret_the_user_made() -> None:
    """`helm template` and GitOps renders have no `lookup`: a generated password would change
    at every render, while the database keeps the first. With passwordSecret named, the
    chart generates none, and the database and the Prefect server read the user's."""
    docs = render(
        *VARIANTS["postgresql-bundled"],
        "--set", "prefect.server.database.postgresql.passwordSecret.name=lab-db",
        "--set", "prefect.server.database.postgresql.passwordSecret.key=pw",
    )  # fmt: skip
    assert by_kind(docs, "Secret") == [], "no generated password Secret"
    (stateful,) = by_kind(docs, "StatefulSet")
    (db,) = stateful["spec"]["template"]["spec"]["containers"]
    db_env = {e["name"]: e for e in db["env"]}
    password_ref = db_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password_ref == {"name": "lab-db", "key": "pw"}
    url = prefect_database_url(prefect_server_container(docs)["env"], {("lab-db", "pw"): "s3cr3t"})
    assert url.startswith("postgresql+asyncpg://prefect:s3cr3t@")


def test_existing_postgresql_url_comes_only_from_its_secret() -> None:
    docs = render(*VARIANTS["postgresql-existing"])
    assert not by_kind(docs, "StatefulSet") and not by_kind(docs, "Secret"), "nothing bundled"
    server = prefect_server_container(docs)
    env = {e["name"]: e for e in server["env"]}
    ref = env["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "value" not in ref, "the URL (with its password) is never a value in the manifest"
    assert ref["valueFrom"]["secretKeyRef"] == {"name": "prefect-db", "key": "connection-url"}
    given = "postgresql+asyncpg://lab:pw@db.example.org:5432/prefect"
    assert prefect_database_url(server["env"], {("prefect-db", "connection-url"): given}) == given
    assert "postgresql+asyncpg://" not in json.dumps(docs)
