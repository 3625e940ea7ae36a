{{/*
Value checks with messages that name the fix (the JSON schema checks types, enums and unknown
keys; its pattern errors would only print a regular expression). Rendering fails on the first
problem, e.g.:
  entra.clientId is the placeholder 00000000-0000-0000-0000-000000000000: set it to the
  Application (client) ID of the gateway's app registration
*/}}

{{- define "entra-gateway.check.guid" -}}
{{- $path := index . 0 -}}{{- $v := toString (index . 1) -}}{{- $what := index . 2 -}}
{{- if eq $v "00000000-0000-0000-0000-000000000000" -}}
{{- fail (printf "%s is the placeholder 00000000-0000-0000-0000-000000000000: set it to %s" $path $what) -}}
{{- end -}}
{{- if not (regexMatch "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$" $v) -}}
{{- fail (printf "%s: %q is not a GUID (like 8f2d1c4e-52a0-4b8e-9d6f-0a1b2c3d4e5f): set it to %s" $path $v $what) -}}
{{- end -}}
{{- end -}}

{{- define "entra-gateway.check.duration" -}}
{{- $path := index . 0 -}}{{- $v := toString (index . 1) -}}
{{- if not (regexMatch "^[0-9]+(ms|s|m|h|d)$" $v) -}}
{{- fail (printf "%s: %q is not a duration: write it like 500ms, 30s, 15m or 24h" $path $v) -}}
{{- end -}}
{{- end -}}

{{- define "entra-gateway.check.url" -}}
{{- $path := index . 0 -}}{{- $v := toString (index . 1) -}}{{- $schemes := index . 2 -}}{{- $example := index . 3 -}}
{{- if not (regexMatch (printf "^(%s)://[^\\s/]+" $schemes) $v) -}}
{{- fail (printf "%s: %q is not a %s URL: write it like %s" $path $v $schemes $example) -}}
{{- end -}}
{{- end -}}

{{- define "entra-gateway.validate" -}}
{{- $v := .Values -}}
{{- $tenant := "your tenant's ID (Entra admin center: Identity > Overview > Tenant ID)" -}}
{{- $client := "the Application (client) ID of the gateway's app registration" -}}
{{- $group := "a security group's Object ID (Entra admin center: Groups > the group > Object ID)" -}}
{{- if not $v.entra.tenantIds -}}
{{- fail "entra.tenantIds is empty: list your tenant's ID (Entra admin center: Identity > Overview > Tenant ID)" -}}
{{- end -}}
{{- range $i, $t := $v.entra.tenantIds -}}
{{- include "entra-gateway.check.guid" (list (printf "entra.tenantIds[%d]" $i) $t $tenant) -}}
{{- end -}}
{{- include "entra-gateway.check.guid" (list "entra.clientId" $v.entra.clientId $client) -}}
{{- include "entra-gateway.check.duration" (list "entra.clockSkew" $v.entra.clockSkew) -}}
{{- with $v.entra.authorityHost -}}{{- include "entra-gateway.check.url" (list "entra.authorityHost" . "https" "https://login.microsoftonline.us") -}}{{- end -}}
{{- with $v.entra.graphUrl -}}{{- include "entra-gateway.check.url" (list "entra.graphUrl" . "https" "https://graph.microsoft.us/v1.0") -}}{{- end -}}
{{- range $i, $s := $v.entra.requiredScopes -}}
{{- if regexMatch "\\s|://" $s -}}
{{- fail (printf "entra.requiredScopes[%d]: %q: write the scope name as it appears in the token's scp, e.g. access_as_user" $i $s) -}}
{{- end -}}
{{- end -}}
{{- range $i, $g := $v.authorization.allowedGroups -}}
{{- include "entra-gateway.check.guid" (list (printf "authorization.allowedGroups[%d]" $i) $g $group) -}}
{{- end -}}
{{- range $g, $roles := $v.authorization.groupRoles -}}
{{- include "entra-gateway.check.guid" (list (printf "authorization.groupRoles key %s" $g) $g $group) -}}
{{- range $roles -}}
{{- if contains "," . -}}{{- fail (printf "authorization.groupRoles.%s: role %q has a comma: list roles one by one" $g .) -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- range $c, $_ := $v.authorization.apps.clients -}}
{{- include "entra-gateway.check.guid" (list (printf "authorization.apps.clients key %s" $c) $c "the calling app's Application (client) ID") -}}
{{- end -}}
{{- include "entra-gateway.check.url" (list "issuer.issuer" $v.issuer.issuer "https|http" "https://gateway.example.com (the gateway's public base URL)") -}}
{{- include "entra-gateway.check.duration" (list "issuer.tokenTtl" $v.issuer.tokenTtl) -}}
{{- with $v.redis.url -}}
{{- if not (regexMatch "^rediss?://[^:@/]+(:[0-9]+)?(/[0-9]+)?$" .) -}}
{{- fail (printf "redis.url: %q must be redis://host:port/db or rediss://... without a user or password: put a URL with a password in a Secret and set redis.existingSecret" .) -}}
{{- end -}}
{{- end -}}
{{- range $i, $u := $v.redis.clusterUrls -}}
{{- include "entra-gateway.check.url" (list (printf "redis.clusterUrls[%d]" $i) $u "redis|rediss" "redis://10.0.0.1:6379") -}}
{{- end -}}
{{- range $k := list "groupTtl" "negativeTtl" "jwksTtl" "profileTtl" -}}
{{- include "entra-gateway.check.duration" (list (printf "cache.%s" $k) (index $v.cache $k)) -}}
{{- end -}}
{{- include "entra-gateway.check.duration" (list "server.shutdownGrace" $v.server.shutdownGrace) -}}
{{- if not (regexMatch "^[A-Za-z0-9-]+-$" $v.proxy.identityHeaderPrefix) -}}
{{- fail (printf "proxy.identityHeaderPrefix: %q: write a header-name prefix ending in -, like X-Auth-" $v.proxy.identityHeaderPrefix) -}}
{{- end -}}
{{- range $i, $r := $v.proxy.routes -}}
{{- if not (hasPrefix "/" (toString $r.pathPrefix)) -}}
{{- fail (printf "proxy.routes[%d].pathPrefix: %q must start with /, like /api/" $i $r.pathPrefix) -}}
{{- end -}}
{{- include "entra-gateway.check.url" (list (printf "proxy.routes[%d].upstream" $i) $r.upstream "https|http" "http://orders.shop.svc.cluster.local:8080") -}}
{{- with $r.timeout -}}{{- include "entra-gateway.check.duration" (list (printf "proxy.routes[%d].timeout" $i) .) -}}{{- end -}}
{{- range $j, $g := $r.allowedGroups -}}
{{- include "entra-gateway.check.guid" (list (printf "proxy.routes[%d].allowedGroups[%d]" $i $j) $g $group) -}}
{{- end -}}
{{- end -}}
{{- end -}}
