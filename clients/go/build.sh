#!/usr/bin/env bash
# Build the Go example with Debian's Go packages only: no module downloads.
#
#   apt-get install golang-go golang-google-grpc-dev golang-google-protobuf-dev \
#       golang-github-golang-protobuf-1-5-dev \
#       golang-google-genproto-dev protobuf-compiler protoc-gen-go protoc-gen-go-grpc
#   clients/go/build.sh [OUTPUT]        # default clients/go/bin/generate
#
# The stubs are generated from protos/ on every build (never committed, so
# they cannot drift) into a throwaway GOPATH next to Debian's /usr/share/gocode.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
output=${1:-$here/bin/generate}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pkg=comfyuigrpc/v1
protos=(comfyui_grpc/v1/job.proto comfyui_grpc/v1/generation_service.proto)
mapping=()
for proto in "${protos[@]}"; do mapping+=("M$proto=$pkg"); done
go_opt=$(IFS=,; echo "${mapping[*]}")

mkdir -p "$work/src/comfyuigrpc/generate"
protoc -I "$root/protos" \
  --go_out="$work/src" --go_opt="$go_opt" \
  --go-grpc_out="$work/src" --go-grpc_opt="$go_opt" \
  "${protos[@]}"
cp "$here"/generate/*.go "$work/src/comfyuigrpc/generate/"
mkdir -p "$(dirname "$output")"
(cd "$work/src/comfyuigrpc/generate" &&
  GO111MODULE=off GOFLAGS= GOPATH="$work:/usr/share/gocode" go build -o "$output" .)
echo "built $output" >&2
