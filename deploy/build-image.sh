#!/usr/bin/env bash
# Build the inos-node docker image (tag inos-node:dev, the one compose.yaml runs).
#
#   bash deploy/build-image.sh                 auto: the registry's python:3.11-slim when it can be
#                                               pulled, else a local Debian base + a host wheelhouse
#   bash deploy/build-image.sh --local-base    force the registry-less path
#   bash deploy/build-image.sh --registry      force the ordinary path (plain pip from PyPI in the build)
#   INOS_IMAGE=inos-node:x bash deploy/build-image.sh    another tag
#
# The registry-less path (machines whose docker engine reaches no registry, and whose containers
# cannot verify PyPI's certificate):
#   1. base image: debootstrap a minimal Debian (python3, venv, CA certificates) from the mirror
#      configured in /etc/apt/sources.list.d/debian.sources, and `docker import` it as
#      inos-base:<suite>; kept in the local engine, so later builds skip this step;
#   2. wheelhouse: the host's pip downloads/builds every dependency into deploy/wheelhouse/;
#   3. docker build with --build-arg BASE_IMAGE=inos-base:<suite>: the Dockerfile sees wheels in
#      deploy/wheelhouse/ and installs with --no-index from them.
# The ordinary path is just `docker build -f deploy/Dockerfile .` (what `docker compose build` does).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${INOS_IMAGE:-inos-node:dev}
REGISTRY_BASE=python:3.11-slim
WHEELHOUSE=deploy/wheelhouse
MODE=auto
for arg in "$@"; do
    case "$arg" in
        --local-base) MODE=local ;;
        --registry) MODE=registry ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "build-image: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

STEP=0
STEPS=3
T0=$(date +%s)
step() { STEP=$((STEP + 1)); echo "==> [$STEP/$STEPS] $* (t+$(( $(date +%s) - T0 ))s)"; }
die() { echo "build-image: $*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the docker engine does not answer (is it running? may you use it?)"

if [ "$MODE" = auto ]; then
    if docker image inspect "$REGISTRY_BASE" >/dev/null 2>&1 || docker pull -q "$REGISTRY_BASE" >/dev/null 2>&1; then
        MODE=registry
    else
        MODE=local
        echo "build-image: $REGISTRY_BASE cannot be pulled: building a local base image and a wheelhouse"
    fi
fi

# The Debian mirror and suite this machine's apt uses (deb822 sources, else the one-line format).
debian_mirror() {
    local f=/etc/apt/sources.list.d/debian.sources
    if [ -r "$f" ]; then
        awk '/^URIs:/ {u=$2} /^Suites:/ {s=$2} /^$/ {if (u && s !~ /-security$/) {print u, s; exit} u=""; s=""}
             END {if (u && s !~ /-security$/) print u, s}' "$f" | head -n1
    elif [ -r /etc/apt/sources.list ]; then
        awk '$1 == "deb" && $3 !~ /-security$/ {print $2, $3; exit}' /etc/apt/sources.list
    fi
}

if [ "$MODE" = local ]; then
    read -r MIRROR SUITE < <(debian_mirror) || true
    [ -n "${MIRROR:-}" ] && [ -n "${SUITE:-}" ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources"
    BASE="inos-base:$SUITE"
    step "base image $BASE (debootstrap $SUITE from $MIRROR)"
    if docker image inspect "$BASE" >/dev/null 2>&1; then
        echo "    $BASE already exists in this engine: reused"
    else
        command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO=sudo
        ROOTFS=$(mktemp -d /var/tmp/inos-rootfs.XXXXXX)
        trap '$SUDO rm -rf "$ROOTFS"' EXIT
        # debootstrap prints one line per package stage (I: Retrieving/Validating/Unpacking ...): progress.
        $SUDO debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            "$SUITE" "$ROOTFS" "$MIRROR" 2>&1 \
            | awk '/^[EW]:/ || /Base system/ || (/^I: (Retriev|Extract|Unpack|Configur)/ && n++ % 25 == 0) {
                       print "    " $0; fflush() }'
        $SUDO rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc \
            "$ROOTFS"/usr/share/man "$ROOTFS"/usr/share/locale
        $SUDO tar -C "$ROOTFS" -c . | docker import --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
        $SUDO rm -rf "$ROOTFS"
        trap - EXIT
        echo "    imported $BASE ($(docker image inspect -f '{{.Size}}' "$BASE" | awk '{printf "%.0f MB", $1/1e6}'))"
    fi

    step "wheelhouse $WHEELHOUSE (the host's pip)"
    PY=.venv/bin/python
    [ -x "$PY" ] || PY=$(command -v python3.11 || command -v python3)
    "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null \
        || die "$PY is not Python 3.11: the wheels must match the image's Python (3.11)"
    REQS=$(mktemp)
    # The project's runtime dependencies (not the project itself: a code change must not touch
    # the wheelhouse, so docker's dependency layer stays cached) plus hatchling, its build backend.
    "$PY" - pyproject.toml >"$REQS" <<'EOF'
import sys, tomllib
doc = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join([*doc["project"]["dependencies"], *[r for r in doc["build-system"]["requires"]]]))
EOF
    mkdir -p "$WHEELHOUSE"
    "$PY" -m pip wheel --progress-bar off --wheel-dir "$WHEELHOUSE" --find-links "$WHEELHOUSE" -r "$REQS" 2>&1 \
        | awk '/^(Collecting|Saved|Building wheel|ERROR)/ { print "    " $0; fflush() }'
    rm -f "$REQS"
    [ -n "$(ls "$WHEELHOUSE"/*.whl 2>/dev/null)" ] || die "pip wheel produced no wheels in $WHEELHOUSE"
    echo "    $(ls "$WHEELHOUSE"/*.whl | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
else
    BASE=$REGISTRY_BASE
    STEPS=2
    # No wheels in the build context: the Dockerfile installs from PyPI.
    rm -f "$WHEELHOUSE"/*.whl
fi

step "docker build $TAG (BASE_IMAGE=$BASE)"
# The classic builder prints each Dockerfile step (Step N/M) as it runs.
docker build -f deploy/Dockerfile --build-arg "BASE_IMAGE=$BASE" -t "$TAG" . 2>&1 \
    | awk '!/^(DEPRECATED|            |  Install the buildx|  Learn more|$)/ { print "    " $0; fflush() }' \
    || die "docker build failed (its output is above)"
docker image inspect "$TAG" >/dev/null || die "docker build did not produce $TAG"
SIZE=$(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')
echo "==> built $TAG ($SIZE) in $(( $(date +%s) - T0 ))s; now: docker compose up"
