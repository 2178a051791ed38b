{{/* The release's full name: the release name, prefixed with the chart's unless it holds it. */}}
{{- define "meshdoctor.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "meshdoctor.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* helm.sh/chart and managed-by are dropped from deploy/kustomize/base when it is rendered. */}}
{{- define "meshdoctor.labels" -}}
{{ include "meshdoctor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: meshdoctor
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "meshdoctor.serviceAccountName" -}}
{{- default (include "meshdoctor.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The ServiceAccount's user name, as the API server authenticates the agent's token. */}}
{{- define "meshdoctor.agentUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "meshdoctor.serviceAccountName" .) -}}
{{- end -}}

{{/* "true" when the debug endpoint listens off loopback, so that it checks bearer tokens. */}}
{{- define "meshdoctor.debugChecksTokens" -}}
{{- $addr := .Values.agent.debugAddress -}}
{{- if and $addr (not (or (hasPrefix "127." $addr) (hasPrefix "localhost:" $addr) (hasPrefix "[::1]:" $addr))) -}}
true
{{- end -}}
{{- end -}}

{{/* A host path as the agent sees it: under its --host-root. */}}
{{- define "meshdoctor.inHost" -}}
{{- printf "/host%s" . -}}
{{- end -}}
