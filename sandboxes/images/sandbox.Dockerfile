# upgate sandbox image: a non-root user, an empty /workspace, and a venv with pytest.
#
# Built by `python -m upgate.sandboxes.images build`, which puts requirements.txt and a
# wheelhouse (wheels/) prepared on the host by `pip download` into the build context, so
# the build needs no network. BASE_IMAGE defaults to the locally bootstrapped base
# (scripts/build_base_image.sh); where a registry is reachable, python:3.11-slim-bookworm
# works too.
ARG BASE_IMAGE=upgate-sandbox-base:bookworm
FROM ${BASE_IMAGE} AS base

USER root

# The local base already has git; a public python base does not (this step then needs
# the Debian archive).
RUN command -v git >/dev/null 2>&1 || { apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*; }

RUN (getent group 1000 >/dev/null || groupadd --gid 1000 sandbox) \
    && (getent passwd 1000 >/dev/null || useradd --uid 1000 --gid 1000 --no-create-home \
        --home-dir /tmp --shell /bin/sh sandbox) \
    && mkdir -p /workspace && chown 1000:1000 /workspace

# The venv is built in a throwaway stage so the wheelhouse never lands in a final layer.
FROM base AS venv
COPY requirements.txt /opt/upgate/requirements.txt
COPY wheels/ /opt/upgate/wheels/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /opt/upgate/wheels -r /opt/upgate/requirements.txt

FROM base
COPY --from=venv /opt/venv /opt/venv
COPY requirements.txt /opt/upgate/requirements.txt

ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1

USER 1000:1000
WORKDIR /workspace
CMD ["sleep", "infinity"]
