"""What a researcher runs against a cluster with their own kubeconfig (as kubectl reads it):
``sierra-operator status``, ``push``/``fetch`` through a short-lived pod that mounts the
batch's PVC, and ``logs``. None of it is the operator: it holds the researcher's
permissions, not the operator's, and imports nothing of :mod:`sierra_operator.cluster`.
"""
