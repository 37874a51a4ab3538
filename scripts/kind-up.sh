#!/usr/bin/env bash
# Create the kind cluster of kind-config.yaml with a local registry at localhost:5001 and the
# shared sierra-root (deploy/kind/shared-root.yaml). Idempotent: what exists is kept.
# Follows kind's "local registry" guide (containerd hosts.toml per node).
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=${KIND:-kind}
KUBECTL=${KUBECTL:-kubectl}
CLUSTER=${CLUSTER:-sierra}
REGISTRY=kind-registry
REGISTRY_PORT=5001
SHARED=/tmp/sierra-kind-root

# 1. the registry container, on localhost:5001 (only on the loopback interface)
if [ "$(docker inspect -f '{{.State.Running}}' "$REGISTRY" 2>/dev/null || true)" != "true" ]; then
  docker run -d --restart=always -p "127.0.0.1:${REGISTRY_PORT}:5000" --network bridge \
    --name "$REGISTRY" registry:2
fi

# 2. the cluster; every node mounts $SHARED at /sierra-root (run pods write as uid 10001)
mkdir -p "$SHARED" && chmod 1777 "$SHARED"
if ! "$KIND" get clusters | grep -qx "$CLUSTER"; then
  "$KIND" create cluster --name "$CLUSTER" --config kind-config.yaml --wait 120s
fi

# 3. nodes pull localhost:5001/* from the registry container
for node in $("$KIND" get nodes --name "$CLUSTER"); do
  docker exec "$node" mkdir -p "/etc/containerd/certs.d/localhost:${REGISTRY_PORT}"
  printf '[host."http://%s:5000"]\n' "$REGISTRY" |
    docker exec -i "$node" cp /dev/stdin "/etc/containerd/certs.d/localhost:${REGISTRY_PORT}/hosts.toml"
done
if [ "$(docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "$REGISTRY")" = "null" ]; then
  docker network connect kind "$REGISTRY"
fi
"$KUBECTL" apply -f - <<YAML
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "localhost:${REGISTRY_PORT}"
YAML

# 4. the shared sierra-root PV + PVC the examples adopt
"$KUBECTL" apply -f deploy/kind/shared-root.yaml
echo "kind cluster '$CLUSTER' is up; registry localhost:${REGISTRY_PORT}; sierra-root ${SHARED}"
