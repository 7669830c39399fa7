# A target's own sandbox image: upgate's sandbox image plus the pinned packages the target
# declares in its manifest ([target] sandbox_packages), installed from a host-side
# wheelhouse with no network. Built and tagged by content hash on first use.
ARG SANDBOX_IMAGE
FROM ${SANDBOX_IMAGE} AS venv
USER root
COPY requirements.txt /opt/upgate/target-requirements.txt
COPY wheels/ /opt/upgate/wheels/
RUN /opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /opt/upgate/wheels -r /opt/upgate/target-requirements.txt

FROM ${SANDBOX_IMAGE}
COPY --from=venv /opt/venv /opt/venv
COPY requirements.txt /opt/upgate/target-requirements.txt
USER 1000:1000
WORKDIR /workspace
CMD ["sleep", "infinity"]
