"""The Kubernetes API as a researcher's commands reach it: the kubeconfig, as kubectl reads it.

``status``, ``push``, ``fetch``, ``logs`` and the SIERRA plugin's cluster mode run on the
researcher's machine with the researcher's own credentials (never the operator's): the
kubeconfig's current context or ``--context``, ``KUBECONFIG`` honoured, the context's
namespace unless one is given, else ``default``. Every way of not getting that far becomes a
:class:`ClusterError` whose message says what to do and whose exit code tells a script
whether something is missing (2) or the cluster cannot be used (3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXIT_NOT_FOUND = 2
EXIT_CLUSTER = 3


class ClusterError(Exception):
    """The cluster could not do what was asked; ``exit_code`` is 2 (something named is
    missing) or 3 (the cluster cannot be used: kubeconfig, network, CRD, permission).
    ``transient``: the same request may well succeed soon (no answer, a 5xx, a 429), which
    a long wait such as stage 2 following its batch retries rather than give up."""

    def __init__(
        self, message: str, exit_code: int = EXIT_CLUSTER, transient: bool = False
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.transient = transient


def one_line(value: Any) -> str:
    """One line of user or server text (reasons may hold line breaks, which break reports)."""
    return " ".join(str(value).split()) if value is not None else ""


@dataclass(frozen=True)
class Connection:
    """Where to send requests (a kubernetes_asyncio ``Configuration``) and the namespace."""

    config: Any
    namespace: str


async def connect(namespace: str | None, context: str | None) -> Connection:
    """The kubeconfig's credentials for ``context`` (or the current one) and the namespace
    kubectl would use: ``namespace``, else the context's, else ``default``."""
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.config.config_exception import ConfigException
    from kubernetes_asyncio.config.kube_config import KUBE_CONFIG_DEFAULT_LOCATION

    cfg = client.Configuration()
    try:
        loader = await config.load_kube_config(
            context=context, client_configuration=cfg, persist_config=False
        )
    except (ConfigException, OSError, KeyError, TypeError, ValueError) as exc:
        raise ClusterError(
            f"no usable kubeconfig ({KUBE_CONFIG_DEFAULT_LOCATION}"
            f"{', context ' + context if context else ''}): {one_line(exc)}; set KUBECONFIG or "
            "create one (e.g. `kind export kubeconfig`), as kubectl needs",
        ) from None
    current = (loader.current_context or {}).get("context") or {}
    return Connection(cfg, namespace or one_line(current.get("namespace")) or "default")


def network_errors() -> tuple[type[BaseException], ...]:
    """What a request raises when the API server cannot be reached (not an HTTP answer)."""
    import aiohttp

    return (TimeoutError, aiohttp.ClientError, OSError)


def unreachable(conn: Connection, exc: BaseException) -> ClusterError:
    """The API server did not answer: say where we looked and how to check."""
    return ClusterError(
        f"cannot reach the Kubernetes API server at {conn.config.host} "
        f"({type(exc).__name__}: {one_line(exc)[:200]}); is the cluster up and the "
        "kubeconfig's context the right one? (kubectl cluster-info)",
        transient=True,
    )


def forbidden(verb: str, resource: str, namespace: str, purpose: str = "") -> ClusterError:
    """A 403: name the verb and resource to ask for (RBAC is per verb and resource)."""
    return ClusterError(
        f"forbidden: your user cannot {verb} {resource} in namespace {namespace}"
        f"{' (' + purpose + ')' if purpose else ''}; ask for {verb} on {resource} there "
        "(a Role or ClusterRole bound to you; docs/researcher-cli.md lists what researchers need)",
    )
