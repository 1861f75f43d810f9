{{/*
Names, labels and the small pieces of logic the templates share.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "comfyui-grpc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource name prefix: fullnameOverride, else <release>-<name> (just <release> when it
already contains the name). Trimmed to 63 characters, the limit of a DNS label.
*/}}
{{- define "comfyui-grpc.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A component's resource name: <fullname>-<suffix>, with the prefix shortened so the whole
name stays a valid 63-character DNS label. Call with (dict "ctx" $ "suffix" "comfyui").
*/}}
{{- define "comfyui-grpc.componentName" -}}
{{- $prefix := include "comfyui-grpc.fullname" .ctx | trunc (int (sub 62 (len .suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix .suffix }}
{{- end }}

{{- define "comfyui-grpc.comfyuiName" -}}
{{- include "comfyui-grpc.componentName" (dict "ctx" . "suffix" "comfyui") }}
{{- end }}

{{- define "comfyui-grpc.comfyuiModelsName" -}}
{{- include "comfyui-grpc.componentName" (dict "ctx" . "suffix" "comfyui-models") }}
{{- end }}

{{- define "comfyui-grpc.rustfsName" -}}
{{- include "comfyui-grpc.componentName" (dict "ctx" . "suffix" "rustfs") }}
{{- end }}

{{- define "comfyui-grpc.postgresqlName" -}}
{{- include "comfyui-grpc.componentName" (dict "ctx" . "suffix" "postgresql") }}
{{- end }}

{{- define "comfyui-grpc.stateName" -}}
{{- include "comfyui-grpc.componentName" (dict "ctx" . "suffix" "state") }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "comfyui-grpc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels every resource carries (Kubernetes recommended labels). Call with
(dict "ctx" $ "component" "gateway").
*/}}
{{- define "comfyui-grpc.labels" -}}
helm.sh/chart: {{ include "comfyui-grpc.chart" .ctx }}
{{ include "comfyui-grpc.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: comfyui-grpc
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The labels a component's selectors match. Call like comfyui-grpc.labels. */}}
{{- define "comfyui-grpc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "comfyui-grpc.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The gateway's ServiceAccount name. */}}
{{- define "comfyui-grpc.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "comfyui-grpc.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}. Call with (dict "image" .Values.x.image
"default" "<tag when empty>").
*/}}
{{- define "comfyui-grpc.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .default .image.tag | toString) }}
{{- end }}
{{- end }}

{{/* The Secret holding S3 credentials and auth tokens: existingSecret or the chart's own. */}}
{{- define "comfyui-grpc.secretName" -}}
{{- default (include "comfyui-grpc.fullname" .) .Values.existingSecret }}
{{- end }}

{{/*
"true" when the gateway keeps its job records in PostgreSQL: an external one
(state.postgres.url or state.postgres.existingSecret) or the bundled one (postgresql.enabled).
It then keeps nothing on disk, and several replicas can share the database.
*/}}
{{- define "comfyui-grpc.postgres" -}}
{{- if or .Values.state.postgres.url .Values.state.postgres.existingSecret .Values.postgresql.enabled -}}
true
{{- end }}
{{- end }}

{{/*
The Secret holding the PostgreSQL URL: state.postgres.existingSecret or the chart's own for an
external database; postgresql.auth.existingSecret or the bundled database's own Secret.
*/}}
{{- define "comfyui-grpc.stateUrlSecretName" -}}
{{- if .Values.postgresql.enabled }}
{{- include "comfyui-grpc.postgresqlSecretName" . }}
{{- else }}
{{- default (include "comfyui-grpc.fullname" .) .Values.state.postgres.existingSecret }}
{{- end }}
{{- end }}

{{/* The Secret key holding the PostgreSQL URL (the chart's own Secrets always use state-url). */}}
{{- define "comfyui-grpc.stateUrlSecretKey" -}}
{{- if and .Values.postgresql.enabled .Values.postgresql.auth.existingSecret }}
{{- .Values.postgresql.auth.existingSecretUrlKey }}
{{- else if and (not .Values.postgresql.enabled) .Values.state.postgres.existingSecret }}
{{- .Values.state.postgres.existingSecretKey }}
{{- else -}}
state-url
{{- end }}
{{- end }}

{{/*
The Secret holding the bundled PostgreSQL's password and the gateway's URL to it:
postgresql.auth.existingSecret or the chart's own <fullname>-postgresql.
*/}}
{{- define "comfyui-grpc.postgresqlSecretName" -}}
{{- default (include "comfyui-grpc.postgresqlName" .) .Values.postgresql.auth.existingSecret }}
{{- end }}

{{/* The Secret key holding the bundled PostgreSQL's password. */}}
{{- define "comfyui-grpc.postgresqlPasswordKey" -}}
{{- if .Values.postgresql.auth.existingSecret }}
{{- .Values.postgresql.auth.existingSecretPasswordKey }}
{{- else -}}
password
{{- end }}
{{- end }}

{{/* Where the PostgreSQL URL is mounted in the gateway container (COMFYUI_GRPC_STATE_URL_FILE). */}}
{{- define "comfyui-grpc.stateUrlDir" -}}
/etc/comfyui-grpc/state
{{- end }}

{{/* "true" when the gateway (and RustFS) read static S3 credentials from the Secret. */}}
{{- define "comfyui-grpc.s3StaticCredentials" -}}
{{- if or .Values.rustfs.enabled .Values.existingSecret .Values.s3.accessKeyId .Values.s3.secretAccessKey -}}
true
{{- end }}
{{- end }}

{{/* The in-cluster DNS name of a Service of this release. Call with (dict "ctx" $ "name" "x"). */}}
{{- define "comfyui-grpc.serviceHost" -}}
{{- printf "%s.%s.svc.%s" .name .ctx.Release.Namespace .ctx.Values.clusterDomain }}
{{- end }}

{{/* COMFYUI_GRPC_COMFYUI_URLS: the bundled headless Service or externalComfyui.urls. */}}
{{- define "comfyui-grpc.comfyuiUrls" -}}
{{- if .Values.comfyui.enabled }}
{{- printf "http://%s:%d" (include "comfyui-grpc.serviceHost" (dict "ctx" . "name" (include "comfyui-grpc.comfyuiName" .))) (int .Values.comfyui.port) }}
{{- else }}
{{- join "," .Values.externalComfyui.urls }}
{{- end }}
{{- end }}

{{/* COMFYUI_GRPC_S3_ENDPOINT_URL: the bundled RustFS Service or s3.endpointUrl. */}}
{{- define "comfyui-grpc.s3Endpoint" -}}
{{- if .Values.rustfs.enabled }}
{{- printf "http://%s:%d" (include "comfyui-grpc.serviceHost" (dict "ctx" . "name" (include "comfyui-grpc.rustfsName" .))) (int .Values.rustfs.port) }}
{{- else }}
{{- .Values.s3.endpointUrl }}
{{- end }}
{{- end }}

{{/* Where the TLS Secret is mounted in the gateway container. */}}
{{- define "comfyui-grpc.callbackDir" -}}
/etc/comfyui-grpc/callbacks
{{- end }}

{{- define "comfyui-grpc.tlsDir" -}}
/etc/comfyui-grpc/tls
{{- end }}

{{/* Where the health-check script is mounted in the gateway container. */}}
{{- define "comfyui-grpc.probeDir" -}}
/etc/comfyui-grpc/probe
{{- end }}

{{/*
A gateway probe. Plain gRPC: Kubernetes' native gRPC probe. With TLS: the kubelet cannot
speak TLS to a gRPC probe, so the container runs files/healthcheck.py with its own Python.
Call with (dict "ctx" $ "service" "liveness" "settings" .Values.gateway.probes.liveness).
*/}}
{{- define "comfyui-grpc.gatewayProbe" -}}
{{- if .ctx.Values.tls.enabled -}}
exec:
  command:
    - /opt/venv/bin/python
    - {{ include "comfyui-grpc.probeDir" .ctx }}/healthcheck.py
    - {{ .service | quote }}
    {{- with .ctx.Values.tls.probeServerName }}
    - {{ . | quote }}
    {{- end }}
{{- else -}}
grpc:
  port: {{ .ctx.Values.gateway.grpcPort }}
  service: {{ .service | quote }}
{{- end }}
{{- with .settings }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Checks across values that the schema cannot express; each fails the render with a message
naming the values to change.
*/}}
{{- define "comfyui-grpc.validate" -}}
{{- $v := .Values }}
{{- $pg := $v.state.postgres }}
{{- if and (or $pg.url $pg.existingSecret) $v.postgresql.enabled }}
{{- fail "set state.postgres.url / state.postgres.existingSecret (a PostgreSQL of yours) or postgresql.enabled (the bundled one), not both: the gateway keeps its jobs in one database." }}
{{- end }}
{{- if and (gt (int $v.gateway.replicaCount) 1) (not (include "comfyui-grpc.postgres" .)) }}
{{- fail (printf "gateway.replicaCount=%d needs job state on PostgreSQL: with SQLite each replica would keep its own jobs, queue and backends apart from the others. Set state.postgres.url, state.postgres.existingSecret or postgresql.enabled=true, or run one replica." (int $v.gateway.replicaCount)) }}
{{- end }}
{{- if and $v.postgresql.enabled $v.postgresql.auth.password $v.postgresql.auth.existingSecret }}
{{- fail "set postgresql.auth.password or postgresql.auth.existingSecret, not both: the password (and the gateway's URL) come from one Secret." }}
{{- end }}
{{- if and $pg.url $pg.existingSecret }}
{{- fail "set state.postgres.url or state.postgres.existingSecret, not both: the gateway reads its PostgreSQL URL from one Secret. Keep url to have the chart store it in its own Secret, or existingSecret (and existingSecretKey) to read it from a Secret of yours." }}
{{- end }}
{{- if and $pg.url $v.existingSecret }}
{{- fail "state.postgres.url is stored in the chart's Secret, which existingSecret replaces: put the URL in a Secret of yours and name it in state.postgres.existingSecret and state.postgres.existingSecretKey (it may be the Secret named in existingSecret)." }}
{{- end }}
{{- if ge (int $v.gateway.shutdownGraceSeconds) (int $v.gateway.terminationGracePeriodSeconds) }}
{{- fail "gateway.shutdownGraceSeconds must be shorter than gateway.terminationGracePeriodSeconds, or the pod is killed before it has drained." }}
{{- end }}
{{- if and $v.comfyui.enabled $v.externalComfyui.urls }}
{{- fail "externalComfyui.urls is for an existing ComfyUI: set comfyui.enabled=false to use it, or empty it to use the bundled ComfyUI." }}
{{- end }}
{{- if and (not $v.comfyui.enabled) (not $v.externalComfyui.urls) }}
{{- fail "comfyui.enabled=false needs externalComfyui.urls: the ComfyUI base URLs the gateway should use." }}
{{- end }}
{{- if and $v.rustfs.enabled $v.s3.endpointUrl }}
{{- fail "s3.endpointUrl is for an external S3: set rustfs.enabled=false to use it, or empty it to use the bundled RustFS." }}
{{- end }}
{{- if and (not $v.existingSecret) (ne (empty $v.s3.accessKeyId) (empty $v.s3.secretAccessKey)) }}
{{- fail "set both s3.accessKeyId and s3.secretAccessKey, or neither." }}
{{- end }}
{{- if and (not $v.auth.enabled) (not $v.tls.enabled) (not $v.gateway.insecure) }}
{{- fail "auth.enabled=false with tls.enabled=false serves the gRPC API to anyone who reaches it, and the gateway refuses to start that way: keep auth.enabled (the default), enable TLS, or set gateway.insecure=true to confirm." }}
{{- end }}
{{- if and $v.tls.enabled (not $v.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName: a kubernetes.io/tls Secret with tls.crt and tls.key (and ca.crt for tls.clientAuth)." }}
{{- end }}
{{- if and $v.templates.files $v.templates.existingConfigMap }}
{{- fail "set templates.files or templates.existingConfigMap, not both: the gateway reads one templates directory." }}
{{- end }}
{{- if and $v.gateway.podDisruptionBudget.enabled (not (kindIs "invalid" $v.gateway.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" $v.gateway.podDisruptionBudget.maxUnavailable)) }}
{{- fail "gateway.podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)." }}
{{- end }}
{{- end }}

{{/*
The ConfigMap mounted as the templates directory: the chart's own (templates.files), the
one named in templates.existingConfigMap, or empty when there are no templates.
*/}}
{{- define "comfyui-grpc.templatesConfigMap" -}}
{{- if .Values.templates.existingConfigMap }}
{{- .Values.templates.existingConfigMap }}
{{- else if .Values.templates.files }}
{{- include "comfyui-grpc.componentName" (dict "ctx" . "suffix" "templates") }}
{{- end }}
{{- end }}
