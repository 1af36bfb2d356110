{{- define "privreg.labels" -}}
app.kubernetes.io/name: privreg
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "privreg.selector" -}}
app.kubernetes.io/name: privreg
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "privreg.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "privreg.name" -}}
{{ .Release.Name }}-operator
{{- end -}}

{{/*
What the operator may do to PrivateRegistries and their children: cluster-wide
in a ClusterRole (watchNamespaces empty), else in a Role in each watched
namespace. Writes are server-side apply (patch) plus create; no delete (owner
references let the garbage collector do that). Pods: list only, by the
registry's labels, to report why a registry pod fails (its status).
*/}}
{{- define "privreg.rules" -}}
- apiGroups: [privreg.dev]
  resources: [privateregistries]
  verbs: [get, list, watch]
- apiGroups: [privreg.dev]
  resources: [privateregistries/status]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [secrets, configmaps, services, persistentvolumeclaims]
  verbs: [get, list, watch, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* The operator's ServiceAccount, as the subject of a binding. */}}
{{- define "privreg.subjects" -}}
- kind: ServiceAccount
  name: {{ include "privreg.name" . }}
  namespace: {{ .Release.Namespace }}
{{- end -}}

{{/* A map as key=value pairs, comma-joined (sorted by key). */}}
{{- define "privreg.keyValues" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
