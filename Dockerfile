# upgate's own runtime image: the `upgate` command in a virtual environment.
#
#   docker build -t upgate .
#
# Where no container registry is reachable, build it from the locally bootstrapped sandbox
# base instead (made by scripts/build_base_image.sh; it has python3 and python3-venv):
#
#   docker build --build-arg BASE_IMAGE=upgate-sandbox-base:bookworm -t upgate .
#
# Both bases get a venv rather than relying on a global pip, which the local base lacks.
# With wheels in .cache/wheelhouse (`make image` puts upgate's and all its dependencies'
# there, using the host's pip) the build needs no package index; without them, pip
# installs from the sources and fetches the dependencies from its index.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/upgate
COPY . /src
RUN if ls /src/.cache/wheelhouse/upgate-*.whl >/dev/null 2>&1; then \
        /opt/upgate/bin/pip install --no-index --find-links /src/.cache/wheelhouse upgate; \
    else \
        /opt/upgate/bin/pip install /src; \
    fi

# A second stage, so the sources and the build's leftovers stay out of the image.
FROM ${BASE_IMAGE}
ENV PATH=/opt/upgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/upgate /opt/upgate
# upgate never needs root inside its own container.
RUN useradd --create-home --uid 10001 upgate
USER upgate
WORKDIR /home/upgate
ENTRYPOINT ["upgate"]
CMD ["--help"]
