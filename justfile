set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# A development-only secret, so `just run` and `just token` work together out of the box.
# Any real deployment sets SSE_ROUTER_JWT_SECRET (or a public key) itself.
export SSE_ROUTER_JWT_SECRET := env_var_or_default("SSE_ROUTER_JWT_SECRET", "dev-only-secret-never-use-in-production")

# Start the router on its embedded default (in-memory bus and replay cache): `just run --port 9000`.
run *ARGS:
    sse-router serve --log-format console {{ARGS}}

# Mint a development token for `just run`: `just token --sub u1 --novels n1,n2 --roles publisher`.
token *ARGS:
    @sse-router token {{ARGS}}

# Everything CI checks: lint, generated files up to date, the TypeScript types, the reaches into
# libraries' objects on the older versions pyproject.toml admits, the test suite.
test: lint ts-deps system-deps private-reaches
    python -m router.codegen --check
    npm test --prefix clients/typescript --silent
    npm run test:e2e --prefix clients/typescript --silent
    python -m pytest

# tests/private_reaches.py: installs each set once under .cache/private-reaches/; extra arguments
# go to pytest (`just private-reaches -x`). The suite itself runs on the newest versions.
# The tests of the reaches into hypercorn's, h11's, wsproto's, aiokafka's objects, on older versions.
private-reaches *ARGS:
    python -m tests.private_reaches {{ARGS}}

# ruff on the code and tests, mypy --strict on the router and its actors.
lint:
    ruff check router actors tests
    ruff format --check router actors tests
    mypy --strict router actors

# Rewrite the files generated from the event contracts (TypeScript types, mapping document).
generate:
    python -m router.codegen

# Install the TypeScript toolchain from clients/typescript/package-lock.json when it changed.
ts-deps:
    #!/usr/bin/env bash
    set -euo pipefail
    installed=clients/typescript/node_modules/.package-lock.json
    if [ ! -f "$installed" ] || [ clients/typescript/package-lock.json -nt "$installed" ]; then
        npm ci --prefix clients/typescript --no-audit --no-fund
    fi

# Start a local Kafka-compatible broker (tansu, in memory) on 127.0.0.1:9092 with a 3-partition
# topic `sse-events`, for `just run --bus kafka`. Stop it with Ctrl-C.
kafka PORT="9092" TOPIC="sse-events":
    python -m tests.kafka_broker --port {{PORT}} --topic {{TOPIC}}

# Debian packages the tests use beyond Python and npm: nginx (the reverse-proxy test) and
# Chromium (the browser tests of the TypeScript client; never a browser download of its own).
system-deps:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    [ ${#missing[@]} = 0 ] && exit 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing and not installable here: ${missing[*]}" >&2
        exit 1
    fi

# The fault suite's longer soak: two routers on a Redis of its own, every fault mixed (router
# SIGTERM/SIGKILL, Redis restarts with and without data, reconnect storms, drops, slow readers),
# one table at the end: `just faults --seconds 300 --seed 7`. `just test` runs tests/faults bounded.
faults *ARGS:
    python -m tests.faults.soak {{ARGS}}

# Measure the router (1 and 2 workers, every bus) beside a Python peer (sse-starlette on uvicorn)
# and nginx with nchan (installed when missing, as root); prints a table and the targets. Not a test.
bench *ARGS:
    pip install --quiet -e '.[dev,bench]'
    python -m bench.run {{ARGS}}

# What an idle stream costs the router in memory (RSS and tracemalloc): `just bench-memory --streams 10000`.
bench-memory *ARGS:
    python -m bench.memory {{ARGS}}
