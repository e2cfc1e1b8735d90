# pid1: every workflow. `just --list` describes each recipe.
#
# `just test`: setup -> lint -> unit -> image (the init and the CLI beside
# the kernel, then the root filesystem) -> the VM suites. `just ci` (what
# .ci/run calls) adds the library built alone and its docs before the image.

set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments

build := justfile_directory() / "build"

# The Python 3.11 whose pip resolves and installs packages for the guest
# (`-p`, a run's `packages`): build/venv's, which scripts/bootstrap makes
# with pip, where a fresh Debian's python3 has none.
export PID1_PYTHON := env_var_or_default("PID1_PYTHON", if path_exists(build / "venv/bin/pip") == "true" { build / "venv/bin/python" } else { "python3" })
just := quote(just_executable()) + " --justfile " + quote(justfile())

# List the recipes
default:
    @{{just}} --list --unsorted

# ---- setup --------------------------------------------------------------

# Install the Debian packages for the build, the guest image and the tests
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    packages=(qemu-system-x86 erofs-utils linux-source-6.1 busybox-static python3 \
              build-essential bc bison flex libelf-dev libssl-dev xz-utils util-linux)
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        echo "setup: installing ${missing[*]}"
        $sudo apt-get update -q
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    # `just lint` (part of `just test`) needs rustfmt and clippy.
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        echo "setup: installing rustfmt and clippy"
        rustup component add rustfmt clippy
    fi

# ---- build --------------------------------------------------------------

# Build the init (static, no_std) and the host CLI `vmexec`, release mode
build:
    @cargo build -q --profile init -p pid1
    @cargo build -q --release -p vmhost -p vmexec

# Print the size of the stripped init binary
size: build
    @echo "pid1: $(stat -c %s target/init/pid1) bytes ($(( $(stat -c %s target/init/pid1) / 1024 )) KiB), static: $(readelf -d target/init/pid1 2>&1 | grep -q 'no dynamic section' && echo yes || echo NO)"

