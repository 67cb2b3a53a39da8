# syntax=docker/dockerfile:1
# The stream worker (default) and the producers, one image:
#   docker build -t stream-reco .
#   docker run --rm -e STREAM_BOOTSTRAP_SERVERS=host:9092 -p 8000:8000 stream-reco        # worker
#   docker run --rm --entrypoint python stream-reco -m producers synthetic --help         # producers
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 stream \
 && useradd --system --uid 10001 --gid stream --create-home --home-dir /home/stream stream \
 && mkdir -p /var/lib/stream/checkpoints \
 && chown -R stream:stream /var/lib/stream

WORKDIR /build

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes
# (the packages are empty placeholders here; the real sources are installed just below).
COPY pyproject.toml README.md ./
RUN mkdir stream producers \
 && touch stream/__init__.py producers/__init__.py \
 && pip install . \
 && rm -rf stream producers build ./*.egg-info

COPY stream ./stream
COPY producers ./producers
RUN pip install --no-deps --force-reinstall . \
 && cd / && rm -rf /build

USER 10001:10001
WORKDIR /home/stream
# Checkpoints (STREAM_CHECKPOINT_DIR=/var/lib/stream/checkpoints, owned by the user above):
# mount a volume there to keep them across containers.
EXPOSE 8000

ENTRYPOINT ["python", "-m", "stream"]
CMD ["worker"]
