{{/*
Object names are fixed, not derived from the release name: the agent, the
controller and the CNI plugin find each other by these names, and the
cluster-scoped RBAC objects would clash between two releases anyway (one
Warren per cluster).
*/}}

{{/* warren.labels: labels every object carries. */}}
{{- define "warren.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: warren
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "warren.tag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* warren.tag: the image tag, the chart's appVersion unless set. */}}
{{- define "warren.tag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* warren.image: the one image both workloads run. */}}
{{- define "warren.image" -}}
{{ printf "%s:%s" .Values.image.repository (include "warren.tag" .) }}
{{- end }}

{{/* warren.rootNamespace: the mesh-wide policy namespace. */}}
{{- define "warren.rootNamespace" -}}
{{ .Values.rootNamespace | default .Release.Namespace }}
{{- end }}

{{/* warren.enrollKey: the key of enrollment.label (validated elsewhere). */}}
{{- define "warren.enrollKey" -}}
{{ splitList "=" .Values.enrollment.label | first }}
{{- end }}
