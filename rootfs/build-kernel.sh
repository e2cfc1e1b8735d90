#!/usr/bin/env bash
# Builds the guest kernel from Debian's linux-source-6.1 and our config
# fragment. The result is cached under $BUILD/kernel-<key>, where the key
# hashes the fragment, this script and the source package version: the same
# inputs never build twice. What comes out is `vmlinux`, the uncompressed
# ELF that QEMU boots through its PVH entry (no firmware, no decompression).
# It rebuilds bit for bit: the build time is the source package's, the
# user, host and build number are fixed, and no build path is embedded
# (`just verify-reproducible` checks). Prints the vmlinux path on stdout.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
build="${BUILD:-$here/../build}"
mkdir -p "$build"
build="$(cd "$build" && pwd)"

tarball=/usr/src/linux-source-6.1.tar.xz
if [ ! -f "$tarball" ]; then
    echo "kernel: $tarball is missing; run 'just setup' (apt-get install linux-source-6.1)" >&2
    exit 1
fi
version="$(dpkg-query -W -f='${Version}' linux-source-6.1)"
key="$(cat "$here/kernel.config" "$0" <(echo "$version") | sha256sum | cut -c1-16)"
out="$build/kernel-$key"

if [ -f "$out/vmlinux" ]; then
    echo "$out/vmlinux"
    exit 0
fi

src="$build/linux-source-$version"
if [ ! -f "$src/Makefile" ]; then
    echo "kernel: unpacking linux-source $version" >&2
    rm -rf "$src.tmp" && mkdir -p "$src.tmp"
    tar -xf "$tarball" -C "$src.tmp" --strip-components=1
    mv "$src.tmp" "$src"
fi

obj="$out.obj"
rm -rf "$obj" && mkdir -p "$obj"
echo "kernel: configuring (tinyconfig + rootfs/kernel.config)" >&2
make -s -C "$src" O="$obj" tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$here/kernel.config" >/dev/null
make -s -C "$src" O="$obj" olddefconfig >/dev/null

# A fragment line the kernel silently dropped (a missing dependency) would
# show up only at boot: refuse it here instead.
missing=0
while IFS= read -r line; do
    case "$line" in CONFIG_*=*) ;; *) continue ;; esac
    if ! grep -qx -- "$line" "$obj/.config"; then
        echo "kernel: config did not take: $line" >&2
        missing=1
    fi
done < "$here/kernel.config"
[ "$missing" = 0 ] || exit 1

# The build time the kernel embeds (its version string, `uname -v`) is the
# source package's: the date of the newest entry of its Debian changelog,
# as dpkg-parsechangelog reads it (the tarball's mtime is the same instant).
changelog=/usr/share/doc/linux-source-6.1/changelog.Debian.gz
# (Read whole: a reader that stops early would fail the pipe.)
stamp="$(zcat "$changelog" | sed -n 's/^ -- .*>  //p')"
stamp="${stamp%%$'\n'*}"
SOURCE_DATE_EPOCH="$(date -u -d "$stamp" +%s)"
export SOURCE_DATE_EPOCH
export KBUILD_BUILD_TIMESTAMP="$(date -u -d "@$SOURCE_DATE_EPOCH")"
export KBUILD_BUILD_USER=pid1 KBUILD_BUILD_HOST=pid1 KBUILD_BUILD_VERSION=1
# __FILE__ and the like name files relative to the trees, wherever they are.
export KCFLAGS="-ffile-prefix-map=$src/= -ffile-prefix-map=$obj/="

jobs="$(nproc)"
echo "kernel: building vmlinux with make -j$jobs (about 5-7 minutes on 2 cores)" >&2
start=$SECONDS
# One progress line per 250 compiled objects, so a CI log shows it moving.
make -C "$src" O="$obj" -j"$jobs" LOCALVERSION= vmlinux 2>&1 | {
    n=0
    while IFS= read -r line; do
        case "$line" in
            "  CC"*|"  AS"*|"  LD"*|"  AR"*)
                n=$((n + 1))
                [ $((n % 250)) = 0 ] && echo "kernel: $n objects, $((SECONDS - start))s" >&2 ;;
            *rror*) echo "$line" >&2 ;;
        esac
    done
}
[ "${PIPESTATUS[0]}" = 0 ] || { echo "kernel: build failed" >&2; exit 1; }

mkdir -p "$out"
# The symbol table is for debuggers; the PVH note and the code stay.
strip -o "$out/vmlinux" "$obj/vmlinux"
cp "$obj/.config" "$out/config"
rm -rf "$obj"
echo "kernel: built in $((SECONDS - start))s: vmlinux $(stat -c %s "$out/vmlinux") bytes" >&2
echo "$out/vmlinux"
