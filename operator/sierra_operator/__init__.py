"""sierra-operator: run SIERRA batch experiments on Prefect, in Kubernetes or locally."""

__version__ = "0.1.0"
