{{/*
Whether the Prometheus Operator objects render: monitoring.enabled true, or "auto" where the
cluster serves monitoring.coreos.com/v1 (helm template: --api-versions monitoring.coreos.com/v1).
Returns "true" or "".
*/}}
{{- define "qwen35.monitoringOn" -}}
{{- $on := .Values.monitoring.enabled -}}
{{- if eq (toString $on) "true" -}}true
{{- else if and (eq (toString $on) "auto") (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}true
{{- end -}}
{{- end }}

{{/* Labels of every monitoring object: the chart's, plus the ones a Prometheus selects by. */}}
{{- define "qwen35.monitoringLabels" -}}
{{ include "qwen35.labels" . }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}
