#!/usr/bin/env bash
# Builds the tiny test guest used by the e2e suite: Debian's stock amd64 kernel plus a busybox-static
# initramfs whose /init loads the virtio modules and runs one test script chosen on the kernel
# command line (vtest=NAME -> /tests/NAME.sh from scripts/guest/tests/).
#
# usage: scripts/build-guest.sh [OUTDIR]        (default: <repo>/.guest)
# outputs: OUTDIR/vmlinuz  OUTDIR/initrd.img  OUTDIR/kernel-version
#
# Cached: nothing is done when the outputs are newer than this script and every file under
# scripts/guest/. The kernel (~70 MB .deb) is fetched once; only the initramfs is rebuilt when the
# guest files change. Set GUEST_KERNEL_DEB=/path/to/linux-image-*.deb to skip the download.
# GUEST_KERNEL_SUITE=bookworm-backports takes the newest linux-image-*-amd64-unsigned of that suite
# instead (6.12: vDPA/VDUSE), through a private apt state in OUTDIR/apt (system sources untouched).
# Needs: apt-get (or GUEST_KERNEL_DEB), dpkg-deb, busybox (static), cpio, gzip.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
guestsrc="$here/guest"
out="${1:-$repo/.guest}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

# Modules the guest loads (dependencies are added automatically; built-in ones are skipped).
# Names use '_' (the kernel's canonical form); files may use '-' (virtio-rng.ko).
wanted_modules=(
  virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
  virtio_blk virtio_net virtio_console virtio_rng
  vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
  scsi_mod sd_mod virtio_scsi
  fuse virtiofs
)
# Shipped in /modules/extra/ but not loaded at boot: tests insmod them (load_extra_modules in
# lib.sh). Kernel vhost back-ends (tun, vhost_*) and the 9p share that exposes the host's root
# read-only, so a guest test can run the host's node on this checkout.
extra_modules=(
  tun vhost vhost_net vhost_vsock
  9pnet 9pnet_virtio 9p
)
# Extras shipped only by newer kernels (Debian 6.1 has no vDPA; the 6.12 backports kernel has):
# added to /modules/extra when the kernel ships them, skipped otherwise.
optional_extra_modules=(
  vdpa vduse vhost_vdpa virtio_vdpa
)

newest_input() {
  # Newest mtime (epoch seconds) among this script and the guest files.
  find "$0" "$guestsrc" -type f -printf '%T@\n' | sort -n | tail -1 | cut -d. -f1
}

is_fresh() {
  local f
  local newest
  newest="$(newest_input)"
  for f in "$out/vmlinuz" "$out/initrd.img" "$out/kernel-version" "$out/modules/order"; do
    [ -f "$f" ] || return 1
    [ "$(stat -c %Y "$f" | cut -d. -f1)" -gt "$newest" ] || return 1
  done
  return 0
}

if is_fresh; then
  log "up to date: $out"
  exit 0
fi

# Test files run in separate processes; serialize builds into the same OUTDIR.
if command -v flock >/dev/null; then
  exec 9>"$out/.lock"
  flock 9
  if is_fresh; then
    log "up to date (built by a concurrent run): $out"
    exit 0
  fi
fi

for tool in dpkg-deb cpio gzip; do
  command -v "$tool" >/dev/null || die "missing tool '$tool'"
done
busybox="$(command -v busybox || true)"
[ -n "$busybox" ] || die "missing busybox (install busybox-static)"
# A dynamically linked busybox would need its libc inside the initramfs: insist on the static build.
# Static <=> no PT_INTERP (type 3) program header; read the ELF64 header fields with od.
elf_u() { od -An -t "u$2" -j "$1" -N "$2" "$busybox" | tr -d ' '; }
phoff="$(elf_u 32 8)"; phentsize="$(elf_u 54 2)"; phnum="$(elf_u 56 2)"
for ((i = 0; i < phnum; i++)); do
  if [ "$(elf_u $((phoff + i * phentsize)) 4)" = 3 ]; then
    die "$busybox is dynamically linked; install busybox-static"
  fi
