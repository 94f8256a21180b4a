# Test image skewless/redis:<hash> (built by infra/docker/setup-docker.sh, run with --network host).
# The same redis.conf as the local process; port and dir are passed as arguments by the fixtures.
FROM skewless/debian:bookworm
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data
COPY redis.conf /etc/skewless/redis.conf
ENTRYPOINT ["redis-server", "/etc/skewless/redis.conf"]
CMD ["--port", "6379", "--dir", "/data"]
