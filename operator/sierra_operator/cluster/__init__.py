"""The Kubernetes side: CRD, child manifests, RBAC, the base job template (pure renderers), and the
operator (kopf handlers, reconciler, API adapter, settings, status command).
"""
