#!/usr/bin/env bash
# Builds the container image and runs it for real with podman: `make deploy-test` (CI runs it).
#
# No container registry is reachable here, so the base image is made from Debian's packages
# (debootstrap --variant=minbase: python3, python3-venv, python3-pip, ca-certificates, the host's
# extra CA certificates and pip settings, so pip reaches the same package index from inside a
# build), cached as a tarball in ~/.cache/chatgpt-proxy/ and imported with `podman import`. The
# image is then built from the published Dockerfile with --build-arg BASE=localhost/..., as are
# stand-ins for the official PostgreSQL and Redis images (tests/deploy/images/), and
# tests/deploy/ drives them: the container with the openai SDK, compose.yaml's `scale` profile
# with podman-compose.
#
# Where podman cannot run (not root and not installed, no runtime, ...) it skips, saying why;
# with CHATGPT_PROXY_REQUIRE_SERVICES=1 (as in CI) that skip is a failure instead.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

skip() {
  if [ "${CHATGPT_PROXY_REQUIRE_SERVICES:-}" = 1 ]; then
    echo "deploy-test: FAILED: $*" >&2
    exit 1
  fi
  echo "deploy-test: SKIPPED: $*" >&2
  exit 0
}

as_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  as_root || skip "missing $* and not root: install it (apt-get install $*)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
    skip "apt-get install $* failed"
}

# ---------------------------------------------------------------- podman itself
missing=()
for tool in podman runc iptables debootstrap; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ ${#missing[@]} = 0 ] || apt_install "${missing[@]}"

# crun refuses this machine's cgroup layout; containers may not have higher limits than the host.
conf=/etc/containers/containers.conf
marker="# Written by chatgpt-proxy's deploy/test.sh"
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
[ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
if [ ! -e "$conf" ] || head -n 1 "$conf" | grep -qF "$marker"; then
  as_root || skip "cannot write $conf (not root)"
  mkdir -p /etc/containers
  cat >"$conf" <<CONF
$marker: runc, since crun refuses this machine's
# cgroup layout, and container limits no higher than the host's.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
CONF
elif ! grep -q '^runtime *= *"runc"' "$conf"; then
  echo "deploy-test: $conf is not ours and does not set runtime = \"runc\"; using it as it is" >&2
fi
podman info >/dev/null 2>&1 || skip "podman cannot run here: $(podman info 2>&1 | tail -n 1)"

# ---------------------------------------------------------------- the base image
cache=${CHATGPT_PROXY_CACHE:-$HOME/.cache/chatgpt-proxy}
mkdir -p "$cache"
. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
# The host's own Debian mirror (one-line or deb822 sources), not a name written here.
mirror=$( (cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true) |
  sed -E 's/\[[^]]*\]//' | awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}')
[ -n "$mirror" ] || mirror=$( (cat /etc/apt/sources.list.d/*.sources 2>/dev/null || true) |
  awk '$1 == "URIs:" && $2 !~ /security/ {print $2; exit}')
[ -n "$mirror" ] || skip "no Debian mirror found in /etc/apt/sources.list*"
packages=python3,python3-venv,python3-pip,ca-certificates
# pip inside the image uses the host's index and certificate settings (never its local wheel dirs).
pip_conf=$(python3 -m pip config list 2>/dev/null | grep -E "^(global|install)\.(index-url|trusted-host)=" || true)
extra_cas=$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true)
key=$(printf '%s\n' 1 "$suite" "$mirror" "$packages" "$pip_conf" "$extra_cas" "${PIP_INDEX_URL:-}" |
  sha256sum | cut -c1-12)
base=localhost/chatgpt-proxy-base:$key
tarball=$cache/base-$suite-$key.tar
if ! podman image exists "$base"; then
  if [ ! -s "$tarball" ]; then
    as_root || skip "debootstrap needs root"
    root=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    echo "deploy-test: debootstrap $suite from the host's mirror (a few minutes, once)" >&2
    debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
      skip "debootstrap failed (see $cache/debootstrap.log)"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$root" update-ca-certificates >/dev/null 2>&1
    {
      echo "[global]"
      echo "cert = /etc/ssl/certs/ca-certificates.crt"
      index=${PIP_INDEX_URL:-$(sed -n 's/^global\.index-url=//p' <<<"$pip_conf" | tr -d "'")}
      [ -z "$index" ] || echo "index-url = $index"
    } >"$root/etc/pip.conf"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
      "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
    tar -C "$root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$root"
    trap - EXIT
  fi
  podman import --quiet "$tarball" "$base" >/dev/null
fi

# ---------------------------------------------------------------- the images under test
build() { # TAG CONTEXT [FILE]
  local log=$cache/build-${1//[:\/]/_}.log
  podman build --format docker --build-arg "BASE=$base" -t "$1" ${3:+-f "$3"} "$2" >"$log" 2>&1 ||
    { tail -n 30 "$log" >&2; echo "deploy-test: building $1 failed (see $log)" >&2; exit 1; }
}
image=localhost/chatgpt-proxy:test
build "$image" .
build localhost/chatgpt-proxy-test-postgres:$key tests/deploy/images tests/deploy/images/postgres.Containerfile
build localhost/chatgpt-proxy-test-redis:$key tests/deploy/images tests/deploy/images/redis.Containerfile
# (no `podman image prune`: the dangling layers are the build cache of the next run)
size=$(podman image inspect "$image" --format '{{.Size}}')
echo "deploy-test: image $image: $((size / 1000000)) MB (base $((
  $(podman image inspect "$base" --format '{{.Size}}') / 1000000)) MB), built in $((SECONDS - started)) s" >&2

# ---------------------------------------------------------------- the checks
# deploy/nginx.conf is valid nginx (with a throwaway certificate in place of the example's).
nginx_dir=$(mktemp -d)
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=llm.example.com \
  -keyout "$nginx_dir/key.pem" -out "$nginx_dir/cert.pem" 2>/dev/null
sed -E "s#ssl_certificate +[^;]+#ssl_certificate $nginx_dir/cert.pem#;
  s#ssl_certificate_key +[^;]+#ssl_certificate_key $nginx_dir/key.pem#" deploy/nginx.conf >"$nginx_dir/site.conf"
printf 'pid %s/nginx.pid;\nerror_log stderr;\nevents {}\nhttp {\ninclude %s/site.conf;\n}\n' \
  "$nginx_dir" "$nginx_dir" >"$nginx_dir/nginx.conf"
PATH=$PATH:/usr/sbin nginx -t -q -c "$nginx_dir/nginx.conf" ||
  { echo "deploy-test: deploy/nginx.conf is not valid nginx" >&2; exit 1; }
rm -rf "$nginx_dir"

export CHATGPT_PROXY_DEPLOY_IMAGE=$image
export CHATGPT_PROXY_DEPLOY_POSTGRES_IMAGE=localhost/chatgpt-proxy-test-postgres:$key
export CHATGPT_PROXY_DEPLOY_REDIS_IMAGE=localhost/chatgpt-proxy-test-redis:$key
"${PYTEST:-.venv/bin/pytest}" -q -p no:cacheprovider tests/deploy
echo "deploy-test: done in $((SECONDS - started)) s" >&2
