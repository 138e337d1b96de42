# DEVELOPMENT / TEST IMAGE: the lender simulator (sim/lender), a test double that
# plays the lenders for the compose stack. Never deploy it: a real lender is
# configured in the lenders file instead. The production image (docker/Dockerfile)
# does not contain it.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dealflow ./dealflow
COPY workflows ./workflows
COPY activities ./activities
COPY worker.py starter.py ./
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# Its ledger and webhook outbox live in /var/lib/dealflow (a volume in compose).
RUN useradd --create-home --uid 10001 dealflow \
    && install -d -o dealflow -g dealflow -m 0700 /var/lib/dealflow
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY examples ./examples
# The simulator is not in the wheel: `python -m sim.lender` finds it in the
# working directory.
COPY sim ./sim
USER 10001:10001
ENV PYTHONUNBUFFERED=1 \
    DEALFLOW_DATA_DIR=/var/lib/dealflow \
    DEALFLOW_LENDER_SIM_DB=/var/lib/dealflow/lender_sim.db
ENTRYPOINT ["python", "-m"]
CMD ["sim.lender", "--host", "0.0.0.0"]
