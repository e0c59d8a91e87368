{{- define "codegw.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "codegw.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "codegw.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "codegw.redisSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "codegw.redisName" -}}
{{- printf "%s-redis" (include "codegw.fullname" .) -}}
{{- end -}}

{{- define "codegw.secretName" -}}
{{- default (include "codegw.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/* The Redis URL: the chart's own through the service environment
variables Kubernetes injects (no cluster DNS needed), or redis.url. */}}
{{- define "codegw.redisURL" -}}
{{- if .Values.redis.enabled -}}
{{- $svc := include "codegw.redisName" . | upper | replace "-" "_" -}}
{{- printf "redis://$(%s_SERVICE_HOST):$(%s_SERVICE_PORT)/0" $svc $svc -}}
{{- else -}}
{{- required "redis.url is required when redis.enabled is false" .Values.redis.url -}}
{{- end -}}
{{- end -}}
