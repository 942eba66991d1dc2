#!/usr/bin/env bash
# Builds the Debian package of pocusd with dpkg-deb over a staging tree (no cargo-deb: it would be
# compiled on every fresh machine and wants to build the binary itself).
#   scripts/package.sh [--binary FILE] [--out DIR] [--version V] [--compression xz|gzip|none]
# Writes DIR/pocusd_<V>_amd64.deb (DIR default target/debian). The binary is target/release/pocusd
# (built with cargo when missing) unless --binary names one; with --binary no cargo runs at all: the
# manual pages and shell completions come from running FILE (pocusd manpages, pocusd completions).
# V defaults to the binary's version plus its commit's date and hash (0.1.0+git20261203184000.67c47bc7732b),
# so a later commit is a newer package (".dirty" appended for a binary built from a changed tree). The package holds the stripped binary, every models/*.onnx
# with models/README.md, the systemd units, sysusers and tmpfiles fragments, the D-Bus policy and
# interface, /etc/pocusd/pocusd.toml (a conffile: the commented defaults), the docs, a man page per
# subcommand and completions for bash, zsh and fish. Depends: dpkg-shlibdeps' libraries plus dbus,
# systemd and init-system-helpers. Environment: POCUSD_DEB_MAINTAINER ("Name <address>").
set -euo pipefail
cd "$(dirname "$0")/.."

BINARY=""
OUT=target/debian
VERSION=""
COMPRESSION=xz
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BINARY=${2:?--binary needs a file}; shift 2 ;;
    --out) OUT=${2:?--out needs a folder}; shift 2 ;;
    --version) VERSION=${2:?--version needs a version}; shift 2 ;;
    --compression) COMPRESSION=${2:?--compression needs xz, gzip or none}; shift 2 ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "package.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
case "$COMPRESSION" in xz|gzip|none) ;; *) echo "package.sh: --compression must be xz, gzip or none" >&2; exit 2 ;; esac
say() { echo "package.sh: $*"; }
die() { echo "package.sh: $*" >&2; exit 1; }

# The tools: dpkg-deb (dpkg), dpkg-shlibdeps (dpkg-dev), strip (binutils), gzip.
need=()
for p in dpkg-dev binutils gzip; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  say "installing apt packages: ${need[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if [ -z "$BINARY" ]; then
  BINARY=target/release/pocusd
  if [ ! -x "$BINARY" ]; then
    say "building the release binary (cargo build --release; 15 to 20 minutes on 2 cores)"
    cargo build --release --locked
  fi
fi
[ -x "$BINARY" ] || die "$BINARY is not an executable (build it, or name one with --binary)"
# `pocusd 0.1.0 (git 67c47bc7732b)`: the version and the commit it was built from.
IDENT=$("$BINARY" --version) || die "$BINARY --version failed: is it a pocusd binary for this machine?"
UPSTREAM=$(echo "$IDENT" | awk '{print $2}')
COMMIT=$(echo "$IDENT" | sed -n 's/.*(git \([0-9a-f]*\)\(-dirty\)\{0,1\}).*/\1/p')
DIRTY=$(echo "$IDENT" | sed -n 's/.*(git [0-9a-f]*-dirty).*/.dirty/p')
COMMIT_TIME=""
if [ -n "$COMMIT" ] && git rev-parse --git-dir >/dev/null 2>&1; then
  COMMIT_TIME=$(git show -s --format=%ct "$COMMIT" 2>/dev/null || true)
fi
if [ -z "$VERSION" ]; then
  VERSION=$UPSTREAM
  if [ -n "$COMMIT_TIME" ]; then
    VERSION="$UPSTREAM+git$(date -u -d "@$COMMIT_TIME" +%Y%m%d%H%M%S).$COMMIT$DIRTY"
  fi
fi
echo "$VERSION" | grep -E '^[0-9][A-Za-z0-9.+~]*$' >/dev/null \
  || die "version '$VERSION' is not a Debian native version (digits first, then letters, digits, . + ~)"
# Dates in the package (changelog, man pages) are the commit's, so a rebuild gives the same files.
EPOCH=${SOURCE_DATE_EPOCH:-${COMMIT_TIME:-$(date +%s)}}
MAINTAINER=${POCUSD_DEB_MAINTAINER:-"pocusd developers <pocusd@example.org>"}

