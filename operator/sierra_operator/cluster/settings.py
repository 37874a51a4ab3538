"""Operator settings, from environment variables (documented in the README and the chart).

- ``SIERRA_OPERATOR_PREFECT_API_URL`` (or ``PREFECT_API_URL``): Prefect API for batches
  without ``spec.prefect.apiUrl``; none by default (such batches get a condition).
- ``SIERRA_OPERATOR_WORKER_IMAGE``: image of the Prefect worker pods (has prefect-kubernetes).
- ``SIERRA_OPERATOR_RECONCILE_SECONDS``: how often each batch is reconciled (1).
- ``SIERRA_OPERATOR_LOG_LEVEL``: operator log level (INFO).
- ``SIERRA_OPERATOR_SUBMIT_CONCURRENCY``: requests creating flow runs (a bulk create of up to
  100, or one create on a server without it) in flight at once per Prefect API, across all
  batches (1; bench/README.md: concurrent creates make SQLite slower, then answer 503 or refuse;
  PostgreSQL takes 8, the chart's setting with it).
- ``SIERRA_OPERATOR_NAMESPACES``: comma-separated namespaces to watch (default: all).
- ``DOCKER_HOST``: the Docker engine that builds ``spec.image.build`` (docker's own variable).
- ``PREFECT_API_KEY``: API key for the default Prefect API (the chart takes it from a
  Secret); batches with ``spec.prefect.apiKeySecret`` use theirs. Never logged.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, Field, SecretStr

from sierra_operator import __version__

DEFAULT_WORKER_IMAGE = f"ghcr.io/sierra-research/sierra-operator:{__version__}"


class OperatorSettings(BaseModel):
    """What the operator process is configured with."""

    prefect_api_url: str | None = Field(
        default=None, description="Default Prefect API URL for batches that name none."
    )
    worker_image: str = Field(default=DEFAULT_WORKER_IMAGE, description="Worker pod image.")
    reconcile_seconds: float = Field(default=1.0, gt=0, description="Reconcile interval.")
    log_level: str = Field(default="INFO", description="Log level.")
    submit_concurrency: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Requests creating flow runs in flight per Prefect API, across batches.",
    )
    namespaces: list[str] = Field(default_factory=list, description="Watched; empty: all.")
    docker_host: str | None = Field(default=None, description="Engine for image builds.")
    prefect_api_key_secret: SecretStr | None = Field(
        default=None, description="API key for the default Prefect API."
    )

    @property
    def prefect_api_key(self) -> str | None:
        """The default API's key in clear, for the client only."""
        key = self.prefect_api_key_secret
        return key.get_secret_value() if key is not None else None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        """Read the documented variables; unknown ones are ignored."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        url = env.get("SIERRA_OPERATOR_PREFECT_API_URL") or env.get("PREFECT_API_URL")
        if url:
            values["prefect_api_url"] = url
        if env.get("SIERRA_OPERATOR_WORKER_IMAGE"):
            values["worker_image"] = env["SIERRA_OPERATOR_WORKER_IMAGE"]
        if env.get("SIERRA_OPERATOR_RECONCILE_SECONDS"):
            values["reconcile_seconds"] = float(env["SIERRA_OPERATOR_RECONCILE_SECONDS"])
        if env.get("SIERRA_OPERATOR_SUBMIT_CONCURRENCY"):
            values["submit_concurrency"] = int(env["SIERRA_OPERATOR_SUBMIT_CONCURRENCY"])
        if env.get("SIERRA_OPERATOR_NAMESPACES"):
            values["namespaces"] = [
                ns.strip() for ns in env["SIERRA_OPERATOR_NAMESPACES"].split(",") if ns.strip()
            ]
        if env.get("PREFECT_API_KEY"):
            values["prefect_api_key_secret"] = env["PREFECT_API_KEY"]
        if env.get("DOCKER_HOST"):
            values["docker_host"] = env["DOCKER_HOST"]
        if env.get("SIERRA_OPERATOR_LOG_LEVEL"):
            values["log_level"] = env["SIERRA_OPERATOR_LOG_LEVEL"]
        return cls.model_validate(values)
