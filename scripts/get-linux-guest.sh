#!/usr/bin/env bash
# Guest kit for Linux appliances: Debian's cloud kernel plus a busybox initramfs.
#
# Output (artifacts/linux/, ignored by git):
#   vmlinuz               the kernel (bzImage)
#   initramfs.cpio        busybox, the virtio/ext4 modules and an /init (see docs/linux-guests.md); not
#                         compressed, since the kernel unpacks it faster than it inflates one
#   kernel.release        the kernel's release string (uname -r)
#   modules.order         the modules /init may load, in load order, each with the virtio device IDs that
#                         call for it (none: always loaded)
#   (inside the initramfs, /bin/virt-agent and /bin/virt-modload are scripts/virt-agent.c and
#   scripts/virt-modload.c built with gcc -static)
#
# Usage: scripts/get-linux-guest.sh [--force] [--boot-qemu]
#   --force      rebuild the initramfs even when it is up to date
#   --boot-qemu  afterwards boot the kit under qemu-system-x86_64 (TCG) and print the seconds
#                from start to the VIRT-INIT-READY marker and to power-off
#
# Running it again skips the downloads and extractions that are already done.
set -euo pipefail

root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${VIRT_LINUX_ARTIFACTS:-$root_dir/artifacts/linux}"
debs="$out/debs"
kernel_root="$out/kernel-root"
busybox_root="$out/busybox-root"

force=0
boot_qemu=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --boot-qemu) boot_qemu=1 ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

log() { echo "get-linux-guest: $*" >&2; }

