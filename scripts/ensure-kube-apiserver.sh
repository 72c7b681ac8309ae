#!/usr/bin/env bash
# Provides a real kube-apiserver (v1.20.2) and etcd for egressgw's tests and lab, from Debian's archive only.
#
# Debian 12 ships kubectl but no kube-apiserver binary; its `kubernetes` *source* package is the whole upstream
# tree with vendor/, which Debian's Go 1.19 builds. etcd comes from the `etcd-server` package.
# The binary is cached in $KUBE_TEST_BIN (default ~/.cache/kube-test-bin): about 5 minutes the first time,
# instant afterwards. Prints the binary's path on stdout; everything else goes to stderr.
set -euo pipefail
CACHE=${KUBE_TEST_BIN:-$HOME/.cache/kube-test-bin}
BIN=$CACHE/kube-apiserver
# bump when the build recipe changes, so a cached binary from an older recipe is rebuilt
RECIPE=2-empty-string-fix
STAMP=$CACHE/kube-apiserver.recipe
cached() { [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$RECIPE" ]; }
if cached && command -v etcd >/dev/null 2>&1; then echo "$BIN"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  # same mirror and suites as the binary entries
  sed -E 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
    > /etc/apt/sources.list.d/egressgw-deb-src.sources
fi
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends golang-go dpkg-dev rsync etcd-server openssl \
  golang-github-modern-go-reflect2-dev >&2
cached && { echo "$BIN"; exit 0; }
WORK=$(mktemp -d /tmp/egressgw-kube-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
apt-get source -qq kubernetes >&2
cd kubernetes-*/
# The vendored reflect2 1.0.1 crashes when compiled with Go >= 1.18; Debian packages the fixed 1.0.2.
R=/usr/share/gocode/src/github.com/modern-go/reflect2
rm -rf vendor/github.com/modern-go/reflect2
mkdir -p vendor/github.com/modern-go/reflect2
cp "$R"/*.go "$R"/*.s vendor/github.com/modern-go/reflect2/
export GOPATH=$PWD/.gopath CGO_ENABLED=0 HOME=$WORK/home GOFLAGS=-mod=vendor
mkdir -p "$GOPATH/src/k8s.io" "$HOME"
ln -s "$PWD" "$GOPATH/src/k8s.io/kubernetes"
VER=$(dpkg-parsechangelog -S Version | sed -E 's/.*really([0-9.]+).*/\1/')
export KUBE_GIT_VERSION="v$VER" KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR="$(echo "$VER" | cut -d. -f2)" KUBE_GIT_TREE_STATE=clean
# 1.20's vendored OpenAPI validator, built with Go >= 1.16, takes an empty string for null, so a custom resource
# with a "" field (a condition message, an empty label value) is refused with 422 (kubernetes#99804, fixed
# upstream in kube-openapi#230). Apply the same one-line fix, and fail if it no longer applies.
patched=0
for f in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go vendor/github.com/go-openapi/validate/type.go; do
  [ -f "$f" ] || continue
  sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$f"
  if ! grep -q 'reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data))' "$f" && grep -q 'if data == nil {' "$f"; then patched=1; fi
done
[ "$patched" = 1 ] || { echo "the empty-string fix did not apply to the vendored validator" >&2; exit 1; }
# the upstream make target runs the generators (openapi) first; a bare `go build` does not
make WHAT=cmd/kube-apiserver >&2
mkdir -p "$CACHE"
install -m 0755 _output/bin/kube-apiserver "$BIN"
echo "$RECIPE" > "$STAMP"
"$BIN" --version >&2
echo "$BIN"
