# Darkroom's everyday commands. Get `just` with: pip install rust-just

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"

# List the commands
default:
    @just --list

# Start RabbitMQ, every service and the API (Ctrl-C stops everything)
run: setup
    {{venv}}/bin/darkroom run

# Run every test tier: unit, integration (real RabbitMQ, files, diffusers), e2e (the whole stack)
test *args: setup
    {{venv}}/bin/pytest {{args}}

# Only the unit tier (no I/O, a few seconds)
test-unit *args: setup
    {{venv}}/bin/pytest tests/unit {{args}}

# Only the integration tier (a private RabbitMQ, real files, DuckDB, the tiny model)
test-integration *args: setup
    {{venv}}/bin/pytest tests/integration {{args}}

# Only the e2e tier (the whole stack as `just run` starts it)
test-e2e *args: setup
    {{venv}}/bin/pytest tests/e2e {{args}}

# Lint and import order (ruff, configured in pyproject.toml); `just lint --fix` mends what it can
lint *args: setup
    {{venv}}/bin/ruff check {{args}} .

# Measure Darkroom against its baselines: `just bench`, `just bench overhead`, `just bench --quick`
bench *args: setup
    {{venv}}/bin/darkroom bench {{args}}

# Create the virtualenv and install what is missing (idempotent, quick when done)
setup:
    ops/setup.sh

# Regenerate the committed JSON Schema of the events
schema: setup
    {{venv}}/bin/darkroom schema > schemas/events.schema.json

# Regenerate the TypeScript client's types (clients/typescript/src/schema.d.ts) from a running
# server's OpenAPI document; tests/e2e/test_clients.py fails when the committed file drifts
ts-types url=env_var_or_default("DARKROOM_URL", "http://127.0.0.1:8000"):
    cd clients/typescript && ([ -d node_modules ] || npm ci --no-audit --no-fund) && DARKROOM_URL={{url}} npm run --silent generate
