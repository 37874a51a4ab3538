"""Command line of ``--execenv=sierraop.cluster``: the shared stage-2 options plus where in
the cluster to run (image, PVC, namespace, kubeconfig context)."""

from __future__ import annotations

import argparse
from typing import Any

from sierra_operator.sierra.plugin.sierraop import options


class SierraopClusterCmdline(options.SierraopCmdline):
    """The shared options, plus the cluster's."""

    def init_stage2(self) -> None:
        """Stage-2 options; SIERRA builds them only when this execenv is selected."""
        super().init_stage2()
        doc = self.stage_usage_doc([2])
        add = self.stage2.add_argument
        add(
            "--image",
            default=None,
            help="repository:tag of the image every run pod uses (required): the engine and "
            "project at the paths commands.txt names, sh and tar; build it FROM the "
            "sierra-operator image." + doc,
        )
        add(
            "--claim",
            default=None,
            help="PersistentVolumeClaim holding sierra-root in the cluster, mounted at "
            "--sierra-root in every pod; ReadWriteMany if runs spread over nodes "
            "(default: sierra-root)." + doc,
        )
        add("--namespace", default=None, help="namespace (default: the context's)." + doc)
        add("--kube-context", default=None, help="kubeconfig context (default: current)." + doc)
        add(
            "--prefect-api-url",
            default=None,
            help="spec.prefect.apiUrl: the Prefect API the operator and workers use "
            "(default: the operator's)." + doc,
        )
        add(
            "--runs-per-pod",
            type=int,
            default=None,
            help="execution.runsPerPod: runs of one experiment that share a pod (1-100); "
            "more than 1 saves a pod start per run for short runs (default: 1)." + doc,
        )
        add(
            "--pod-timeout",
            type=float,
            default=None,
            help="seconds the transfer pod may take to start (default: 300)." + doc,
        )
        add(
            "--operator-timeout",
            type=float,
            default=None,
            help="seconds to wait for the operator to pick the batch up (default: 120)." + doc,
        )


def build(parents: list[argparse.ArgumentParser], stages: list[int]) -> Any:
    """SIERRA's entry point: the parser part of ``--execenv=sierraop.cluster``."""
    return SierraopClusterCmdline(parents, stages)


def to_cmdopts(args: argparse.Namespace) -> dict[str, Any]:
    """SIERRA's entry point: our options into ``cmdopts``."""
    opts = options.to_cmdopts(args)
    opts.update(
        sierraop_image=getattr(args, "image", None),
        sierraop_claim=getattr(args, "claim", None),
        sierraop_namespace=getattr(args, "namespace", None),
        sierraop_kube_context=getattr(args, "kube_context", None),
        sierraop_runs_per_pod=getattr(args, "runs_per_pod", None),
        sierraop_pod_timeout=getattr(args, "pod_timeout", None),
        sierraop_operator_timeout=getattr(args, "operator_timeout", None),
    )
    return opts
