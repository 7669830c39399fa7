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
# `pip install` still needs a Python package index during the build.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/upgate
COPY . /src
RUN /opt/upgate/bin/pip install /src

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
