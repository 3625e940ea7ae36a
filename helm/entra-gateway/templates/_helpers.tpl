{{/* Names and labels. */}}
{{- define "entra-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "entra-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "entra-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "entra-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "entra-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "entra-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "entra-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "entra-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Where secrets are mounted in the pod. */}}
{{- define "entra-gateway.paths" -}}
config: /etc/entra-gateway
entra: /var/run/secrets/entra
keys: /var/run/secrets/gateway-keys
tls: /var/run/secrets/gateway-tls
redisUrl: /var/run/secrets/redis-url
redisPassword: /var/run/secrets/redis-password
redisCa: /var/run/secrets/redis-ca
postgresUrl: /var/run/secrets/postgres-url
postgresCa: /var/run/secrets/postgres-ca
{{- end }}

{{/* The image reference: repository@digest, or repository:tag (the appVersion by default). */}}
{{- define "entra-gateway.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end }}

{{/* The gateway's config file, rendered from the values (no secrets in it). */}}
{{- define "entra-gateway.config" -}}
{{- $p := include "entra-gateway.paths" . | fromYaml -}}
{{- $v := .Values -}}
server:
  listen: {{ printf "0.0.0.0:%d" (int $v.server.port) | quote }}
  admin_listen: {{ printf "0.0.0.0:%d" (int $v.server.adminPort) | quote }}
  shutdown_grace: {{ $v.server.shutdownGrace | quote }}
  trusted_proxies: {{ toJson $v.server.trustedProxies }}
  workers: {{ int $v.server.workers }}
  {{- if $v.server.corsAllowedOrigins }}
  cors:
    allowed_origins: {{ toJson $v.server.corsAllowedOrigins }}
  {{- end }}
  rate_limit:
    exchange_per_ip: {{ if $v.server.rateLimit.exchangePerIp }}{ per_minute: {{ $v.server.rateLimit.exchangePerIp.perMinute }}, burst: {{ $v.server.rateLimit.exchangePerIp.burst }} }{{ else }}null{{ end }}
    exchange_per_user: {{ if $v.server.rateLimit.exchangePerUser }}{ per_minute: {{ $v.server.rateLimit.exchangePerUser.perMinute }}, burst: {{ $v.server.rateLimit.exchangePerUser.burst }} }{{ else }}null{{ end }}
  {{- if $v.server.tls.existingSecret }}
  tls:
    cert_file: {{ printf "%s/tls.crt" $p.tls | quote }}
    key_file: {{ printf "%s/tls.key" $p.tls | quote }}
  {{- end }}
entra:
  cloud: {{ $v.entra.cloud }}
  {{- with $v.entra.authorityHost }}
  authority_host: {{ . | quote }}
  {{- end }}
  {{- with $v.entra.graphUrl }}
  graph_url: {{ . | quote }}
  {{- end }}
  tenants: {{ toJson $v.entra.tenantIds }}
  required_scopes: {{ toJson $v.entra.requiredScopes }}
  client_id: {{ $v.entra.clientId | quote }}
  {{- with $v.entra.audiences }}
  audiences: {{ toJson . }}
  {{- end }}
  accepted_token_versions: {{ toJson $v.entra.acceptedTokenVersions }}
  clock_skew: {{ $v.entra.clockSkew | quote }}
  graph_mode: {{ $v.entra.graphMode }}
  group_lookup: {{ $v.entra.groupLookup }}
  continuous_access:
    enabled: {{ $v.continuousAccess.enabled }}
    poll_interval: {{ $v.continuousAccess.pollInterval | quote }}
  {{- if include "entra-gateway.usesGraph" . }}
  {{- if eq $v.entra.credential.type "secret" }}
  client_credential: secret
  client_secret_file: {{ printf "%s/%s" $p.entra $v.entra.credential.clientSecretKey | quote }}
  {{- else if eq $v.entra.credential.type "workloadIdentity" }}
  client_credential: workload_identity
  {{- else }}
  client_credential: certificate
  client_certificate_file: {{ printf "%s/tls.crt" $p.entra | quote }}
  client_certificate_key_file: {{ printf "%s/tls.key" $p.entra | quote }}
  {{- end }}
  {{- end }}
authorization:
  allowed_groups: {{ toJson $v.authorization.allowedGroups }}
  group_roles: {{ toJson $v.authorization.groupRoles }}
  allow_any_tenant_user: {{ $v.authorization.allowAnyTenantUser }}
  apps:
    clients: {{ toJson $v.authorization.apps.clients }}
    app_roles: {{ toJson $v.authorization.apps.appRoles }}
    tenants: {{ toJson ($v.authorization.apps.tenants | default list) }}
issuer:
  issuer: {{ $v.issuer.issuer | quote }}
  audience: {{ $v.issuer.audience | quote }}
  token_ttl: {{ $v.issuer.tokenTtl | quote }}
  signing_keys:
  {{- range $v.issuer.signingKeys.keys }}
    - { kid: {{ .kid | quote }}, algorithm: {{ .algorithm }}, private_key_file: {{ printf "%s/%s" $p.keys .secretKey | quote }} }
  {{- end }}
cache:
  {{- if $v.redis.existingSecret }}
  redis_url_file: {{ printf "%s/url" $p.redisUrl | quote }}
  {{- else if $v.redis.url }}
  redis_url: {{ $v.redis.url | quote }}
  {{- end }}
  {{- with $v.redis.username }}
  redis_username: {{ . | quote }}
  {{- end }}
  {{- if $v.redis.passwordSecret }}
  redis_password_file: {{ printf "%s/password" $p.redisPassword | quote }}
  {{- end }}
  {{- if $v.redis.caSecret }}
  redis_ca_file: {{ printf "%s/ca.crt" $p.redisCa | quote }}
  {{- end }}
  {{- with $v.redis.clusterUrls }}
  cluster_urls: {{ toJson . }}
  {{- end }}
  revocation_requires_redis: {{ $v.redis.revocationRequiresRedis }}
  group_ttl: {{ $v.cache.groupTtl | quote }}
  negative_ttl: {{ $v.cache.negativeTtl | quote }}
  jwks_ttl: {{ $v.cache.jwksTtl | quote }}
  profile_ttl: {{ $v.cache.profileTtl | quote }}
{{- if $v.directory.postgres.existingSecret }}
directory:
  postgres_url_file: {{ printf "%s/url" $p.postgresUrl | quote }}
  {{- if $v.directory.postgres.caSecret }}
  postgres_ca_file: {{ printf "%s/ca.crt" $p.postgresCa | quote }}
  {{- end }}
  postgres_pool_size: {{ $v.directory.postgres.poolSize }}
  postgres_timeout: {{ $v.directory.postgres.timeout | quote }}
{{- end }}
proxy:
  identity_header_prefix: {{ $v.proxy.identityHeaderPrefix | quote }}
  identity_headers: {{ $v.proxy.identityHeaders | default "x-auth" }}
  forward_token: {{ $v.proxy.forwardToken | toJson }}
  forward_auth:
    original_uri: {{ $v.proxy.forwardAuth.originalUri | default "null" }}
    unmatched: {{ $v.proxy.forwardAuth.unmatched | default "null" }}
  routes:{{ if not $v.proxy.routes }} []{{ end }}
  {{- range $v.proxy.routes }}
    - path_prefix: {{ .pathPrefix | quote }}
      upstream: {{ .upstream | quote }}
      auth: {{ .auth | default "required" }}
      timeout: {{ .timeout | default "30s" | quote }}
      strip_prefix: {{ .stripPrefix | default false }}
      allow_empty_segments: {{ .allowEmptySegments | default false }}
      allow_apps: {{ .allowApps | default false }}
      case_sensitive: {{ .caseSensitive | default false }}
      {{- if hasKey . "forwardToken" }}
      forward_token: {{ .forwardToken | toJson }}
      {{- end }}
      {{- with .audience }}
      audience: {{ . | quote }}
      {{- end }}
      {{- with .authContext }}
      auth_context: {{ toJson . }}
      {{- end }}
      {{- with .allowedGroups }}
      allowed_groups: {{ toJson . }}
      {{- end }}
      {{- with .name }}
      name: {{ . | quote }}
      {{- end }}
  {{- end }}
logging:
  level: {{ $v.logging.level | quote }}
  format: {{ $v.logging.format }}
  access_log: {{ $v.logging.accessLog }}
{{- with $v.telemetry.otlpEndpoint }}
telemetry:
  otlp_endpoint: {{ . | quote }}
  otlp_protocol: {{ $v.telemetry.otlpProtocol }}
  sample_ratio: {{ $v.telemetry.sampleRatio }}
{{- end }}
{{- end }}

{{/* Whether the gateway calls Graph (and so needs a client credential): graphMode app/obo, or continuous access. */}}
{{- define "entra-gateway.usesGraph" -}}
{{- if or (ne .Values.entra.graphMode "claims") .Values.continuousAccess.enabled }}true{{ end }}
{{- end }}
