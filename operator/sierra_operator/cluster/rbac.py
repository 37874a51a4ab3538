"""Every Kubernetes permission the operator and its workers use, in one place (pure).

The chart's ClusterRole is generated from here (``sierra-operator rbac``), and the operator
tests check the API calls the running processes really make against it (the emulated API
server keeps an audit log per identity). A permission is here for one of three reasons:

* :data:`OPERATOR_CALLS`: the operator's own code (:mod:`sierra_operator.cluster.kube`);
* :data:`KOPF_CALLS`: what kopf does for the handlers (watch batches, patch status and
  annotations, post Events, notice CRD changes);
* :data:`WORKER_RULES`: what the per-batch worker Role grants. Kubernetes refuses to let
  anyone create a Role granting permissions it does not hold itself (RBAC escalation
  prevention), so the operator must hold these too; the alternative, the ``escalate`` verb,
  would let it grant anything.
"""

from __future__ import annotations

from collections import defaultdict

from sierra_operator.cluster.crd import PLURAL
from sierra_operator.core.model import GROUP

Call = tuple[str, str, str]
"""(apiGroup, resource[/subresource], verb)."""
Rule = dict[str, list[str]]

OPERATOR_CALLS: frozenset[Call] = frozenset(
    {
        ("", "secrets", "get"),  # spec.image.pushSecret: registry credentials
        ("", "persistentvolumeclaims", "get"),
        ("", "persistentvolumeclaims", "create"),
        ("", "serviceaccounts", "get"),
        ("", "serviceaccounts", "create"),
        ("rbac.authorization.k8s.io", "roles", "get"),
        ("rbac.authorization.k8s.io", "roles", "create"),
        ("rbac.authorization.k8s.io", "rolebindings", "get"),
        ("rbac.authorization.k8s.io", "rolebindings", "create"),
        ("apps", "deployments", "get"),
        ("apps", "deployments", "create"),
        ("apps", "deployments", "patch"),
        # A failed attempt's Job is deleted (and confirmed gone) before the next attempt.
        ("batch", "jobs", "list"),
        ("batch", "jobs", "delete"),
    }
)

KOPF_CALLS: frozenset[Call] = frozenset(
    {
        (GROUP, PLURAL, "list"),
        (GROUP, PLURAL, "watch"),
        (GROUP, PLURAL, "patch"),  # finalizer, progress and diff-base annotations
        (GROUP, f"{PLURAL}/status", "patch"),
        ("", "events", "create"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    }
)

# What the Prefect Kubernetes worker and its embedded observer (a kopf operator) need in one
# namespace with PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES set: nothing
# cluster-wide. A successful batch uses jobs create/list/watch and pods list/watch (the
# operator tests check the worker's audited calls against these rules); jobs get/delete are
# for cancellation, pods/log get for crash reports, events create for kopf's per-object log.
WORKER_RULES: tuple[Rule, ...] = (
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["create", "get", "list", "watch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
)


def calls_of(rules: tuple[Rule, ...] | list[Rule]) -> frozenset[Call]:
    """Flatten rules into (group, resource, verb) triples."""
    return frozenset(
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    )


def operator_calls() -> frozenset[Call]:
    """Everything the operator's ServiceAccount must be allowed, cluster-wide."""
    return OPERATOR_CALLS | KOPF_CALLS | calls_of(WORKER_RULES)


def compact(calls: frozenset[Call]) -> list[Rule]:
    """Rules with one entry per (apiGroup, verb set), resources grouped; stable order.

    No wildcards: each resource and verb is named.
    """
    verbs: dict[tuple[str, str], set[str]] = defaultdict(set)
    for group, resource, verb in calls:
        verbs[group, resource].add(verb)
    grouped: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for (group, resource), vs in sorted(verbs.items()):
        grouped[group, tuple(sorted(vs))].append(resource)
    return [
        {"apiGroups": [group], "resources": sorted(resources), "verbs": list(vs)}
        for (group, vs), resources in sorted(grouped.items())
    ]


def cluster_role_rules() -> list[Rule]:
    """The operator ClusterRole's rules, as the chart ships them."""
    return compact(operator_calls())
