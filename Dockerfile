# The bot (the engine runs on the panel host, see deploy/setup-panel-host.sh).
#
# On a host prepared by deploy/setup-bot-host.sh (its user, keys, bot.env, rotator.toml),
# the container runs as that user and sees the host's folders at the same paths, so what
# the script wrote (ROTATOR_CONFIG, key_file, known_hosts, the store) holds unchanged:
#
#   docker build -t myosicam-rotator-bot .
#   docker run -d --name rotator --user "$(id -u rotator-bot):$(id -g rotator-bot)" \
#       --env-file /etc/myosicam-rotator-bot/bot.env \
#       -v /etc/myosicam-rotator-bot:/etc/myosicam-rotator-bot:ro \
#       -v /var/lib/myosicam-rotator-bot:/var/lib/myosicam-rotator-bot \
#       -p 3000:3000 myosicam-rotator-bot
#
# Without the script: the image's own user (uid 10001), /config and /data, as below.
# * Socket Mode when SLACK_APP_TOKEN is set (no inbound traffic from Slack; port 3000 then
#   only answers GET /healthz); HTTP mode otherwise: Slack posts to :3000/slack/events, so
#   publish the port (-p) behind your TLS proxy.
# * /config (read-only): rotator.toml (ROTATOR_CONFIG), audit.key (ROTATOR_AUDIT_KEY_FILE),
#   the bot's SSH key and known_hosts; readable by uid 10001.
# * /data (a writable volume, owned by uid 10001): the SQLite store; point rotator.toml's
#   store at it: store = "sqlite:////data/rotator.db". Several replicas: a MySQL store
#   instead (deploy/compose.yaml).
# * `docker run … myosicam-rotator-bot doctor` checks the installation.
ARG BASE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# the dependencies first, from pyproject.toml alone: a code change does not download them again
# (PIP_CERT: the system CA bundle; a build behind a TLS-inspecting proxy mounts its own there)
COPY pyproject.toml ./
RUN python3 -m venv /opt/rotator \
    && /opt/rotator/bin/pip install "setuptools>=70.1" $(python3 -c "import tomllib; \
p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print(' '.join(p['dependencies'] + p['optional-dependencies']['bot']))")
COPY README.md ./
COPY engine ./engine
COPY bot ./bot
COPY handlers ./handlers
RUN /opt/rotator/bin/pip install --no-deps --no-build-isolation . \
    && find /opt/rotator -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin rotator \
    && install -d -m 0700 -o rotator -g rotator /data \
    && install -d -m 0755 /config
COPY --from=build /opt/rotator /opt/rotator
COPY deploy/container-entrypoint.sh /usr/local/bin/rotator-entrypoint
USER rotator
WORKDIR /data
VOLUME ["/data"]
ENV PATH=/opt/rotator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=3000 \
    ROTATOR_CONFIG=/config/rotator.toml \
    ROTATOR_AUDIT_KEY_FILE=/config/audit.key
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=3s --start-period=15s \
  CMD python3 -c "import os,sys,urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '3000'), timeout=2).status == 200 else 1)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/rotator-entrypoint"]
