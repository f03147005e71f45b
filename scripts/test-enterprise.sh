#!/usr/bin/env bash
# make test-enterprise: the MySQL store and Redis rotation state against real servers.
#
#   MariaDB/MySQL  TEST_MYSQL_URL  (default mysql://root@127.0.0.1:3306; the user must be
#                                   allowed to create and drop databases rotator_test_*)
#   Redis          TEST_REDIS_URL  (default redis://127.0.0.1:6379; the tests use its
#                                   databases 11, 12 and 13)
#   redis-server   on PATH         (the outage test starts and kills a private one)
#
# A server that does not answer is an error, never a skip.
# `--check` only checks that the servers answer (scripts/dist.sh uses it).
set -euo pipefail
cd "$(dirname "$0")/.."

mysql_url=${TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306}
redis_url=${TEST_REDIS_URL:-redis://127.0.0.1:6379}

# host and port of scheme://[user[:pass]@]host[:port][/...]
host_port() {
    local rest=${1#*://}
    rest=${rest##*@}
    rest=${rest%%/*}
    local host=${rest%%:*} port=$2
    [[ $rest == *:* ]] && port=${rest##*:}
    echo "$host $port"
}

fail() {
    echo "test-enterprise: $*" >&2
    exit 1
}

read -r mysql_host mysql_port < <(host_port "$mysql_url" 3306)
read -r redis_host redis_port < <(host_port "$redis_url" 6379)

# MySQL speaks first: a greeting packet proves a server, not just an open port.
if ! timeout 5 bash -c "exec 3<>/dev/tcp/$mysql_host/$mysql_port && head -c 5 <&3 >/dev/null" 2>/dev/null; then
    fail "MariaDB/MySQL is not reachable at $mysql_host:$mysql_port (set TEST_MYSQL_URL, or start it)"
fi
pong=$(timeout 5 bash -c "exec 3<>/dev/tcp/$redis_host/$redis_port && printf 'PING\r\n' >&3 && head -c 5 <&3" 2>/dev/null || true)
[[ $pong == "+PONG" ]] || fail "Redis is not reachable at $redis_host:$redis_port (set TEST_REDIS_URL, or start it)"
command -v redis-server >/dev/null || fail "redis-server is not on PATH (the outage test runs a private one)"
[[ ${1:-} == --check ]] && exit 0

echo "== enterprise tests: MySQL $mysql_host:$mysql_port, Redis $redis_host:$redis_port"
start=$(date +%s)
cargo test --features enterprise \
    --lib \
    --test store_sqlite \
    --test store_mysql \
    --test cluster \
    --test enterprise_migration \
    --test backend_selection \
    -- "$@"
echo "== enterprise tests passed in $(($(date +%s) - start)) s"