# first_match PATTERN...: prints the first existing path the glob expands to, or nothing.
first_match() {
  local f
  for f in "$@"; do
    if [ -e "$f" ]; then printf '%s\n' "$f"; return 0; fi
  done
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt-cache and apt-get download need package lists; fetch them once when there are none.
ensure_apt_lists() {
  if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
    log "no apt package lists; running apt-get update"
    as_root apt-get update -qq
  fi
}

ensure_tool() { # ensure_tool COMMAND PACKAGE
  if ! command -v "$1" >/dev/null 2>&1; then
    ensure_apt_lists
    log "installing $2 for $1"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  fi
}

# download PACKAGE: fetches PACKAGE's .deb into $debs unless one is there already.
download() {
  local pkg="$1"
  if compgen -G "$debs/${pkg}_*.deb" >/dev/null; then
    return 0
  fi
  ensure_apt_lists
  log "downloading $pkg"
  (cd "$debs" && apt-get download -q "$pkg" >/dev/null)
}

mkdir -p "$out" "$debs"
ensure_tool dpkg-deb dpkg
ensure_tool cpio cpio
ensure_tool gzip gzip
ensure_tool xz xz-utils

# 1. Packages: the meta package names the versioned kernel package it depends on.
download linux-image-cloud-amd64
meta_deb="$(first_match "$debs"/linux-image-cloud-amd64_*.deb)"
versioned="$(dpkg-deb -f "$meta_deb" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[^ ]*-cloud-amd64\).*/\1/p' | grep -v -- '-unsigned$' | head -n1)"
if [ -z "$versioned" ]; then
  log "cannot find the versioned kernel package in the Depends of $meta_deb"
  exit 1
fi
# Debian ships a signed package that pulls the unsigned one; either carries vmlinuz and modules.
download "$versioned"
versioned_release="${versioned#linux-image-}"
download busybox-static

# 2. Extraction (once per .deb).
extract() { # extract DEB DIR
  local stamp
  stamp="$2/.extracted-$(basename "$1")"
  if [ -e "$stamp" ]; then return 0; fi
  log "extracting $(basename "$1")"
  mkdir -p "$2"
  dpkg-deb -x "$1" "$2"
  touch "$stamp"
}
extract "$(first_match "$debs/${versioned}"_*.deb)" "$kernel_root"
extract "$(first_match "$debs"/busybox-static_*.deb)" "$busybox_root"

kernel_image="$(first_match "$kernel_root/boot/vmlinuz-$versioned_release" "$kernel_root"/boot/vmlinuz-*)"
if [ -z "$kernel_image" ]; then
  log "no boot/vmlinuz-* in $versioned"
  exit 1
fi
kver="${kernel_image##*/vmlinuz-}"
moddir="$kernel_root/lib/modules/$kver"
# The .deb leaves modules.dep to the postinst's depmod; generate it inside the extracted tree.
if [ ! -f "$moddir/modules.dep" ]; then
  export PATH="$PATH:/usr/sbin:/sbin"
  ensure_tool depmod kmod
  log "running depmod for $kver"
  depmod -b "$kernel_root" "$kver"
fi
cmp -s "$kernel_image" "$out/vmlinuz" || cp "$kernel_image" "$out/vmlinuz"
echo "$kver" > "$out/kernel.release.tmp" && mv "$out/kernel.release.tmp" "$out/kernel.release"

# 3. The initramfs, unless it is newer than everything it is made of.
initramfs="$out/initramfs.cpio"
needs_build=1
if [ "$force" -eq 0 ] && [ -f "$initramfs" ] \
   && [ "$initramfs" -nt "${BASH_SOURCE[0]}" ] && [ "$initramfs" -nt "$kernel_image" ] \
   && [ "$initramfs" -nt "$root_dir/scripts/virt-agent.c" ] && [ "$initramfs" -nt "$root_dir/scripts/virt-modload.c" ]; then
  needs_build=0
fi

# Modules the appliance may need (names as modprobe spells them; '-' and '_' are equivalent), each as NAME or
# NAME@IDS: IDS are the virtio device IDs (comma-separated, decimal) whose presence calls for the module, and /init
# loads it only when the machine has such a device (loading a module costs a guest on an emulated CPU about as much
# as starting a process). Any that are built into this kernel are skipped; dependencies come from modules.dep and
# are needed whenever a module that depends on them is. The machine has no PCI bus, so no virtio-pci.
wanted=(virtio virtio_ring virtio_mmio
        virtio_net@1 failover@1 net_failover@1
        virtio_blk@2 crc16@2 crc32c_generic@2 libcrc32c@2 mbcache@2 jbd2@2 ext4@2
        virtio_console@3 virtio_rng@4 virtio_balloon@5)
# vsock (AF_VSOCK over virtio, device 19), for the guest agent and host <-> guest streams.
wanted+=(vsock@19 vmw_vsock_virtio_transport_common@19 vmw_vsock_virtio_transport@19)
# Shared folders (virtio-fs, device 26): the FUSE core and its virtio transport.
wanted+=(fuse@26 virtiofs@26)

norm() { local n="${1##*/}"; n="${n%%.ko*}"; echo "${n//-/_}"; }

# path_of NAME: the modules.dep path of module NAME, or nothing when it is built in or absent.
declare -A dep_path=()
declare -A dep_list=()
while IFS= read -r line; do
  path="${line%%:*}"
  deps="${line#*:}"
  dep_path[$(norm "$path")]="$path"
  dep_list[$path]="$deps"
done < "$moddir/modules.dep"

declare -A seen=()
# when[PATH]: the device IDs that call for the module, or "always".
declare -A when=()
order=()
# needed_when PATH IDS: the module is also needed when IDS ("" = always) are present.
needed_when() {
  local path="$1" ids="$2"
  if [ -z "$ids" ] || [ "${when[$path]:-}" = always ]; then
    when[$path]=always
  elif [ -z "${when[$path]:-}" ]; then
    when[$path]="$ids"
  else
    when[$path]="$(tr ',' '\n' <<< "${when[$path]},$ids" | sort -un | paste -sd,)"
  fi
}
# modules.dep lists every (transitive) dependency, innermost last, so load the list reversed.
add_module() {
  local path="$1" ids="$2" d
  local -a deps
  read -r -a deps <<< "${dep_list[$path]:-}"
  for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
    d="${deps[$i]}"
    needed_when "$d" "$ids"
    if [ -z "${seen[$d]:-}" ]; then seen[$d]=1; order+=("$d"); fi
  done
  needed_when "$path" "$ids"
  [ -n "${seen[$path]:-}" ] && return 0
  seen[$path]=1
  order+=("$path")
}
for entry in "${wanted[@]}"; do
  name="${entry%@*}"
  ids=""
  [ "$name" != "$entry" ] && ids="${entry#*@}"
  key="${name//-/_}"
  if [ -n "${dep_path[$key]:-}" ]; then
    add_module "${dep_path[$key]}" "$ids"
  elif grep -q "/${name//_/[-_]}\.ko" "$moddir/modules.builtin" 2>/dev/null; then
    :
  else
    log "note: module $name is neither built in nor in modules.dep; skipped"
  fi
done

if [ "$needs_build" -eq 1 ]; then
  log "building $initramfs (${#order[@]} modules, kernel $kver)"
  stage="$(mktemp -d "$out/.stage.XXXXXX")"
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage"/{bin,sbin,etc,proc,sys,dev,tmp,root,mnt,lib/modules}
  cp "$busybox_root/bin/busybox" "$stage/bin/busybox"
  chmod 0755 "$stage/bin/busybox"
  # Applet links: the static busybox runs on the build host too.
  for applet in $("$stage/bin/busybox" --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$stage/bin/$applet" ] || ln -s busybox "$stage/bin/$applet"
  done

  # The guest agent (virt.agent=PORT), a static binary so that it needs nothing from the initramfs.
  ensure_tool gcc gcc
  if [ ! -f /usr/include/linux/vm_sockets.h ] || [ ! -f /usr/include/stdio.h ]; then
    ensure_apt_lists
    log "installing libc6-dev and linux-libc-dev for the guest agent"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libc6-dev linux-libc-dev >/dev/null
  fi
  gcc -static -O2 -Wall -o "$stage/bin/virt-agent" "$root_dir/scripts/virt-agent.c"
  gcc -static -O2 -Wall -o "$stage/bin/virt-modload" "$root_dir/scripts/virt-modload.c"

  : > "$stage/lib/modules/load.order"
  : > "$out/modules.order.tmp"
  for path in "${order[@]}"; do
    name="$(norm "$path")"
    src="$moddir/$path"
    case "$path" in
      *.ko.xz)  xz -dc "$src" > "$stage/lib/modules/$name.ko" ;;
      *.ko.zst) zstd -q -dc "$src" > "$stage/lib/modules/$name.ko" ;;
      *.ko.gz)  gzip -dc "$src" > "$stage/lib/modules/$name.ko" ;;
      *)        cp "$src" "$stage/lib/modules/$name.ko" ;;
    esac
    line="$name"
    [ "${when[$path]}" != always ] && line="$name ${when[$path]}"
    echo "$line" >> "$stage/lib/modules/load.order"
    echo "$line" >> "$out/modules.order.tmp"
  done
  mv "$out/modules.order.tmp" "$out/modules.order"
  echo "$kver" > "$stage/etc/kernel.release"
  echo 'root:x:0:0:root:/root:/bin/sh' > "$stage/etc/passwd"
  echo 'root:x:0:' > "$stage/etc/group"

  cat > "$stage/init" <<'INIT'
