#!/usr/bin/env bash
# Walk through every comfyui-grpc RPC with grpcurl, using server reflection
# (no .proto files needed).
#
#   clients/grpcurl/try.sh [HOST:PORT]        default: $COMFYUI_GRPC_TARGET or localhost:50051
#
# Connection settings come from the same variables as the SDK and the CLI:
#   COMFYUI_GRPC_TLS=1             TLS with the system's root certificates
#   COMFYUI_GRPC_CA_CERT=ca.pem    TLS trusting this CA (implies TLS)
#   COMFYUI_GRPC_CLIENT_CERT=...   mutual TLS: client certificate ...
#   COMFYUI_GRPC_CLIENT_KEY=...    ... and its key
#   COMFYUI_GRPC_SERVER_NAME=...   name in the server certificate, if not the target's host
#   COMFYUI_GRPC_TOKEN=...         sent as "authorization: Bearer <token>" (never on the command line)
#   TRY_SIZE=512 TRY_STEPS=10      the test image's size and sampling steps
#   TRY_OUT=.                      where the downloaded image is written
set -euo pipefail

TARGET="${1:-${COMFYUI_GRPC_TARGET:-localhost:50051}}"
SERVICE=comfyui_grpc.v1.GenerationService
SIZE="${TRY_SIZE:-512}"
STEPS="${TRY_STEPS:-10}"
OUT="${TRY_OUT:-.}"
GRPCURL="${GRPCURL:-grpcurl}"

flags=(-max-time 120)
if [[ -n "${COMFYUI_GRPC_CA_CERT:-}" || -n "${COMFYUI_GRPC_CLIENT_CERT:-}" || "${COMFYUI_GRPC_TLS:-}" == 1 ]]; then
  [[ -n "${COMFYUI_GRPC_CA_CERT:-}" ]] && flags+=(-cacert "$COMFYUI_GRPC_CA_CERT")
  [[ -n "${COMFYUI_GRPC_CLIENT_CERT:-}" ]] && flags+=(-cert "$COMFYUI_GRPC_CLIENT_CERT" -key "$COMFYUI_GRPC_CLIENT_KEY")
  [[ -n "${COMFYUI_GRPC_SERVER_NAME:-}" ]] && flags+=(-servername "$COMFYUI_GRPC_SERVER_NAME")
else
  flags+=(-plaintext)
fi
if [[ -n "${COMFYUI_GRPC_TOKEN:-}" ]]; then
  # -expand-headers fills in the variable, so the token never shows in `ps`.
  flags+=(-expand-headers -H 'authorization: Bearer ${COMFYUI_GRPC_TOKEN}')
fi

step() { printf '\n### %s\n' "$*" >&2; }
call() {
  printf '+ grpcurl %s %s\n' "${flags[*]}" "$*" >&2
  "$GRPCURL" "${flags[@]}" "$@"
}
# grpcurl prints JSON with lowerCamelCase names; pull one string field out.
field() { sed -n "s/.*\"$1\": \"\\([^\"]*\\)\".*/\\1/p" | head -n 1; }

step "1. Services and methods, through reflection"
call "$TARGET" list
call "$TARGET" describe "$SERVICE"

step "2. Health"
call -d '{"service": "comfyui_grpc.v1.GenerationService"}' "$TARGET" grpc.health.v1.Health/Check

step "3. Generate: submit a text-to-image job"
request_id="try-$(date +%s)-$$"
generated=$(call -d "{\"text_to_image\": {\"prompt\": \"a lighthouse at dusk\", \"width\": $SIZE, \"height\": $SIZE, \"steps\": $STEPS}, \"request_id\": \"$request_id\", \"labels\": {\"source\": \"try.sh\"}}" \
  "$TARGET" "$SERVICE/Generate")
echo "$generated"
job_id=$(echo "$generated" | field job_id jobId)
[[ -n "$job_id" ]] || { echo "no jobId in the Generate response" >&2; exit 1; }

step "3b. Generate again with the same request_id: the same job, deduplicated"
call -d "{\"text_to_image\": {\"prompt\": \"a lighthouse at dusk\", \"width\": $SIZE, \"height\": $SIZE, \"steps\": $STEPS}, \"request_id\": \"$request_id\", \"labels\": {\"source\": \"try.sh\"}}" \
  "$TARGET" "$SERVICE/Generate"

step "4. StreamProgress: a snapshot, every event from the start, until the end"
call -d "{\"job_id\": \"$job_id\", \"after_sequence\": 0}" "$TARGET" "$SERVICE/StreamProgress"

step "5. GetResult: the finished job, with presigned URLs where the store has them"
result=$(call -d "{\"job_id\": \"$job_id\", \"wait_timeout\": \"60s\", \"presign_ttl\": \"3600s\"}" "$TARGET" "$SERVICE/GetResult")
echo "$result"
key=$(echo "$result" | field key key)
filename=$(echo "$result" | field filename filename)
sha256=$(echo "$result" | field sha256 sha256)
[[ -n "$key" ]] || { echo "the job has no artifact" >&2; exit 1; }

step "6. ReadArtifact: stream the image's bytes and save them"
mkdir -p "$OUT"
saved="$OUT/$filename"
call -d "{\"job_id\": \"$job_id\", \"artifact\": \"$key\"}" "$TARGET" "$SERVICE/ReadArtifact" \
  | sed -n 's/.*"chunk": "\([^"]*\)".*/\1/p' \
  | while read -r chunk; do printf '%s' "$chunk" | base64 -d; done >"$saved"
actual=$(sha256sum "$saved" | cut -d' ' -f1)
if [[ "$actual" != "$sha256" ]]; then
  echo "sha256 mismatch: got $actual, the store recorded $sha256" >&2
  exit 1
fi
echo "saved $saved (sha256 verified)"

step "7. ListJobs: running, waiting, then recently finished"
call -d '{"page_size": 5}' "$TARGET" "$SERVICE/ListJobs"

step "8. CancelJob: start a long job and cancel it"
long=$(call -d "{\"text_to_image\": {\"prompt\": \"a long one\", \"width\": 64, \"height\": 64, \"steps\": 200}}" \
  "$TARGET" "$SERVICE/Generate")
long_id=$(echo "$long" | field job_id jobId)
call -d "{\"job_id\": \"$long_id\"}" "$TARGET" "$SERVICE/CancelJob"
call -d "{\"job_id\": \"$long_id\", \"wait_timeout\": \"30s\"}" "$TARGET" "$SERVICE/GetResult" | grep '"state"'

step "9. UploadInput: a client stream, metadata first, then the bytes"
{
  printf '{"metadata": {"filename": "try-input.png", "content_type": "image/png"}}\n'
  printf '{"chunk": "%s"}\n' "$(base64 -w0 "$saved")"
} | call -d @ "$TARGET" "$SERVICE/UploadInput"

step "10. Errors carry a status, a reason and field violations"
if call -format-error -d '{"text_to_image": {"prompt": "x", "width": 7}}' "$TARGET" "$SERVICE/Generate"; then
  echo "expected INVALID_ARGUMENT" >&2
  exit 1
fi

printf '\nall RPCs answered; job %s saved to %s\n' "$job_id" "$saved"
