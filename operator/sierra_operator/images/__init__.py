"""Image build and push: pure facts about images (hash, names, credentials), the docker SDK
builder and registry lookups. The image step of a reconcile is the operator's
(:mod:`sierra_operator.cluster.image_stage`).
"""