done

work="$(mktemp -d "${TMPDIR:-/tmp}/build-guest.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------- kernel + modules (cached)
# Downloads the newest Debian kernel image of suite $1 into $work with a private apt state; prints
# the .deb path.
fetch_suite_kernel() {
  local suite="$1" st="$out/apt"
  mkdir -p "$st/lists/partial" "$st/cache/archives/partial"
  echo "deb http://deb.debian.org/debian $suite main" > "$st/sources.list"
  local opts=(-o "Dir::Etc::sourcelist=$st/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$st/lists"
    -o "Dir::Cache=$st/cache" -o APT::Sandbox::User=root)
  log "apt-get update ($suite, private state in $st)"
  apt-get "${opts[@]}" update -qq >&2
  local pkg
  pkg="$(apt-cache "${opts[@]}" search --names-only '^linux-image-[0-9.]+\+deb[0-9]+-amd64-unsigned$' | awk '{print $1}' | sort -V | tail -1)"
  [ -n "$pkg" ] || die "no linux-image-*-amd64-unsigned in $suite"
  log "downloading $pkg from $suite"
  (cd "$work" && apt-get "${opts[@]}" download -q "$pkg" >&2)
  ls "$work"/linux-image-*.deb | head -1
}

fetch_kernel() {
  local deb="${GUEST_KERNEL_DEB:-}"
  if [ -z "$deb" ] && [ -n "${GUEST_KERNEL_SUITE:-}" ]; then
    deb="$(fetch_suite_kernel "$GUEST_KERNEL_SUITE")"
  fi
  if [ -z "$deb" ]; then
    command -v apt-get >/dev/null || die "no apt-get: set GUEST_KERNEL_DEB=/path/to/linux-image-*-amd64.deb"
    local pkg
    pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    if [ -z "$pkg" ]; then
      log "apt-cache knows no linux-image-amd64; running apt-get update"
      apt-get update -qq >&2
      pkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    fi
    [ -n "$pkg" ] || die "cannot resolve the kernel package linux-image-amd64 depends on"
    log "downloading $pkg"
    # As root, apt's _apt sandbox user cannot write into a private mktemp dir; download unsandboxed.
    if ! (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2); then
      log "download failed; running apt-get update and retrying"
      apt-get update -qq >&2
      (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2)
    fi
    deb="$(ls "$work"/linux-image-*.deb | head -1)"
  fi
  [ -f "$deb" ] || die "kernel package not found: $deb"
  log "extracting $(basename "$deb")"
  dpkg-deb -x "$deb" "$work/kpkg"
  local vmlinuz
  vmlinuz="$(ls "$work"/kpkg/boot/vmlinuz-* | head -1)"
  local kver="${vmlinuz##*/vmlinuz-}"
  local mdir="$work/kpkg/lib/modules/$kver"
  [ -d "$mdir" ] || die "no modules for $kver in the package"

  # Index every module file by canonical name; the package ships no modules.dep (depmod runs at
  # install time), so dependencies come from each module's own .modinfo 'depends=' field.
  declare -A path_of=()
  local f name
  while IFS= read -r f; do
    name="$(basename "$f")"; name="${name%%.ko*}"; name="${name//-/_}"
    path_of[$name]="$f"
  done < <(find "$mdir/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst')
  declare -A builtin=()
  while IFS= read -r f; do
    name="$(basename "$f")"; name="${name%%.ko*}"; name="${name//-/_}"
    builtin[$name]=1
  done < "$mdir/modules.builtin"

  rm -rf "$out/modules.new"
  mkdir -p "$out/modules.new"
  declare -A done_=()
  local order=()
  add_module() {
    local m="${1//-/_}"
    [ -n "${done_[$m]:-}" ] && return 0
    done_[$m]=1
    if [ -n "${builtin[$m]:-}" ]; then return 0; fi
    local p="${path_of[$m]:-}"
    [ -n "$p" ] || die "module $m is neither built in nor shipped by $kver"
    local plain="$work/$m.ko"
    # Busybox insmod cannot decompress: store plain .ko files.
    case "$p" in
      *.xz) xz -dc "$p" > "$plain" ;;
      *.zst) zstd -qdc "$p" > "$plain" ;;
      *) cp "$p" "$plain" ;;
    esac
    local deps d
    deps="$(tr '\0' '\n' < "$plain" | LC_ALL=C grep -a -m1 '^depends=' | cut -d= -f2 || true)"
    for d in ${deps//,/ }; do add_module "$d"; done
    mv "$plain" "$out/modules.new/$m.ko"
    order+=("$m")
  }
  local m
  for m in "${wanted_modules[@]}"; do add_module "$m"; done
  printf '%s\n' "${order[@]}" > "$out/modules.new/order"
  # Extras after the boot set: their dependencies already loaded at boot are not repeated.
  local boot_order=("${order[@]}")
  order=()
  for m in "${extra_modules[@]}"; do add_module "$m"; done
  for m in "${optional_extra_modules[@]}"; do
    if [ -n "${path_of[$m]:-}" ] || [ -n "${builtin[$m]:-}" ]; then add_module "$m"; fi
  done
  mkdir -p "$out/modules.new/extra"
  for m in "${order[@]}"; do mv "$out/modules.new/$m.ko" "$out/modules.new/extra/"; done
  printf '%s\n' "${order[@]}" > "$out/modules.new/extra/order"
  echo "${wanted_modules[*]} ${extra_modules[*]} ${optional_extra_modules[*]} suite=${GUEST_KERNEL_SUITE:-}" > "$out/modules.new/wanted"
  order=("${boot_order[@]}" "${order[@]}")
  rm -rf "$out/modules"
  mv "$out/modules.new" "$out/modules"
  cp "$vmlinuz" "$out/vmlinuz"
  echo "$kver" > "$out/kernel-version"
  log "kernel $kver; modules: ${order[*]}"
}

