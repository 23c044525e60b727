# The bot (not the engine: the engine runs on the panel host).
# docker build -t myosicam-rotator-bot . && docker run --env-file bot.env -v /etc/myosicam-rotator:/config:ro myosicam-rotator-bot
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY bot ./bot
COPY handlers ./handlers
RUN python -m venv /opt/rotator && /opt/rotator/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/rotator --create-home rotator
COPY --from=build /opt/rotator /opt/rotator
USER rotator
WORKDIR /var/lib/rotator
ENV PATH=/opt/rotator/bin:$PATH PYTHONUNBUFFERED=1 ROTATOR_CONFIG=/config/rotator.toml
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:3000/healthz', timeout=2).status == 200 else 1)" || exit 1
CMD ["python", "-m", "bot", "--http", "--port", "3000", "--address", "0.0.0.0"]