#!/bin/sh
# Virt.Sdk appliance init. Kernel command line parameters it reads:
#   virt.cmd=BASE64     a shell command, base64-encoded (so it may hold spaces and quotes);
#                       without it, an interactive shell runs on the console.
#   virt.cmdline=TEXT   a shell command without spaces (use ${IFS} or virt.cmd for more).
#   virt.tty=ROWSxCOLS  the interactive shell's terminal size (stty rows/cols on the console).
#   virt.term=TERM      the interactive shell's TERM.
#   MODULE.PARAM=VALUE  passed to MODULE when it is loaded (e.g. virtio_mmio.device=4K@0xd0000000:5).
#   virt.net=dhcp       bring eth0 up and configure it by DHCP (udhcpc) before the marker;
#                       prints VIRT-NET-READY=ADDRESS or VIRT-NET-FAILED.
#   virt.agent=PORT     start the guest agent (/bin/virt-agent) on vsock port PORT (1 means the
#                       default, 1024) before the marker; it prints "virt-agent: listening ...".
#   virt.mount=TAG:DIR[:ro]  mount the virtio-fs share TAG at DIR (read-only with :ro) before the
#                       marker; prints VIRT-MOUNT-READY=TAG:DIR or VIRT-MOUNT-FAILED=TAG.
# Output markers: VIRT-INIT-READY when the modules are loaded, VIRT-EXIT-STATUS=N after the
# command; then the machine powers off.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /tmp 2>/dev/null
read -r cmdline < /proc/cmdline
# The modules in /lib/modules/load.order, in one process: the base ones always, the others when a virtio device
# that needs them is present (every module file stays in /lib/modules for insmod by hand).
virt-modload /lib/modules/load.order /lib/modules
for word in $cmdline; do
  case "$word" in
    virt.net=dhcp)
      ip link set lo up
      ip link set eth0 up
      if udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 20 -T 3 >/dev/null 2>&1; then
        echo "VIRT-NET-READY=$(ip -4 -o addr show dev eth0 | sed -n 's/.* inet \([^ ]*\).*/\1/p')"
      else
        echo VIRT-NET-FAILED
      fi
      ;;
  esac