# The kernel is refetched only when it is missing or the wanted module list changed.
if [ ! -f "$out/vmlinuz" ] || [ ! -f "$out/modules/order" ] || [ ! -f "$out/kernel-version" ] \
   || [ "$(cat "$out/modules/wanted" 2>/dev/null)" != "${wanted_modules[*]} ${extra_modules[*]} ${optional_extra_modules[*]} suite=${GUEST_KERNEL_SUITE:-}" ]; then
  fetch_kernel
fi

# ---------------------------------------------------------------- initramfs
root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,run,mnt,modules,tests,lib}
cp "$busybox" "$root/bin/busybox"
# One symlink per applet so scripts can call plain names without $PATH tricks.
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
ln -s bin "$root/sbin"
cp "$out"/modules/*.ko "$out/modules/order" "$root/modules/"
copy_extra_modules() {
  mkdir -p "$root/modules/extra"
  cp "$out"/modules/extra/*.ko "$out/modules/extra/order" "$root/modules/extra/"
}
copy_extra_modules
cp "$guestsrc/init" "$root/init"
cp "$guestsrc/lib.sh" "$root/lib/vtest.sh"
cp "$guestsrc"/tests/*.sh "$root/tests/"
chmod 0755 "$root/init" "$root"/tests/*.sh
# Without /dev/console in the archive the kernel starts init with no stdio (devtmpfs is not yet
# mounted then), and every marker the host waits for would be lost.
mknod -m 600 "$root/dev/console" c 5 1 || die "mknod /dev/console failed (needs root or CAP_MKNOD)"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) > "$work/initrd.cpio"
gzip -6 -n < "$work/initrd.cpio" > "$out/initrd.img.new"
mv "$out/initrd.img.new" "$out/initrd.img"
touch "$out/vmlinuz" "$out/kernel-version" "$out/modules/order"
log "built $out/initrd.img ($(stat -c %s "$out/initrd.img") bytes) for kernel $(cat "$out/kernel-version")"
