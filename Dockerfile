# The sierra-operator image: the operator (`sierra-operator run`), the Prefect Kubernetes
# worker (`prefect worker start --type kubernetes`), the run flow every run pod executes, and
# the bundled Prefect server. Experiment images build FROM it (examples/Dockerfile).
#
#   docker build -t localhost:5001/sierra-operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE}

# Byte-compiled at build time: `import prefect` would otherwise recompile in every run pod.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_HOME=/tmp/prefect \
    HOME=/home/sierra

RUN groupadd --gid 10001 sierra \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/sierra sierra

WORKDIR /opt/sierra-operator
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install . \
 && python -m compileall -q -j 0 "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && rm -rf /opt/sierra-operator/operator/*.egg-info

USER 10001:10001
WORKDIR /home/sierra
EXPOSE 8080 4200
CMD ["sierra-operator", "run"]
