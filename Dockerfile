# ihub: one image for every role (migrate, worker, beat, flower, web); the command picks the role.
# Build: docker build -t ihub .     Run the stack: docker-compose up -d (see docker-compose.yml)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    IHUB_HOME=/var/lib/ihub

# A fixed, unprivileged uid/gid, so volume ownership is predictable across rebuilds.
RUN groupadd --system --gid 10001 ihub \
 && useradd --system --uid 10001 --gid ihub --home-dir /var/lib/ihub --no-create-home \
        --shell /usr/sbin/nologin ihub \
 && mkdir -p /app /var/lib/ihub/spool /config \
 && chown -R ihub:ihub /var/lib/ihub

WORKDIR /app

# Dependencies first, in their own layer: a code change does not reinstall them. Versions come
# from constraints.txt (the tested set, written by tools/constraints.py), so two builds of the
# same commit install the same code.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); \
print('\n'.join(d['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt -c constraints.txt \
 && rm /tmp/requirements.txt

# Then the repository itself (.dockerignore keeps caches, local state and secrets out).
COPY . .
RUN pip install --no-deps -c constraints.txt . \
 && rm -rf build *.egg-info

USER ihub

# `ihub worker` execs Celery; compose adds `init: true` so PID 1 forwards SIGTERM and reaps.
CMD ["ihub", "worker"]
