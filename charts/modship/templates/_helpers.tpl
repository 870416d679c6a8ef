{{/*
Names and labels shared by every template.
*/}}

{{- define "modship.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A fully qualified name: the release name, unless it already contains the chart name.
Truncated to 63 characters (some Kubernetes name fields are DNS labels).
*/}}
{{- define "modship.fullname" -}}
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

{{- define "modship.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels (https://helm.sh/docs/chart_best_practices/labels/). */}}
{{- define "modship.labels" -}}
helm.sh/chart: {{ include "modship.chart" . }}
{{ include "modship.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modship
{{- end }}

{{/* Selector labels: immutable once a Deployment exists, so no version in here. */}}
{{- define "modship.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modship.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "modship.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modship.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modship.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The namespace the operator watches when rbac.scope is "namespace". */}}
{{- define "modship.watchNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace }}
{{- end }}

{{- define "modship.leaseName" -}}
{{- default (printf "%s-leader" (include "modship.fullname" .)) .Values.leaderElection.leaseName | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Cluster-scoped names carry the release namespace: two releases must not share a ClusterRole. */}}
{{- define "modship.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "modship.fullname" .) }}
{{- end }}

{{- define "modship.checkValues" -}}
{{- if and (eq .Values.rbac.scope "cluster") .Values.watchNamespace }}
{{- fail "watchNamespace is only used with rbac.scope=namespace: with rbac.scope=cluster the operator watches every namespace" }}
{{- end }}
{{- if ge (int .Values.leaderElection.renewDeadlineSeconds) (int .Values.leaderElection.leaseDurationSeconds) }}
{{- fail "leaderElection.renewDeadlineSeconds must be less than leaderElection.leaseDurationSeconds" }}
{{- end }}
{{- end }}
