"""Every Kubernetes object the operator renders: shape, ownership, RBAC, worker and job template."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient
from prefect_kubernetes.worker import KubernetesWorker

from sierra_operator.cluster.job_template import (
    default_kubernetes_template,
    render_base_job_template,
)
from sierra_operator.cluster.manifests import (
    BatchRef,
    WorkerConfig,
    render_children,
    render_pvc,
    render_worker_deployment,
)
from sierra_operator.cluster.rbac import WORKER_RULES
from sierra_operator.core.model import SierraBatchSpec

pytestmark = pytest.mark.unit

REF = BatchRef(name="forage", namespace="lab-a", uid="1234-uid")


def spec(**kw: Any) -> SierraBatchSpec:
    base: dict[str, Any] = {"experiments": [{"name": "e", "runs": [{"command": "true"}]}]}
    base.update(kw)
    return SierraBatchSpec.model_validate(base)


KINDS = {
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
    "ServiceAccount": "V1ServiceAccount",
    "Role": "V1Role",
    "RoleBinding": "V1RoleBinding",
    "Deployment": "V1Deployment",
}


def parse_as_kind(manifest: dict[str, Any]) -> Any:
    """Deserialize through the kubernetes client's models: fails on a wrong or missing field."""
    response = SimpleNamespace(data=json.dumps(manifest))

    async def parse() -> Any:
        async with ApiClient() as api:
            return api.deserialize(response, KINDS[manifest["kind"]])

    return asyncio.run(parse())


def children(**kw: Any) -> list[dict[str, Any]]:
    return render_children(
        REF,
        spec(**kw),
        WorkerConfig(
            "sierra-lab-a-forage",
            "http://prefect:4200/api",
            "ghcr.io/x/sierra-operator:0.1.0",
        ),
    )


def test_every_child_parses_as_its_kind_in_the_batch_namespace():
    objs = children()
    assert [o["kind"] for o in objs] == list(KINDS)
    for obj in objs:
        model = parse_as_kind(obj)
        assert model.metadata.namespace == "lab-a"
        assert model.metadata.labels["sierra.research.io/batch"] == "forage"


def test_everything_but_the_pvc_is_owned_by_the_batch():
    for obj in children():
        owners = obj["metadata"].get("ownerReferences", [])
        if obj["kind"] == "PersistentVolumeClaim":
            assert owners == [], "data outlives the batch by default"
        else:
            assert owners[0]["uid"] == "1234-uid" and owners[0]["kind"] == "SierraBatch"


def test_pvc_owned_only_when_delete_with_batch():
    pvc = render_pvc(REF, spec(sierraRoot={"deleteWithBatch": True, "size": "5Gi"}))
    assert pvc is not None
    assert pvc["metadata"]["ownerReferences"][0]["uid"] == "1234-uid"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_existing_claim_is_adopted_not_created():
    objs = children(sierraRoot={"claimName": "shared-data"})
    assert "PersistentVolumeClaim" not in [o["kind"] for o in objs]


def test_worker_role_is_namespaced_and_minimal():
    role = next(o for o in children() if o["kind"] == "Role")
    assert role["rules"] == list(WORKER_RULES)
    verbs = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert ("batch", "jobs", "create") in verbs
    assert not any("*" in x for triple in verbs for x in triple)
    assert not any(r == "secrets" for _, r, _ in verbs)


def test_worker_deployment_runs_a_kubernetes_worker_for_the_pool_with_probes():
    dep = render_worker_deployment(
        REF,
        spec(
            prefect={"apiKeySecret": {"name": "prefect", "key": "api-key"}},
            execution={"workers": 3},
        ),
        WorkerConfig(pool="p", api_url="http://prefect:4200/api", image="img"),
    )
    parse_as_kind(dep)
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    cmd = container["command"]
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert cmd[cmd.index("--pool") + 1] == "p" and cmd[cmd.index("--type") + 1] == "kubernetes"
    assert "--with-healthcheck" in cmd
    # every queue of the pool: held waves wait in queues of their own (runs/held.py)
    assert "--work-queue" not in cmd
    env = {e["name"]: e for e in container["env"]}
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"]["value"] == "lab-a"
    assert env["PREFECT_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "prefect",
        "key": "api-key",
    }
    assert "value" not in env["PREFECT_API_KEY"], "the key is never inlined"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["serviceAccountName"] == "forage-worker"
    assert dep["spec"]["replicas"] == 3
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_pinned_default_template_is_prefect_kubernetes_own():
    assert default_kubernetes_template() == KubernetesWorker.get_default_base_job_template()


def test_base_job_template_mounts_sierra_root_and_sets_defaults():
    default = default_kubernetes_template()
    s = spec(
        sierraRoot={"mountPath": "/data/sierra"},
        image={"repository": "r/x", "pushSecret": "regcred"},
        execution={
            "resources": {"requests": {"cpu": "2", "memory": "1Gi"}},
            "runTimeoutSeconds": 60,
        },
    )
    tpl = render_base_job_template(
        default,
        s,
        image="r/x@sha256:abc",
        namespace="lab-a",
        service_account="forage-worker",
        claim_name="forage-sierra-root",
    )
    assert default != tpl, "the default template is not modified in place"
    props = tpl["variables"]["properties"]
    assert props["image"]["default"] == "r/x@sha256:abc"
    assert props["namespace"]["default"] == "lab-a"
    assert props["service_account_name"]["default"] == "forage-worker"
    assert props["cpu_request"]["default"] == "2" and props["memory_request"]["default"] == "1Gi"
    assert props["finished_job_ttl"]["default"] > 0 and props["backoff_limit"]["default"] == 0
    job = tpl["job_configuration"]["job_manifest"]
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "sierra-root", "persistentVolumeClaim": {"claimName": "forage-sierra-root"}}
    ]
    assert pod["containers"][0]["volumeMounts"] == [
        {"name": "sierra-root", "mountPath": "/data/sierra"}
    ]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert job["spec"]["activeDeadlineSeconds"] >= 60
