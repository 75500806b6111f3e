#!/usr/bin/env bash
# Builds spikec's ONNX Runtime custom-op library (runtime/ortops/spikec_ortops.cc) into
# build/ortops/libspikec_ortops.so; `make venv` runs it. Usage: runtime/ortops/build.sh [OUT.so]
#
# The onnxruntime wheels on PyPI ship no C/C++ headers, and Debian has no onnxruntime
# package. The npm registry's com.github.asus4.onnxruntime (onnxruntime packaged for Unity,
# MIT, Microsoft's headers unchanged) ships them: onnxruntime_c_api.h at ORT_API_VERSION 29,
# which every onnxruntime from 1.29 on (spikec pins 1.32) accepts. The tarball (about
# 150 MB) is fetched once, checked against npm's published sha512, and only the headers
# are kept. The library links against nothing of onnxruntime's: onnxruntime hands it its
# function table when a session registers it.
set -euo pipefail
cd "$(dirname "$0")/../.."

PACKAGE=com.github.asus4.onnxruntime
VERSION=0.4.9
SHA512=064cf176e499f4891e0cfe90f25cf64c553689eee1492bd2ed921fccca28131a2ad02373267bae19a509ec8b288c182a3b8a2e0f58d76a1f0e63225b08ddbd16
URL="https://registry.npmjs.org/$PACKAGE/-/$PACKAGE-$VERSION.tgz"
HEADERS_IN_TARBALL='package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers'

BUILD=build/ortops
OUT="${1:-$BUILD/libspikec_ortops.so}"
INCLUDE="$BUILD/include-$VERSION"
CXX="${CXX:-g++}"

if [ ! -f "$INCLUDE/onnxruntime_cxx_api.h" ]; then
  mkdir -p "$BUILD"
  tarball="$BUILD/$PACKAGE-$VERSION.tgz"
  echo "ortops: fetching onnxruntime's C/C++ headers ($PACKAGE $VERSION from the npm registry)" >&2
  curl --fail --silent --show-error --location --retry 3 -o "$tarball.part" "$URL"
  echo "$SHA512  $tarball.part" | sha512sum --check --quiet
  rm -rf "$INCLUDE.part" && mkdir -p "$INCLUDE.part"
  tar -xzf "$tarball.part" -C "$INCLUDE.part" --strip-components=7 "$HEADERS_IN_TARBALL"
  tar -xzf "$tarball.part" -C "$INCLUDE.part" --strip-components=1 package/LICENSE
  rm -f "$tarball.part"
  mv "$INCLUDE.part" "$INCLUDE"
fi

mkdir -p "$(dirname "$OUT")"
# -ffp-contract=off: the contract's roundings stay separate (no fused multiply-add);
# AVX2 is selected per function at run time (__builtin_cpu_supports), so the library loads
# on any x86-64 and falls back to plain loops.
"$CXX" -std=c++17 -O2 -fPIC -shared -ffp-contract=off -fno-fast-math -fvisibility=hidden \
  -Wall -Wextra -Werror -I"$INCLUDE" runtime/ortops/spikec_ortops.cc -o "$OUT.part"
mv "$OUT.part" "$OUT"
echo "ortops: built $OUT" >&2
