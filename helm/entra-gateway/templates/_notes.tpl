{{/* The install notes, generated from the values (NOTES.txt prints them; the tests render them). */}}
{{- define "entra-gateway.notes" -}}
{{- $v := .Values -}}
{{- $ns := .Release.Namespace -}}
{{- $scheme := ternary "https" "http" (not (empty $v.server.tls.existingSecret)) -}}
{{- $base := printf "%s://%s.%s.svc:%v" $scheme (include "entra-gateway.fullname" .) $ns $v.service.port -}}
entra-gateway {{ .Chart.AppVersion }} is installed as {{ include "entra-gateway.fullname" . }} in {{ $ns }} ({{ include "entra-gateway.image" . }}).

Secrets the chart expects (it never creates them):
  * {{ $v.issuer.signingKeys.existingSecret }}: the signing keys, one file per key:
      {{- range $v.issuer.signingKeys.keys }}
      entra-gateway keys generate --algorithm {{ .algorithm }} --out {{ .secretKey }}
      {{- end }}
      kubectl -n {{ $ns }} create secret generic {{ $v.issuer.signingKeys.existingSecret }}{{ range $v.issuer.signingKeys.keys }} --from-file={{ .secretKey }}{{ end }}
{{- if and (include "entra-gateway.usesGraph" .) (eq $v.entra.credential.type "secret") }}
  * {{ $v.entra.credential.existingSecret }}: the app registration's client secret:
      kubectl -n {{ $ns }} create secret generic {{ $v.entra.credential.existingSecret }} --from-literal={{ $v.entra.credential.clientSecretKey }}="$CLIENT_SECRET"
{{- else if and (include "entra-gateway.usesGraph" .) (eq $v.entra.credential.type "certificate") }}
  * {{ $v.entra.credential.existingSecret }}: the certificate registered on the app:
      kubectl -n {{ $ns }} create secret tls {{ $v.entra.credential.existingSecret }} --cert=app.crt --key=app.key
{{- else if eq $v.entra.credential.type "workloadIdentity" }}
  * none for Graph: workload identity. Federate the service account
    system:serviceaccount:{{ $ns }}:{{ include "entra-gateway.serviceAccountName" . }} with the app registration.
{{- end }}
{{- with $v.server.tls.existingSecret }}
  * {{ . }}: the public listener's certificate:
      kubectl -n {{ $ns }} create secret tls {{ . }} --cert=gateway.crt --key=gateway.key
{{- end }}
{{- with $v.redis.existingSecret }}
  * {{ . }}: key {{ $v.redis.existingSecretKey }} = the Redis URL with its password:
      kubectl -n {{ $ns }} create secret generic {{ . }} --from-literal={{ $v.redis.existingSecretKey }}="rediss://:$REDIS_PASSWORD@redis:6380/0"
{{- end }}
{{- with $v.redis.passwordSecret }}
  * {{ . }}: key {{ $v.redis.passwordSecretKey }} = the password of Redis user {{ $v.redis.username | default "default" }}:
      kubectl -n {{ $ns }} create secret generic {{ . }} --from-literal={{ $v.redis.passwordSecretKey }}="$REDIS_PASSWORD"
{{- end }}
{{- with $v.redis.caSecret }}
  * {{ . }}: key {{ $v.redis.caSecretKey }} = the CA bundle of the Redis server:
      kubectl -n {{ $ns }} create secret generic {{ . }} --from-file={{ $v.redis.caSecretKey }}=redis-ca.crt
{{- end }}
{{- with $v.directory.postgres.existingSecret }}
  * {{ . }}: key {{ $v.directory.postgres.existingSecretKey }} = the PostgreSQL URL of the user directory, password included
    (the gateway creates its tables at start; the user needs CREATE on the database the first time):
      kubectl -n {{ $ns }} create secret generic {{ . }} --from-literal={{ $v.directory.postgres.existingSecretKey }}="postgres://gateway:$PG_PASSWORD@postgres:5432/gateway?sslmode=require"
{{- end }}
{{- with $v.directory.postgres.caSecret }}
  * {{ . }}: key {{ $v.directory.postgres.caSecretKey }} = the CA bundle of the PostgreSQL server:
      kubectl -n {{ $ns }} create secret generic {{ . }} --from-file={{ $v.directory.postgres.caSecretKey }}=postgres-ca.crt
{{- end }}

Exchange endpoint:   {{ $base }}/auth/exchange
{{- if $v.proxy.forwardAuth.originalUri }}
Forward-auth URL:    {{ $base }}/auth/verify{{ if eq $v.proxy.forwardAuth.originalUri "path" }}/<original path>{{ end }}   (original URI from {{ $v.proxy.forwardAuth.originalUri }})
{{- else }}
Forward-auth:        off (set proxy.forwardAuth.originalUri for the ingress in front; /auth/verify answers 404 until then)
{{- end }}
Metrics / readiness: port {{ $v.server.adminPort }} (/metrics, /readyz){{ if or $v.adminService.enabled $v.serviceMonitor.enabled }} on the Service {{ include "entra-gateway.fullname" . }}-admin{{ else }}, on the pods only (set adminService.enabled for a ClusterIP Service){{ end }}
Check the rendered config:  helm template {{ .Release.Name }} <chart> -f values.yaml --show-only templates/configmap.yaml > cm.yaml && entra-gateway check-config --syntax-only --config cm.yaml
Test the install:           helm test {{ .Release.Name }} -n {{ $ns }}   (runs check-config in the cluster)
{{- end }}
