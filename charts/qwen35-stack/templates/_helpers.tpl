{{- define "qwen35.name" -}}gdn-operator{{- end }}

{{- define "qwen35.fullname" -}}
{{- printf "%s-gdn-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "qwen35.labels" -}}
app.kubernetes.io/name: {{ include "qwen35.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: qwen35-stack
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "qwen35.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qwen35.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* One of the project's images: registry/name:tag (values.image; name from images/images.toml). */}}
{{- define "qwen35.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .name (.root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end }}

{{- define "qwen35.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "qwen35.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end }}

{{/* Rules on namespaced resources: every namespace (ClusterRole) or the watched one (Role). */}}
{{- define "qwen35.namespacedRules" -}}
- apiGroups: ["gdnserve.io"]
  resources: ["qwen35deployments"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["gdnserve.io"]
  resources: ["qwen35deployments/status"]
  verbs: ["patch"]
# ownerReferences with blockOwnerDeletion need update on the owner's finalizers.
- apiGroups: ["gdnserve.io"]
  resources: ["qwen35deployments/finalizers"]
  verbs: ["update"]
# Server-side apply creates the RayService on first apply, hence create + patch.
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Ready replicas: the endpoints of KubeRay's serve Service (no access to Pods, whose specs carry
# the environment).
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
