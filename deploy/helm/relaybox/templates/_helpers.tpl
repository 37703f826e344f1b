{{- define "relaybox.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "relaybox.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "relaybox.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relaybox.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "relaybox.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "relaybox.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "relaybox.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "relaybox.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "relaybox.secretName" -}}
{{- if .Values.secret.create -}}
{{- include "relaybox.fullname" . -}}
{{- else -}}
{{- required "secret.existingSecret (or secret.create with secret.data) is required: it holds DATABASE_URL" .Values.secret.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "relaybox.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The environment shared by the relay and the migration Job. */}}
{{- define "relaybox.env" -}}
{{- range $k := list "DATABASE_URL" "KAFKA_SASL_PASSWORD" "SCHEMA_REGISTRY_PASSWORD" }}
{{- if hasKey $.Values.env $k }}
{{- fail (printf "env.%s: a secret; put it in the Secret (secret.existingSecret or secret.data), not in env" $k) }}
{{- end }}
{{- end }}
{{- range $k, $v := .Values.env }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{- define "relaybox.envFrom" -}}
- secretRef:
    name: {{ include "relaybox.secretName" . }}
{{- end -}}