done
for word in $cmdline; do
  case "$word" in
    virt.agent=*)
      port="${word#virt.agent=}"
      [ "$port" = 1 ] && port=1024
      virt-agent "$port" < /dev/null &
      ;;
    virt.mount=?*:/*)
      spec="${word#virt.mount=}"
      tag="${spec%%:*}"
      dir="${spec#*:}"
      opts=rw
      case "$dir" in *:ro) dir="${dir%:ro}"; opts=ro ;; esac
      mkdir -p "$dir"
      if mount -t virtiofs -o "$opts" "$tag" "$dir"; then
        echo "VIRT-MOUNT-READY=$tag:$dir"
      else
        echo "VIRT-MOUNT-FAILED=$tag"
      fi
      ;;
  esac
done
echo VIRT-INIT-READY
cmd=""
for word in $cmdline; do
  case "$word" in
    virt.cmd=*) cmd="$(echo "${word#virt.cmd=}" | base64 -d 2>/dev/null)" ;;
    virt.cmdline=*) cmd="${word#virt.cmdline=}" ;;
  esac
done
if [ -n "$cmd" ]; then
  sh -c "$cmd"
  echo "VIRT-EXIT-STATUS=$?"
else
  for word in $cmdline; do
    case "$word" in
      virt.tty=*x*) size="${word#virt.tty=}"; stty rows "${size%x*}" cols "${size#*x}" 2>/dev/null ;;
      virt.term=*) export TERM="${word#virt.term=}" ;;
    esac
  done
  setsid cttyhack sh -l
fi
sync
poweroff -f
INIT
  chmod 0755 "$stage/init"

  # busybox-static ships no udhcpc script: this one applies the lease (address, default route, DNS).
  cat > "$stage/etc/udhcpc.script" <<'DHCP'
#!/bin/sh
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
exit 0
DHCP
  chmod 0755 "$stage/etc/udhcpc.script"

  # Fixed times, owners, order and inode numbers: the same inputs give the same archive.
  find "$stage" -exec touch -h -d @0 {} +
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) \
    > "$initramfs.tmp"
  mv "$initramfs.tmp" "$initramfs"
  rm -f "$out/initramfs.cpio.gz" # the compressed archive of earlier kits
  rm -rf "$stage"
  trap - EXIT
else
  log "initramfs is up to date ($initramfs)"
fi

log "kernel:    $out/vmlinuz ($kver)"
log "initramfs: $initramfs ($(wc -c < "$initramfs") bytes)"

if [ "$boot_qemu" -eq 1 ]; then
  ensure_tool qemu-system-x86_64 qemu-system-x86
  # shellcheck disable=SC2016 # $(uname -r) is for the guest's shell
  cmd_b64="$(printf '%s' 'echo hello from $(uname -r)' | base64 -w0)"
  log "booting under qemu-system-x86_64 -M pc -accel tcg"
  start="$(date +%s.%N)"
  ready=""
  while IFS= read -r line; do
    line="${line%$'\r'}"
    case "$line" in
      *VIRT-INIT-READY*) [ -z "$ready" ] && ready="$(date +%s.%N)" ;;
    esac
    printf '%s\n' "$line" >> "$out/qemu-boot.log"
  done < <(: > "$out/qemu-boot.log"; timeout 300 qemu-system-x86_64 -M pc -accel tcg -m 512 -nographic -no-reboot \
            -kernel "$out/vmlinuz" -initrd "$initramfs" \
            -append "console=ttyS0 quiet virt.cmd=$cmd_b64" 2>&1)
  end="$(date +%s.%N)"
  if [ -z "$ready" ]; then
    log "the guest did not print VIRT-INIT-READY; see $out/qemu-boot.log"
    exit 1
  fi
  grep -q 'VIRT-EXIT-STATUS=0' "$out/qemu-boot.log" || { log "the command did not succeed; see $out/qemu-boot.log"; exit 1; }
  awk -v s="$start" -v r="$ready" -v e="$end" \
    'BEGIN { printf "qemu-tcg: marker after %.2f s, powered off after %.2f s\n", r - s, e - s }'
fi
