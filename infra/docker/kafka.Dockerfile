# Test image skewless/kafka:<hash> (built by infra/docker/setup-docker.sh, run with --network host).
# The same jars (infra/.cache/jars/kafka) and the same launch script + config (infra/kafka/) as the
# local process; ports come from KAFKA_PORT / KAFKA_CONTROLLER_PORT at run time.
FROM skewless/debian:bookworm
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY jars/ /opt/kafka/libs/
COPY kafka/ /opt/kafka/config/
ENV KAFKA_JARS_DIR=/opt/kafka/libs \
    KAFKA_STATE_DIR=/var/lib/kafka \
    KAFKA_PORT=9092 \
    KAFKA_CONTROLLER_PORT=9093
ENTRYPOINT ["bash", "/opt/kafka/config/run-kafka.sh"]
