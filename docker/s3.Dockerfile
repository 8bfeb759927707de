# A stand-in for a cloud bucket: moto's S3 (requirements/s3.lock.txt, every package pinned) serving
# one bucket with versioning on (scripts/s3/serve.py, the same script the tests run), as an
# unprivileged user. In memory: recreating the container loses every object, so it is for a trial on
# one machine; a deployment points MLFLOW_ARTIFACTS_DESTINATION at a real bucket instead (README,
# "Artifacts in S3").
FROM python:3.11-slim-bookworm
RUN useradd --system --no-create-home s3
COPY requirements/s3.lock.txt /tmp/s3.lock.txt
RUN python3 -m venv /opt/s3 \
 && /opt/s3/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/s3.lock.txt \
 && rm /tmp/s3.lock.txt
COPY scripts/s3/serve.py scripts/s3/lifecycle.json /opt/conveyor/
USER s3
ENV S3_BUCKET=conveyor-mlflow
EXPOSE 9000
# Healthy once the bucket exists (serve.py creates it, versioned, before it reports ready).
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=10 \
  CMD ["/opt/s3/bin/python", "-c", "import os, sys, urllib.request; r = urllib.request.Request('http://127.0.0.1:9000/' + os.environ['S3_BUCKET'], method='HEAD'); sys.exit(0 if urllib.request.urlopen(r, timeout=2).status == 200 else 1)"]
ENTRYPOINT ["/opt/s3/bin/python", "/opt/conveyor/serve.py"]
CMD ["--host", "0.0.0.0", "--port", "9000"]
