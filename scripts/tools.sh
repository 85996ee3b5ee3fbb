#!/usr/bin/env bash
# Installs the pinned code-generation and lint tools into ./.bin.
# Versions are exact so that `buf generate` output and lint results are
# reproducible; bump them here, in one place.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOBIN="$PWD/.bin"
mkdir -p "$GOBIN"

tools=(
  github.com/bufbuild/buf/cmd/buf@v1.75.0
  google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
  google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
  github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway@v2.33.0
  github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2@v2.33.0
  honnef.co/go/tools/cmd/staticcheck@v0.8.2
  github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4
  github.com/go-task/task/v3/cmd/task@v3.54.0
)

stamp="$GOBIN/.versions"
want="$(printf '%s\n' "${tools[@]}")"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
for t in "${tools[@]}"; do
  echo "installing $t" >&2
  go install "$t"
done
printf '%s\n' "$want" >"$stamp"
