#!/usr/bin/env bash
# make test-images: builds both container images and runs them as users do.
#
# No image registry can be reached, so each image is its Dockerfile's final stage (read
# from the Dockerfile itself, from its last FROM line to the end: the stage that ships),
# with `COPY --from=builder /out/app /app` served from a local context holding the static
# binaries that `make dist` made (target/dist/*-musl). A private Docker daemon runs for the
# test (vfs storage, no bridge: containers use --network host) and is stopped at the end.
#
# Checks, for each image:
#   * the original README's quick-start command, verbatim except `-p 8000:8000` (no bridge
#     network here: `--network host` and BACKEND_PORT=<a free port> instead) and the health
#     check's interval (1 s instead of 30 s, to wait less), with ./data fresh (Docker
#     creates it, owned by root), already there and owned by root, holding a database
#     written by the original's image (root-owned), and as a named volume;
#   * the process runs as UID 10001 once started, and owns the database file;
#   * the Docker health check reaches "healthy";
#   * `docker restart` keeps a service created through the admin API;
#   * `docker run --user 10001:10001` on a directory that is already writable;
#   * on root's directory with --user 10001:10001, and on a read-only mount, the container
#     stops with one line naming the path, the user and the fix;
#   * `docker stop` (SIGTERM) lets an open request finish, and the exit code is 0;
#   * image size: lightweight <= 10 MB, enterprise <= 12 MB;
#   * enterprise: the original's MySQL + Redis command (DB_*, REDIS_*) against the local
#     MariaDB and Redis (TEST_MYSQL_URL / TEST_REDIS_URL hosts, database
#     rotator_images_test, Redis database 10).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

target_dir=${CARGO_TARGET_DIR:-target}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
mysql_host=${TEST_MYSQL_HOST:-127.0.0.1}
redis_host=${TEST_REDIS_HOST:-127.0.0.1}

fail() {
    echo "test-images: FAILED: $*" >&2
    exit 1
}
say() { printf '== %s\n' "$*"; }

command -v dockerd >/dev/null || fail "dockerd is missing (apt-get install docker.io)"
command -v docker >/dev/null || fail "docker is missing (apt-get install docker.io)"
command -v curl >/dev/null || fail "curl is missing"
command -v readelf >/dev/null || fail "readelf is missing (apt-get install binutils)"
command -v sqlite3 >/dev/null || command -v python3 >/dev/null || fail "sqlite3 or python3 is needed"

for kind in lightweight enterprise; do
    bin="$target_dir/dist/api-key-rotator-$version-$kind-musl"
    [[ -x $bin ]] || fail "$bin is missing: run make dist with the musl target installed (rustup target add x86_64-unknown-linux-musl; apt-get install musl-tools)"
    if readelf -lW "$bin" | grep -q 'INTERP'; then
        fail "$bin is not static (it asks for a dynamic loader); an image FROM scratch needs a static binary"
    fi
done

work=$(mktemp -d /tmp/rotator-images.XXXXXX)
sock="$work/docker.sock"
export DOCKER_HOST="unix://$sock"
export DOCKER_BUILDKIT=0
containers=()
dockerd_pid=

cleanup() {
    local code=$?
    set +e
    for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1; done
    docker volume rm -f rotator_images_test >/dev/null 2>&1
    [[ -n ${upstream_pid:-} ]] && kill "$upstream_pid" 2>/dev/null
    if [[ -n $dockerd_pid ]]; then
        kill "$dockerd_pid" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$dockerd_pid" 2>/dev/null
    fi
    # vfs layers are plain directories; containers' mounts may linger briefly.
    umount -R "$work/root" 2>/dev/null
    rm -rf "$work" 2>/dev/null
    exit "$code"
}
trap cleanup EXIT

say "starting a private Docker daemon ($work)"
dockerd --storage-driver=vfs --iptables=false --bridge=none \
    --data-root "$work/root" --exec-root "$work/exec" -H "$DOCKER_HOST" \
    --pidfile "$work/docker.pid" >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 150); do
    docker version >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { cat "$work/dockerd.log" >&2; fail "dockerd exited"; }
    sleep 0.2
