# lookalike's image for Prefect docker work pools (prefect.yaml's *-docker deployments build it):
# the locked versions of constraints.txt, then the package with its runtime extras.
#
#   docker build -t lookalike .                                                    # CPU torch (default)
#   docker build -t lookalike:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 .
#
# The CUDA wheels bring their CUDA libraries with them, so the same slim base serves a GPU with the
# NVIDIA container toolkit (`docker run --gpus all`); BASE_IMAGE swaps the base if you need another.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Where torch and torchvision come from: PyTorch's CPU wheels (no CUDA libraries) by default, or a
# CUDA index. Every other package comes from PyPI; all of them at the versions of constraints.txt.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=serve,dask,s3,pretrained

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LOOKALIKE_ARTIFACTS_ROOT=/artifacts

WORKDIR /opt/lookalike

# Dependencies first, in their own layers, so a change of the code alone rebuilds only the last ones.
COPY constraints.txt pyproject.toml ./
RUN pip install -c constraints.txt --index-url "${TORCH_INDEX}" --extra-index-url https://pypi.org/simple \
        torch torchvision
RUN python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [r for e in sys.argv[1].split(',') for r in p['optional-dependencies'][e]]))" \
        "${EXTRAS}" > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt

# The checkout (see .dockerignore): the package, and the flow files prefect.yaml's entrypoints name.
COPY . .
RUN pip install -c constraints.txt --no-deps . \
    && rm -rf build lib/lookalike.egg-info \
    && useradd --create-home --uid 1000 lookalike \
    && mkdir -p /artifacts && chown lookalike /artifacts

USER lookalike
# A docker work pool runs each flow run in a container of this image (the deployment's pull step
# sets the working directory here); alone, `docker run lookalike lookalike run` runs the pipeline.
CMD ["lookalike", "--help"]
