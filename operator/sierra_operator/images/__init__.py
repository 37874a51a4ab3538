"""Image build and push: pure facts about images (hash, names, credentials), the docker SDK
builder, registry lookups and the reconcile step.
"""
