{{/* Labels of the agent's and of the server's objects. */}}
{{- define "isthmus.agentLabels" -}}
app.kubernetes.io/part-of: isthmus
k8s-app: konnectivity-agent
{{- end }}

{{- define "isthmus.serverLabels" -}}
app.kubernetes.io/part-of: isthmus
k8s-app: konnectivity-server
{{- end }}

{{- define "isthmus.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
isthmus.validate refuses what `isthmus manifests` refuses across keys
(values.schema.json checks each key alone).
*/}}
{{- define "isthmus.validate" -}}
{{- $n := len .Values.serverAddresses -}}
{{- if and .Values.leases (gt $n 1) -}}
{{- fail (printf "leases count the servers behind ONE address (a load balancer); with %d serverAddresses agents dial each once: set leases=false, or give one address" $n) -}}
{{- end -}}
{{- if and .Values.leases (ne (int .Values.serverCount) 0) -}}
{{- fail (printf "serverCount %d with leases: the count comes from the servers' Leases; give one or the other" (int .Values.serverCount)) -}}
{{- end -}}
{{- if and (gt $n 1) (ne (int .Values.serverCount) 0) (ne (int .Values.serverCount) $n) -}}
{{- fail (printf "serverCount %d with %d serverAddresses: agents hold one tunnel to each address, so the count is the number of addresses" (int .Values.serverCount) $n) -}}
{{- end -}}
{{- end }}
