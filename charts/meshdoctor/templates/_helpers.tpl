{{/* The image of this release: repository:tag, the tag defaulting to the appVersion. */}}
{{- define "meshdoctor.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Labels of every object: the kustomize base's, plus Helm's. `component` is the
app.kubernetes.io/name (meshdoctor-agent, meshdoctor-controller, ...), "" for none. */}}
{{- define "meshdoctor.labels" -}}
{{- with .component }}
app.kubernetes.io/name: {{ . }}
{{- end }}
app.kubernetes.io/part-of: meshdoctor
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{/* Selector labels: exactly the base's, so that an install moves between kustomize and Helm. */}}
{{- define "meshdoctor.selector" -}}
app.kubernetes.io/name: {{ . }}
app.kubernetes.io/part-of: meshdoctor
{{- end }}