WORK=$(mktemp -d /tmp/pocusd-package.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
S=$WORK/pocusd
mkdir -p "$S/DEBIAN"

put() { # put MODE SOURCE DEST
  install -D -m "$1" "$2" "$S$3"
}
# The binary without debug information (dh_strip's options).
mkdir -p "$S/usr/bin"
strip --strip-unneeded --remove-section=.comment --remove-section=.note -o "$S/usr/bin/pocusd" "$BINARY"
chmod 0755 "$S/usr/bin/pocusd"

# Every shipped model (a list by hand once left fascicle.onnx out, which the demo runs).
n_models=0
for m in models/*.onnx; do
  put 0644 "$m" "/usr/share/pocusd/models/${m#models/}"
  n_models=$((n_models + 1))
  # The unfolded network beside a model, when shipped: the nightly loop fine-tunes from it.
  if [ -f "${m%.onnx}.bpk" ]; then put 0644 "${m%.onnx}.bpk" "/usr/share/pocusd/models/$(basename "${m%.onnx}").bpk"; fi
done
[ "$n_models" -gt 0 ] || die "no models/*.onnx to package"
put 0644 models/README.md /usr/share/pocusd/models/README.md
put 0644 systemd/pocusd.service /usr/lib/systemd/system/pocusd.service
put 0644 systemd/pocusd-train.service /usr/lib/systemd/system/pocusd-train.service
put 0644 systemd/pocusd-train.timer /usr/lib/systemd/system/pocusd-train.timer
put 0644 systemd/org.pocusd.Daemon1.conf /usr/share/dbus-1/system.d/org.pocusd.Daemon1.conf
put 0644 systemd/org.pocusd.Daemon1.xml /usr/share/dbus-1/interfaces/org.pocusd.Daemon1.xml
put 0644 systemd/pocusd.sysusers /usr/lib/sysusers.d/pocusd.conf
put 0644 systemd/pocusd.tmpfiles /usr/lib/tmpfiles.d/pocusd.conf

# The configuration: every key commented out with its default, a conffile.
mkdir -p "$S/etc/pocusd"
{
  echo "# pocusd system configuration: uncomment and change what you need."
  echo "# Every key, with its default and allowed values (pocusd config check prints the effective one):"
  echo "#"
  sed -e 's/^\([^#]\)/# \1/' config/default.toml
} >"$S/etc/pocusd/pocusd.toml"
chmod 0644 "$S/etc/pocusd/pocusd.toml"
echo /etc/pocusd/pocusd.toml >"$S/DEBIAN/conffiles"

# Documentation; files over 4 KB gzipped as Debian policy asks.
DOC=/usr/share/doc/pocusd
put 0644 README.md "$DOC/README.md"
put 0644 systemd/README.md "$DOC/README.systemd.md"
for d in docs/*.md; do put 0644 "$d" "$DOC/${d#docs/}"; done
find "$S$DOC" -type f -size +4k -exec gzip -9n {} +
cat >"$S$DOC/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pocusd
Upstream-Contact: $MAINTAINER

Files: *
Copyright: 2026 the pocusd developers
License: Apache-2.0

Files: models/aponeurosis.onnx models/fascicle.onnx
Copyright: 2026 the pocusd developers, trained on images and masks of the DL_Track repository
 (njcronin/DL_Track, commit 27bb364) by Cronin N. J., Finni T., Seynnes O., "Fully automated
 analysis of muscle architecture from B-mode ultrasound images with deep learning",
 arXiv:2009.04790 (2020)
License: Apache-2.0

Files: models/fetal-head.onnx
Copyright: 2026 the pocusd developers, trained on the HC18 Grand Challenge training set (Radboud
 University Medical Center, DOI 10.5281/zenodo.1322001): van den Heuvel T. L. A., de Bruijn D.,
 de Korte C. L., van Ginneken B., "Automated measurement of fetal head circumference using 2D
 ultrasound images", PLoS ONE 13(8): e0200412 (2018)
License: CC-BY-4.0

License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.

License: CC-BY-4.0
 Creative Commons Attribution 4.0 International; the full text is at
 https://creativecommons.org/licenses/by/4.0/legalcode. The model is a derived work of the
 HC18 data, credited above and in /usr/share/pocusd/models/README.md as the licence asks.
EOF
chmod 0644 "$S$DOC/copyright"
{
  echo "pocusd ($VERSION) unstable; urgency=medium"
  echo
  echo "  * Built from git commit ${COMMIT:-unknown} by scripts/package.sh."
  echo
  echo " -- $MAINTAINER  $(LC_ALL=C date -u -R -d "@$EPOCH")"
} | gzip -9n >"$S$DOC/changelog.gz"
chmod 0644 "$S$DOC/changelog.gz"

# Manual pages and completions, made by the packaged binary from its own clap definitions.
"$BINARY" manpages "$WORK/man" 2>/dev/null || die "$BINARY manpages failed"
mkdir -p "$S/usr/share/man/man1"
for p in "$WORK"/man/*.1; do gzip -9n -c "$p" >"$S/usr/share/man/man1/$(basename "$p").gz"; done
mkdir -p "$S/usr/share/bash-completion/completions" "$S/usr/share/zsh/vendor-completions" \
  "$S/usr/share/fish/vendor_completions.d"
"$BINARY" completions bash >"$S/usr/share/bash-completion/completions/pocusd"
"$BINARY" completions zsh >"$S/usr/share/zsh/vendor-completions/_pocusd"
"$BINARY" completions fish >"$S/usr/share/fish/vendor_completions.d/pocusd.fish"
find "$S/usr/share/man" "$S/usr/share/bash-completion" "$S/usr/share/zsh" "$S/usr/share/fish" \
  -type f -exec chmod 0644 {} +

# Maintainer scripts (deb-systemd-helper conventions).
cp scripts/lib/deb/postinst scripts/lib/deb/prerm scripts/lib/deb/postrm "$S/DEBIAN/"
chmod 0755 "$S/DEBIAN/postinst" "$S/DEBIAN/prerm" "$S/DEBIAN/postrm"

# Depends: the libraries the binary links (dpkg-shlibdeps wants a debian/control beside it), and
# what no library reveals: the system bus, systemd (sysusers, tmpfiles, the units) and
# deb-systemd-helper for the maintainer scripts.
mkdir -p "$WORK/src/debian"
printf 'Source: pocusd\n\nPackage: pocusd\nArchitecture: amd64\n' >"$WORK/src/debian/control"
SHLIBS=$(cd "$WORK/src" && dpkg-shlibdeps -O -e"$S/usr/bin/pocusd" 2>"$WORK/shlibdeps.err") \
  || { cat "$WORK/shlibdeps.err" >&2; die "dpkg-shlibdeps failed"; }
SHLIBS=${SHLIBS#shlibs:Depends=}
[ -n "$SHLIBS" ] || die "dpkg-shlibdeps found no libraries"
DEPENDS="$SHLIBS, dbus, systemd, init-system-helpers (>= 1.52)"

find "$S" -type d -exec chmod 0755 {} +
INSTALLED_KB=$(du -sk --exclude=DEBIAN "$S" | cut -f1)
cat >"$S/DEBIAN/control" <<EOF
Package: pocusd
Version: $VERSION
Architecture: amd64
Maintainer: $MAINTAINER
Installed-Size: $INSTALLED_KB
Depends: $DEPENDS
Section: science
Priority: optional
Description: point-of-care ultrasound daemon with live segmentation and measurements
 pocusd grabs every frame of an ultrasound scanner's video output (a V4L2
 capture card or anything FFmpeg opens), enhances it with CLAHE, segments it
 with U-Nets (ONNX, run on the CPU) and turns the masks into measurements in
 millimetres with the scale read from the scanner's own ruler: muscle
 thickness, fascicle length, pennation angle, fetal head circumference.
 .
 It publishes them live on D-Bus, as an overlay stream with a web viewer,
 over OpenIGTLink and as DICOM to a PACS, and retrains its models on the
 cart at night. The package enables and starts pocusd.service and the
 nightly pocusd-train.timer.
 .
 For research and engineering only, not for diagnosis.
EOF
(cd "$S" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
  >"$S/DEBIAN/md5sums"
chmod 0644 "$S/DEBIAN/control" "$S/DEBIAN/conffiles" "$S/DEBIAN/md5sums"

mkdir -p "$OUT"
DEB="$OUT/pocusd_${VERSION}_amd64.deb"
find "$S" -exec touch -h -d "@$EPOCH" {} +
dpkg-deb --root-owner-group -Z"$COMPRESSION" --build "$S" "$DEB" >/dev/null
say "wrote $DEB ($(du -k "$DEB" | cut -f1) KiB; $n_models models; Depends: $DEPENDS)"
