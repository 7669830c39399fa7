# upgate training image: the sandbox image plus CPU torch, transformers, peft, safetensors
# and accelerate, for recipes that fine-tune an adapter inside the sandbox.
#
# Built by `python -m upgate.sandboxes.images build --kind train` from a host-side
# wheelhouse (wheels/) for the packages in train-requirements.txt; no network at build.
ARG SANDBOX_IMAGE=upgate-sandbox:latest
FROM ${SANDBOX_IMAGE} AS venv

# Installed in a throwaway stage so the wheelhouse never lands in a final layer.
USER root
COPY requirements.txt /opt/upgate/train-requirements.txt
COPY wheels/ /opt/upgate/wheels/
RUN /opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /opt/upgate/wheels -r /opt/upgate/train-requirements.txt

FROM ${SANDBOX_IMAGE}
USER root
COPY --from=venv /opt/venv /opt/venv
COPY requirements.txt /opt/upgate/train-requirements.txt
USER 1000:1000
WORKDIR /workspace
