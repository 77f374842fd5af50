{{/* The release's base name: the release name, with the chart's name appended unless already in it. */}}
{{- define "kubetune.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object the chart creates. */}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end -}}

{{/* Labels that select the operator's pods (never change them: workload selectors are immutable). */}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference from {repository, tag, digest}: the digest wins, the tag defaults to appVersion. */}}
{{- define "kubetune.imageRef" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "kubetune.operatorImage" -}}
{{- include "kubetune.imageRef" (list .Values.image .) -}}
{{- end -}}

{{- define "kubetune.trainerImage" -}}
{{- include "kubetune.imageRef" (list .Values.trainer.image .) -}}
{{- end -}}

{{/* cluster mode (watch all namespaces) or namespaced mode (watch.namespaces). */}}
{{- define "kubetune.clusterMode" -}}
{{- if not .Values.watch.namespaces -}}true{{- end -}}
{{- end -}}

{{/* The operator's RBAC rules, kept as data in files/operator-rules.yaml (generated from the operator's own
     list, kubetune.controller.rbac). Keys: clusterMode, namespacedMode.namespaced, namespacedMode.cluster. */}}
{{- define "kubetune.rules" -}}
{{- .Files.Get "files/operator-rules.yaml" -}}
{{- end -}}