# Build the guest kernel from linux-source-6.1 (cached by config + source version), bit for bit the same each time
kernel:
    #!/usr/bin/env bash
    set -euo pipefail
    vmlinux="$(rootfs/build-kernel.sh)"
    dir="$(dirname "${vmlinux#{{build}}/}")"
    ln -sfn "$dir/vmlinux" "{{build}}/vmlinux"
    # QEMU boots the vmlinux (PVH entry): no bzImage is built.
    rm -f "{{build}}/bzImage"

# Build the kernel and the root filesystem twice, in two fresh directories, and compare their SHA-256
verify-reproducible: build
    nice -n 10 scripts/verify-reproducible target/init/pid1

# Build the guest root filesystem image with the current init (cached)
rootfs: build
    @rootfs/build-rootfs.sh target/init/pid1 >/dev/null

# Build everything a VM needs: init, CLI, kernel, root filesystem
image: setup
    #!/usr/bin/env bash
    set -euo pipefail
    # The kernel is minutes of make, and the rest needs nothing from it:
    # the init, the CLI and the root filesystem are built beside it, off
    # the critical path (unpacking and configuring the kernel use one
    # core). Each runs to its end; either failing fails the image.
    {{just}} rootfs & side=$!
    kernel=0
    {{just}} kernel || kernel=$?
    wait "$side"
    exit "$kernel"

# Run Python code in a fresh VM, e.g. `just run 'print(1+1)'`; more vmexec flags may follow
run code *flags: image
    @target/release/vmexec run -c "$1" "${@:2}"

# Install vmexec in PREFIX/bin and the guest image in PREFIX/share/pid1, where an installed vmexec finds it (or set PID1_IMAGE_DIR)
install prefix="/usr/local": image
    #!/usr/bin/env bash
    set -euo pipefail
    prefix="$1"
    install -d "$prefix/bin" "$prefix/share/pid1"
    install -m 0755 target/release/vmexec "$prefix/bin/vmexec"
    # The image files themselves, not the build directory's links to them.
    install -m 0644 "$(readlink -f build/vmlinux)" "$prefix/share/pid1/vmlinux"
    install -m 0644 "$(readlink -f build/rootfs.erofs)" "$prefix/share/pid1/rootfs.erofs"
    install -m 0644 service/pid1.service "$prefix/share/pid1/pid1.service"
    echo "installed $prefix/bin/vmexec and $prefix/share/pid1 (systemd unit: $prefix/share/pid1/pid1.service)"

# Serve runs and sessions over HTTP from a warm pool, e.g. `just serve --listen unix:/tmp/pid1.sock`
serve *flags: image
    target/release/vmexec serve "$@"

# ---- checks -------------------------------------------------------------

# Print the module graph of the init and of every host crate; fails on a cycle
modules:
    #!/usr/bin/env bash
    set -euo pipefail
    python3 scripts/modules.py src $(for d in */src; do [ -e "$d/lib.rs" ] || [ -e "$d/main.rs" ] && echo "$d"; done)

# Check formatting, lints (clippy with warnings as errors) and the module graphs
lint:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        echo "lint: rustfmt or clippy is missing; run \`just setup\`" >&2
        exit 1
    fi
    {{just}} modules >/dev/null
    cargo fmt --all --check
    cargo clippy --profile init -p pid1 -- -D warnings
    cargo clippy --profile init -p pid1 --lib --tests -- -D warnings
    # No -p: the workspace's default members, which are every host crate.
    cargo clippy --release --all-targets --features proto/std -- -D warnings

# Run every test that needs no kernel, QEMU or VM: the init's and the host crates' unit tests, the wire, the zygote's records
unit:
    #!/usr/bin/env bash
    set -euo pipefail
    cargo test --profile init -p pid1 --lib
    cargo test --release -p proto --features std
    cargo test --release -p vmhost -p vmserve --lib
    cargo test --release -p vmexec
    if [ -f rootfs/test_zygote_wire.py ]; then python3 -B rootfs/test_zygote_wire.py; fi

# Run every test: lint and unit first (a broken one fails before the kernel is built), then the image, the VM suites under QEMU and the API fuzzed against its document
test: setup lint unit image
    cargo test --release -p vmtests
    scripts/fuzz-api
    scripts/test-python

# The Python SDK's tests (python/tests) against real VMs, in build/venv (made from PyPI when missing); pytest arguments may follow
test-python *args: image
    scripts/test-python "$@"

# The MCP server on stdio (python -m pid1.mcp) for an MCP client to start, with its own vmexec serve (or PID1_SERVER's)
mcp:
    scripts/test-python --setup >&2
    PID1_VMEXEC="${PID1_VMEXEC:-target/release/vmexec}" build/venv/bin/python -m pid1.mcp

# Fuzz a real service's HTTP API against service/openapi.json (Schemathesis, ~1-3 min under TCG); nothing may be left after SIGTERM
fuzz-api *args: image
    scripts/fuzz-api "$@"

# Build the vmhost library alone, with no optional dependency: as a crate that depends on it with `default-features = false` gets it
lib-alone:
    cargo build --release -p vmhost --lib --no-default-features

# Build the API documentation of vmhost and proto; a broken intra-doc link fails it
doc:
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p vmhost -p proto

# What .ci/run runs: the library alone and its docs (fast, so before the kernel), then every test
ci: setup lint unit lib-alone doc test

# Fuzz the frame reader, request decoding and the init's request handling in-process, RUNS executions each (nightly + cargo-fuzz); corpus and crashes in fuzz/ are replayed by `just test`
fuzz runs="5000000":
    #!/usr/bin/env bash
    set -euo pipefail
    if ! rustup toolchain list | grep -q '^nightly'; then
        echo "fuzz: needs a nightly toolchain (rustup toolchain install nightly)" >&2
        exit 1
    fi
    command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
    for target in frames requests serve; do
        cargo +nightly fuzz run --fuzz-dir fuzz "$target" -- -runs="{{runs}}" -max_len=4096
        cargo +nightly fuzz cmin --fuzz-dir fuzz "$target"
    done

# ---- benchmarks ---------------------------------------------------------

# Boot N VMs per job kind, alternating with a busybox-sh baseline init; medians and ratios
bench-boot n="10": image
    cargo run --release -q -p vmexec --bin bench-boot -- --runs "$1"

# A package set's first use (resolve, install, layer, template, each timed), then `import numpy` in warm VMs with and without preloading, against print(1); medians and ratios
bench-packages runs="20": image
    cargo run --release -q -p vmexec --bin bench-packages -- --runs "$1"

# The service against vmexec run (warm-pool hits, alternating), then load from 4 and 16 clients; medians, p95/p99, ratios
bench-serve n="20" load="200": image
    cargo run --release -q -p vmserve --bin bench-serve -- --runs "$1" --load-runs "$2" --clients 4,16

# print(1) through the Python SDK (and the exec-sandbox drop-in) on a warm pool, against raw HTTP and vmexec run; medians and ratios
bench-python n="30": image
    scripts/bench-python --runs "$1"

# print(1) through pid1.ray on a 2-node Ray cluster here (a pool on 1 node, on 2) and through the SDK on one service, taking turns; p50/p95, runs/s, Ray's added median per run
bench-ray runs="200": image
    scripts/bench-ray --runs "$1"

# RUNS runs through one service from 8 clients, each checked for its own output; nothing may be left after SIGTERM
soak runs="2000": image
    cargo run --release -q -p vmserve --bin soak -- --runs "$1" --clients 8

# How late job timeouts fire in a VM: idle, beside output floods, and with the host not reading; medians and ratios
bench-timeouts n="10": image
    cargo run --release -q -p vmexec --bin bench-timeouts -- --runs "$1"