done
docker version >/dev/null 2>&1 || { tail -20 "$work/dockerd.log" >&2; fail "dockerd did not answer"; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# build_image KIND: the final stage of Dockerfile.KIND over the binary make dist made.
build_image() {
    local kind=$1 ctx="$work/ctx-$1"
    mkdir -p "$ctx/app/data"
    cp "$target_dir/dist/api-key-rotator-$version-$kind-musl" "$ctx/app/api-key-rotator"
    local last
    last=$(grep -n '^FROM ' "Dockerfile.$kind" | tail -1 | cut -d: -f1)
    tail -n "+$last" "Dockerfile.$kind" >"$ctx/Dockerfile"
    grep -qx 'COPY --from=builder /out/app /app' "$ctx/Dockerfile" ||
        fail "Dockerfile.$kind's final stage no longer copies /out/app from the builder; update this script"
    sed -i 's|^COPY --from=builder /out/app /app$|COPY app /app|' "$ctx/Dockerfile"
    docker build -q -t "api-key-rotator:$kind" "$ctx" >"$work/build-$kind.log" 2>&1 ||
        { cat "$work/build-$kind.log" >&2; fail "docker build of the $kind image failed"; }
}

# The original README's quick start, as a function of the image and the data mount.
# Extra docker options (health interval, --user) go before the image, as users add them.
quick_start() {
    local name=$1 image=$2 volume=$3
    shift 3
    docker run -d --name "$name" --network host -e BACKEND_PORT="$port" \
        --health-interval=1s --health-start-period=1s \
        -e ADMIN_PASSWORD="your_password" \
        -e JWT_SECRET="your_jwt_secret" \
        -e GLOBAL_PROXY_KEYS="your_proxy_key" \
        -v "$volume" \
        "$@" \
        "$image" >/dev/null
    containers+=("$name")
}

# Waits until the container is healthy (Docker's own health check); prints its log on failure.
wait_healthy() {
    local name=$1 state
    for _ in $(seq 1 100); do
        state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$name")
        [[ $state == "running healthy" ]] && return 0
        [[ $state == exited* ]] && break
        sleep 0.2
    done
    docker logs "$name" >&2 || true
    fail "$name is not healthy: $state"
}

uid_of() {
    local pid
    pid=$(docker inspect -f '{{.State.Pid}}' "$1")
    awk '/^Uid:/ {print $2}' "/proc/$pid/status"
}

api() {
    curl -sS --max-time 10 "$@"
}

login() {
    api -X POST "http://127.0.0.1:$port/admin/login" -H 'Content-Type: application/json' \
        -d '{"username":"admin","password":"your_password"}' |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

# started NAME DIR: healthy, UID 10001, database file in DIR owned by 10001.
started() {
    local name=$1 dir=${2:-}
    wait_healthy "$name"
    local uid
    uid=$(uid_of "$name")
    [[ $uid == 10001 ]] || fail "$name runs as uid $uid, not 10001"
    if [[ -n $dir ]]; then
        local owner
        owner=$(stat -c %u "$dir/api_key_rotator.db")
        [[ $owner == 10001 ]] || fail "$name: $dir/api_key_rotator.db belongs to uid $owner"
    fi
    echo "   $name: healthy, uid $uid"
}

# refused NAME TEXT...: the container exits non-zero and its last log line holds each TEXT.
refused() {
    local name=$1 state=
    shift
    for _ in $(seq 1 50); do
        state=$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$name")
        [[ $state == exited* ]] && break
        sleep 0.2
    done
    [[ $state == exited* && $state != "exited 0" ]] || fail "$name should have stopped with an error: $state"
    local line
    line=$(docker logs "$name" 2>&1 | tail -1)
    for text in "$@"; do
        [[ $line == *"$text"* ]] || fail "$name: '$text' missing from: $line"
    done
    line=${line#*database error: }
    echo "   $name: exit ${state#exited }: ${line:0:150}..."
    stop "$name"
}

stop() {
    docker rm -f "$1" >/dev/null
}

original_db() {
    local file=$1
    if command -v sqlite3 >/dev/null; then
        sqlite3 "$file" <tests/fixtures/original_v1.sql
    else
        python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(open(sys.argv[2]).read()); c.commit()' \
            "$file" tests/fixtures/original_v1.sql
    fi
}

check_image() {
    local kind=$1 image="api-key-rotator:$1" limit=$2
    say "$kind image"
    build_image "$kind"
    local size
    size=$(docker image inspect -f '{{.Size}}' "$image")
    echo "   size: $size bytes ($(awk "BEGIN {printf \"%.2f\", $size / 1048576}") MiB; limit $limit MiB)"
    ((size <= limit * 1024 * 1024)) || fail "$image is $size bytes, over $limit MiB"

    port=$(free_port)
    local d="$work/$kind"

    # 1. A fresh ./data: Docker creates it, owned by root.
    mkdir -p "$d/fresh" && cd "$d/fresh"
    quick_start "$kind-fresh" "$image" "$(pwd)/data:/app/data"
    started "$kind-fresh" "$(pwd)/data"
    echo "   fresh ./data: created by Docker as uid 0, now $(stat -c %u:%g data)"

    # 2. docker restart keeps what was stored.
    local token
    token=$(login)
    api -o /dev/null -w '' -X POST "http://127.0.0.1:$port/admin/proxy-configs" \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d '{"name":"Kept","slug":"kept","config_type":"GENERIC","target_url":"http://127.0.0.1:9","method":"GET"}'
    docker restart "$kind-fresh" >/dev/null
    started "$kind-fresh" "$(pwd)/data"
    token=$(login)
    api "http://127.0.0.1:$port/admin/proxy-configs" -H "Authorization: Bearer $token" | grep -q '"slug":"kept"' ||
        fail "$kind: the service created before docker restart is gone"
    echo "   docker restart: the service created before it is still there"
    stop "$kind-fresh"
    cd "$ROOT"

    # 3. ./data that exists and belongs to root.
    mkdir -p "$d/rootowned/data" && chown 0:0 "$d/rootowned/data" && chmod 755 "$d/rootowned/data"
    cd "$d/rootowned"
    quick_start "$kind-rootowned" "$image" "$(pwd)/data:/app/data"
    started "$kind-rootowned" "$(pwd)/data"
    stop "$kind-rootowned"
    cd "$ROOT"

    # 4. ./data written by the original's image (root-owned SQLite file).
    mkdir -p "$d/original/data" && original_db "$d/original/data/api_key_rotator.db"
    chown -R 0:0 "$d/original/data"
    cd "$d/original"
    quick_start "$kind-original" "$image" "$(pwd)/data:/app/data"
    started "$kind-original" "$(pwd)/data"
    token=$(login)
    api "http://127.0.0.1:$port/admin/proxy-configs" -H "Authorization: Bearer $token" | grep -q '"slug":"openrouter-api"' ||
        fail "$kind: the original's services are not listed"
    echo "   the original's database: opened, its services listed"
    stop "$kind-original"
    cd "$ROOT"

    # 5. A named volume (the compose files' way).
    docker volume rm -f rotator_images_test >/dev/null 2>&1 || true
    quick_start "$kind-volume" "$image" "rotator_images_test:/app/data"
    started "$kind-volume"
    stop "$kind-volume"
    docker volume rm -f rotator_images_test >/dev/null

    # 6. --user 10001:10001 on a directory already writable by it.
    mkdir -p "$d/user/data" && chown 10001:10001 "$d/user/data"
    cd "$d/user"
    quick_start "$kind-user" "$image" "$(pwd)/data:/app/data" --user 10001:10001
    started "$kind-user" "$(pwd)/data"
    stop "$kind-user"
    cd "$ROOT"

    # 7. What cannot work says why, in one line: --user 10001:10001 on root's directory,
    # and a read-only mount.
    mkdir -p "$d/denied/data" && chown 0:0 "$d/denied/data" && chmod 755 "$d/denied/data"
    cd "$d/denied"
    quick_start "$kind-denied" "$image" "$(pwd)/data:/app/data" --user 10001:10001
    refused "$kind-denied" "running as uid 10001, gid 10001" "sudo chown -R 10001:10001 ./data"
    quick_start "$kind-readonly" "$image" "$(pwd)/data:/app/data:ro"
    refused "$kind-readonly" "Read-only file system" "the file system is read-only"
    cd "$ROOT"

    # 8. docker stop drains an open request and exits 0.
    check_drain "$kind" "$image" "$d"
}

# A slow upstream on the host, a request through the container, docker stop while it is
# open: the request gets its answer, the container exits 0.
check_drain() {
    local kind=$1 image=$2 d=$3
    local up_port
    up_port=$(free_port)
    python3 - "$up_port" >"$work/upstream.log" 2>&1 <<'EOF' &
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(2)
        body = b'{"slow":"done"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
    upstream_pid=$!
    mkdir -p "$d/drain" && cd "$d/drain"
    quick_start "$kind-drain" "$image" "$(pwd)/data:/app/data"
    started "$kind-drain"
    local token id
    token=$(login)
    id=$(api -X POST "http://127.0.0.1:$port/admin/proxy-configs" \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "{\"name\":\"Slow\",\"slug\":\"slow\",\"config_type\":\"GENERIC\",\"target_url\":\"http://127.0.0.1:$up_port\",\"method\":\"GET\"}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    api -o /dev/null -X POST "http://127.0.0.1:$port/admin/proxy-configs/$id/keys" \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d '{"key_value":"upstream-key-1"}'
    api -o "$work/drain.out" -w '%{http_code}' "http://127.0.0.1:$port/proxy/slow/x" \
        -H 'X-Proxy-Key: your_proxy_key' >"$work/drain.code" &
    local curl_pid=$!
    sleep 0.5
    local t0=$SECONDS
    docker stop -t 10 "$kind-drain" >/dev/null
    wait "$curl_pid" || true
    local code exit_code
    code=$(cat "$work/drain.code")
    exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$kind-drain")
    [[ $code == 200 ]] && grep -q slow "$work/drain.out" || fail "$kind: the open request got '$code' during docker stop"
    [[ $exit_code == 0 ]] || { docker logs "$kind-drain" >&2; fail "$kind: exit code $exit_code after docker stop"; }
    echo "   docker stop: the open request got 200, exit code 0, after $((SECONDS - t0)) s"
    stop "$kind-drain"
    kill "$upstream_pid" 2>/dev/null || true
    upstream_pid=
    cd "$ROOT"
}

check_enterprise_services() {
    say "enterprise image on MySQL + Redis (the original's DB_* and REDIS_* variables)"
    drop_test_database
    port=$(free_port)
    docker run -d --name enterprise-mysql --network host -e BACKEND_PORT="$port" \
        --health-interval=1s --health-start-period=1s \
        -e ADMIN_PASSWORD="your_password" \
        -e JWT_SECRET="your_jwt_secret" \
        -e GLOBAL_PROXY_KEYS="your_proxy_key" \
        -e DB_HOST="$mysql_host" \
        -e DB_USER="root" \
        -e DB_PASSWORD="" \
        -e DB_NAME="rotator_images_test" \
        -e REDIS_HOST="$redis_host" \
        -e REDIS_DB=10 \
        api-key-rotator:enterprise >/dev/null
    containers+=(enterprise-mysql)
    started enterprise-mysql
    local logs
    logs=$(docker logs enterprise-mysql 2>&1)
    grep -q 'Database Type: mysql' <<<"$logs" || fail "enterprise: not on MySQL: $logs"
    grep -q 'Cache Type: redis' <<<"$logs" || fail "enterprise: not on Redis: $logs"
    local token
    token=$(login)
    api -o /dev/null -X POST "http://127.0.0.1:$port/admin/proxy-configs" \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d '{"name":"OnMysql","slug":"on-mysql","config_type":"GENERIC","target_url":"http://127.0.0.1:9","method":"GET"}'
    docker restart enterprise-mysql >/dev/null
    started enterprise-mysql
    token=$(login)
    api "http://127.0.0.1:$port/admin/proxy-configs" -H "Authorization: Bearer $token" | grep -q '"slug":"on-mysql"' ||
        fail "enterprise: the service stored in MySQL is gone after restart"
    echo "   Database Type: mysql, Cache Type: redis; a service survives docker restart"
    stop enterprise-mysql
    drop_test_database
}

drop_test_database() {
    if command -v mysql >/dev/null; then
        mysql -h "$mysql_host" -u root -e 'DROP DATABASE IF EXISTS rotator_images_test' || true
    fi
}

started_at=$SECONDS
check_image lightweight 10
check_image enterprise 12
check_enterprise_services
say "images passed in $((SECONDS - started_at)) s"
