#!/usr/bin/env bash
# The Docker engine and the locally built test images (called by infra/setup.sh; idempotent).
#   1. `docker info` fails -> start dockerd (as root; no bridge, no iptables: containers run with
#      --network host and bind 127.0.0.1 only), log to infra/.cache/docker/dockerd.log.
#   2. skewless/debian:bookworm from debootstrap (no registry is reachable), built once.
#   3. skewless/redis:<hash>, skewless/kafka:<hash>: <hash> covers every input (Dockerfile, config,
#      jars, base image id), so a change rebuilds and an unchanged tree skips.
#   4. infra/.cache/docker/images.env names the current tags (read by tests/fixtures/services.py).
# If no engine can run, prints a loud warning and exits 0: the tests fall back to local processes.
# Prints nothing when everything is already up to date.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
CACHE=$ROOT/infra/.cache/docker
MANIFEST=$CACHE/images.env
BASE=skewless/debian:bookworm
mkdir -p "$CACHE"
T_ALL=$(date +%s)

warn() {
  {
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!! docker: $*"
    echo "!! The integration tests will fall back to LOCAL PROCESSES (skewless/stack) for Kafka/Redis."
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo
  } >&2
  rm -f "$MANIFEST"
  exit 0
}
WORKED=0  # 1 once something was started or built (then the closing summary is printed)
took() { echo "docker: $1 in $(( $(date +%s) - $2 )) s"; WORKED=1; }

# --- 1. engine ----------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  t=$(date +%s)
  [ "$(id -u)" -eq 0 ] || warn "engine not reachable and not root, so dockerd cannot be started here (fix: run 'make setup' as root or start Docker)"
  command -v dockerd >/dev/null 2>&1 || warn "dockerd not installed (fix: apt-get install docker.io)"
  echo "docker: starting dockerd (log: $CACHE/dockerd.log)"
  setsid dockerd --bridge=none --iptables=false --ip6tables=false >>"$CACHE/dockerd.log" 2>&1 </dev/null &
  echo $! >"$CACHE/dockerd.pid"
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  if ! docker info >/dev/null 2>&1; then
    tail -n 20 "$CACHE/dockerd.log" >&2
    warn "dockerd did not become ready within 60 s (log above: $CACHE/dockerd.log)"
  fi
  took "engine started" "$t"
fi

# --- 2. base image ------------------------------------------------------------------------------
debian_mirror() {
  # The bookworm mirror this host's apt uses (deb822 .sources or one-line .list), else deb.debian.org.
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN{RS=""; FS="\n"} {
           uri=""; ok=0
           for (i=1;i<=NF;i++) {
             if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uri=a[2] }
             if ($i ~ /^Suites:/ && $i ~ /[ \t]bookworm([ \t]|$)/) ok=1
           }
           if (ok && uri != "") { print uri; exit }
         }' "$f"
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk '$1=="deb" { sub(/\[[^]]*\][ \t]*/, ""); if ($3=="bookworm") print $2 }'
  echo http://deb.debian.org/debian
}

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  t=$(date +%s)
  command -v debootstrap >/dev/null 2>&1 || warn "debootstrap not installed (fix: apt-get install debootstrap)"
  mirror=$(debian_mirror | head -n 1)
  rootfs=$(mktemp -d /var/tmp/skewless-rootfs.XXXXXX)
  echo "docker: debootstrap --variant=minbase bookworm from $mirror (log: $CACHE/debootstrap.log)"
  if ! debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1; then
    tail -n 20 "$CACHE/debootstrap.log" >&2
    rm -rf "$rootfs"
    warn "debootstrap failed (log above: $CACHE/debootstrap.log)"
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rc=$?
  rm -rf "$rootfs"
  [ "$rc" -eq 0 ] || warn "docker import of the debootstrap rootfs failed"
  took "base image $BASE built" "$t"
fi
BASE_ID=$(docker image inspect -f '{{.Id}}' "$BASE")

# --- 3. service images --------------------------------------------------------------------------
# build_image NAME DOCKERFILE [SRC DEST]...: stage a context (hard links), hash it, build if new.
build_image() {
  local name=$1 dockerfile=$2 ctx=$CACHE/context/$1 t hash tag
  shift 2
  t=$(date +%s)
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$dockerfile" "$ctx/Dockerfile"
  while [ $# -gt 0 ]; do
    cp -rL --link "$1" "$ctx/$2" 2>/dev/null || cp -rL "$1" "$ctx/$2"
    shift 2
  done
  hash=$( { echo "$BASE_ID"; cd "$ctx" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; } |
          sha256sum | cut -c1-12)
  tag=skewless/$name:$hash
  if ! docker image inspect "$tag" >/dev/null 2>&1; then
    echo "docker: building $tag (log: $CACHE/build-$name.log)"
    if ! docker build --network host -t "$tag" -t "skewless/$name:latest" "$ctx" >"$CACHE/build-$name.log" 2>&1; then
      tail -n 30 "$CACHE/build-$name.log" >&2
      warn "building $tag failed (log above: $CACHE/build-$name.log)"
    fi
    took "built $tag" "$t"
    # drop superseded builds of this image (their layers are shared or garbage now)
    docker images "skewless/$name" --format '{{.Repository}}:{{.Tag}}' |
      grep -vxF -e "$tag" -e "skewless/$name:latest" | xargs -r docker rmi >/dev/null 2>&1 || true
  fi
  echo "SKEWLESS_$(echo "$name" | tr a-z A-Z)_IMAGE=$tag" >>"$MANIFEST.tmp"
}

[ -n "$(ls -A infra/.cache/jars/kafka 2>/dev/null)" ] ||
  warn "no Kafka jars in infra/.cache/jars/kafka (fix: mvn -q -f infra/pom.xml package, or make setup)"
rm -f "$MANIFEST.tmp"
build_image redis infra/docker/redis.Dockerfile infra/redis/redis.conf redis.conf
build_image kafka infra/docker/kafka.Dockerfile infra/.cache/jars/kafka jars infra/kafka kafka
mv "$MANIFEST.tmp" "$MANIFEST"
[ "$WORKED" -eq 0 ] || took "engine and images ready ($(tr '\n' ' ' <"$MANIFEST"))" "$T_ALL"
