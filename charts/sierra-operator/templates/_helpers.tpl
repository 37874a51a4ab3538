{{/* Names, labels and the values every template derives from one place. */}}

{{- define "sierra-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sierra-operator.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "sierra-operator.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sierra-operator.serviceAccountName" -}}
{{- default (include "sierra-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "sierra-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sierra-operator.prefectServerName" -}}
{{- printf "%s-prefect" (include "sierra-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sierra-operator.prefectServerImage" -}}
{{- with .Values.prefect.server.image -}}
{{- if .repository -}}
{{- printf "%s:%s" .repository (default "latest" .tag) -}}
{{- else -}}
{{- include "sierra-operator.image" $ -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The bundled PostgreSQL of the bundled Prefect server: its name; "true" when the chart
runs it (database.type postgresql without an existing database's Secret). */}}
{{- define "sierra-operator.postgresqlName" -}}
{{- printf "%s-postgresql" (include "sierra-operator.prefectServerName" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret and key of the bundled PostgreSQL's password: the user's passwordSecret, or
the one the chart generates. */}}
{{- define "sierra-operator.postgresqlPasswordRef" -}}
{{- $ps := .Values.prefect.server.database.postgresql.passwordSecret -}}
name: {{ $ps.name | default (include "sierra-operator.postgresqlName" .) }}
key: {{ ternary $ps.key "password" (ne $ps.name "") }}
{{- end -}}

{{- define "sierra-operator.bundledPostgresql" -}}
{{- with .Values.prefect.server -}}
{{- if and .enabled (eq .database.type "postgresql") (not .database.postgresql.existingSecret.name) -}}
true
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Requests creating flow runs in flight: the value, else what the database takes. */}}
{{- define "sierra-operator.submitConcurrency" -}}
{{- if kindIs "invalid" .Values.operator.submitConcurrency -}}
{{- if and .Values.prefect.server.enabled (eq .Values.prefect.server.database.type "postgresql") -}}
2
{{- else -}}
1
{{- end -}}
{{- else -}}
{{- .Values.operator.submitConcurrency -}}
{{- end -}}
{{- end -}}

{{/* The Prefect API the operator gives batches without spec.prefect.apiUrl. */}}
{{- define "sierra-operator.prefectApiUrl" -}}
{{- if .Values.prefect.server.enabled -}}
{{- printf "http://%s.%s.svc:%d/api" (include "sierra-operator.prefectServerName" .) .Release.Namespace (int .Values.prefect.server.port) -}}
{{- else -}}
{{- .Values.prefect.apiUrl -}}
{{- end -}}
{{- end -}}

{{- define "sierra-operator.dockerHost" -}}
{{- if .Values.docker.dind.enabled -}}
tcp://127.0.0.1:2375
{{- else -}}
{{- .Values.docker.host -}}
{{- end -}}
{{- end -}}

{{/* Rules across values that the JSON schema cannot word clearly. */}}
{{- define "sierra-operator.validate" -}}
{{- if and (not .Values.prefect.server.enabled) (not .Values.prefect.apiUrl) -}}
{{- fail "prefect.apiUrl: required when prefect.server.enabled is false (set the external Prefect API URL, or enable the bundled server)" -}}
{{- end -}}
{{- if and .Values.prefect.server.enabled .Values.prefect.apiUrl -}}
{{- fail "prefect.apiUrl: set only for an external server; with prefect.server.enabled=true the operator uses the bundled one (set prefect.server.enabled=false to use the external API)" -}}
{{- end -}}
{{- with .Values.prefect.server.database -}}
{{- if and (ne .type "postgresql") .postgresql.existingSecret.name -}}
{{- fail "prefect.server.database.postgresql.existingSecret.name: only used with prefect.server.database.type=postgresql (set the type, or leave the Secret name empty)" -}}
{{- end -}}
{{- if and (eq .type "postgresql") (not $.Values.prefect.server.enabled) -}}
{{- fail "prefect.server.database.type: postgresql is the bundled Prefect server's database; with prefect.server.enabled=false the external Prefect keeps its own (leave the type sqlite)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.docker.dind.enabled .Values.docker.host -}}
{{- fail "docker.host: leave it empty when docker.dind.enabled is true (builds then use the sidecar)" -}}
{{- end -}}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) -}}
{{- fail "serviceAccount.name: required when serviceAccount.create is false (the existing ServiceAccount to run as)" -}}
{{- end -}}
{{- end -}}
