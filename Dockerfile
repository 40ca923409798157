# syntax=docker/dockerfile:1
# The zpilot image: the control plane (`zpilot serve`), the CNI node agent (`zpilot cni run`) and the
# ztunnel's init containers (`zpilot cni ztunnel-setup`, `zpilot bootstrap`): one image, different
# commands (charts/zpilot). Not built in CI (no container engine runs there): tests/helm/test_dockerfile.py
# lints this file with hadolint and checks what the chart relies on.
#
#   docker build -t REGISTRY/zpilot:$(python3 -c 'import zpilot; print(zpilot.__version__)') .

ARG PYTHON=python:3.11-slim-bookworm

# -- build: the wheel, with the Envoy messages of protos/ compiled in (setup.py build_protos) ----
FROM ${PYTHON} AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY zpilot/ zpilot/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- runtime: the wheel and its dependencies in a virtualenv, and the tools the CNI agent runs -----
FROM ${PYTHON}
# iptables (legacy and nft), ipset and iproute2 for the CNI agent and ztunnel-setup; util-linux
# (nsenter) is part of the base image. Debian's security updates replace exact versions, so they
# are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ipset iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN python3 -m venv /opt/zpilot \
 && /opt/zpilot/bin/pip install --no-cache-dir /wheels/*.whl \
 && rm -rf /wheels \
 && groupadd --gid 65532 zpilot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin zpilot
# Modules were compiled when installed; the root file system is read-only at run time.
ENV PATH=/opt/zpilot/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The control plane runs as this user; the CNI agent and ztunnel-setup are run as root by the chart.
USER 65532:65532
ENTRYPOINT ["zpilot"]
CMD ["--help"]
