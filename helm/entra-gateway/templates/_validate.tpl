{{/*
Value checks with messages that name the fix (the JSON schema checks types, enums and unknown
keys; its pattern errors would only print a regular expression). Every problem is collected and
`helm template` fails once, listing them all, e.g.:
  the values have 2 problem(s):
    - entra.clientId is the placeholder 00000000-0000-0000-0000-000000000000: set it to the
      Application (client) ID of the gateway's app registration
    - proxy.routes[1].pathPrefix "/api/" is a duplicate of proxy.routes[0]: each prefix once
Each check helper prints "- <problem>\n" or nothing.
*/}}

{{- define "entra-gateway.check.guid" -}}
{{- $path := index . 0 -}}{{- $v := toString (index . 1) -}}{{- $what := index . 2 -}}
{{- if eq $v "00000000-0000-0000-0000-000000000000" -}}
{{- printf "- %s is the placeholder 00000000-0000-0000-0000-000000000000: set it to %s\n" $path $what -}}
{{- else if not (regexMatch "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$" $v) -}}
{{- printf "- %s: %q is not a GUID (like 8f2d1c4e-52a0-4b8e-9d6f-0a1b2c3d4e5f): set it to %s\n" $path $v $what -}}
{{- end -}}
{{- end -}}

{{- define "entra-gateway.check.duration" -}}
{{- $path := index . 0 -}}{{- $v := toString (index . 1) -}}
{{- if not (regexMatch "^[0-9]+(ms|s|m|h|d)$" $v) -}}
{{- printf "- %s: %q is not a duration: write it like 500ms, 30s, 15m or 24h\n" $path $v -}}
{{- end -}}
{{- end -}}

{{- define "entra-gateway.check.url" -}}
{{- $path := index . 0 -}}{{- $v := toString (index . 1) -}}{{- $schemes := index . 2 -}}{{- $example := index . 3 -}}
{{- if not (regexMatch (printf "^(%s)://[^\\s/]+" $schemes) $v) -}}
{{- printf "- %s: %q is not a %s URL: write it like %s\n" $path $v $schemes $example -}}
{{- end -}}
{{- end -}}

{{- define "entra-gateway.check.secretName" -}}
{{- $path := index . 0 -}}{{- $v := index . 1 -}}{{- $what := index . 2 -}}
{{- if not $v -}}
{{- printf "- %s is empty: name the Secret that holds %s (the chart never creates secrets)\n" $path $what -}}
{{- end -}}
{{- end -}}

{{- define "entra-gateway.problems" -}}
{{- $v := .Values -}}
{{- $tenant := "your tenant's ID (Entra admin center: Identity > Overview > Tenant ID)" -}}
{{- $client := "the Application (client) ID of the gateway's app registration" -}}
{{- $group := "a security group's Object ID (Entra admin center: Groups > the group > Object ID)" -}}
{{- if not $v.image.repository -}}
- image.repository is empty: no image is published for this chart yet. Build one from the repository and push it: `docker build -f deploy/Dockerfile -t <registry>/entra-gateway:<tag> . && docker push <registry>/entra-gateway:<tag>` (or tag a release: .github/workflows/release.yml publishes ghcr.io/<owner>/entra-gateway), then set image.repository (and image.tag or image.digest)
{{ end -}}
{{- if not $v.entra.tenantIds -}}
- entra.tenantIds is empty or null: list your tenant's ID (Entra admin center: Identity > Overview > Tenant ID)
{{ end -}}
{{- range $i, $t := $v.entra.tenantIds -}}
{{- include "entra-gateway.check.guid" (list (printf "entra.tenantIds[%d]" $i) $t $tenant) -}}
{{- end -}}
{{- include "entra-gateway.check.guid" (list "entra.clientId" $v.entra.clientId $client) -}}
{{- include "entra-gateway.check.duration" (list "entra.clockSkew" $v.entra.clockSkew) -}}
{{- with $v.entra.authorityHost -}}{{- include "entra-gateway.check.url" (list "entra.authorityHost" . "https" "https://login.microsoftonline.us") -}}{{- end -}}
{{- with $v.entra.graphUrl -}}{{- include "entra-gateway.check.url" (list "entra.graphUrl" . "https" "https://graph.microsoft.us/v1.0") -}}{{- end -}}
{{- range $i, $s := $v.entra.requiredScopes -}}
{{- if regexMatch "\\s|://" $s -}}
{{- printf "- entra.requiredScopes[%d]: %q: write the scope name as it appears in the token's scp, e.g. access_as_user\n" $i $s -}}
{{- end -}}
{{- end -}}
{{- if and (include "entra-gateway.usesGraph" .) (ne $v.entra.credential.type "workloadIdentity") -}}
{{- include "entra-gateway.check.secretName" (list "entra.credential.existingSecret" $v.entra.credential.existingSecret (ternary "the app's client secret" "the app's certificate (tls.crt, tls.key)" (eq $v.entra.credential.type "secret"))) -}}
{{- end -}}
{{- if and (not $v.authorization.allowedGroups) (not $v.authorization.allowAnyTenantUser) -}}
- authorization.allowedGroups is empty or null: nobody could sign in; list group Object IDs, or set authorization.allowAnyTenantUser: true
{{ end -}}
{{- range $i, $g := $v.authorization.allowedGroups -}}
{{- include "entra-gateway.check.guid" (list (printf "authorization.allowedGroups[%d]" $i) $g $group) -}}
{{- end -}}
{{- range $g, $roles := $v.authorization.groupRoles -}}
{{- include "entra-gateway.check.guid" (list (printf "authorization.groupRoles key %s" $g) $g $group) -}}
{{- range $roles -}}
{{- if contains "," . -}}{{- printf "- authorization.groupRoles.%s: role %q has a comma: list roles one by one\n" $g . -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- range $c, $_ := $v.authorization.apps.clients -}}
{{- include "entra-gateway.check.guid" (list (printf "authorization.apps.clients key %s" $c) $c "the calling app's Application (client) ID") -}}
{{- end -}}
{{- include "entra-gateway.check.url" (list "issuer.issuer" $v.issuer.issuer "https|http" "https://gateway.example.com (the gateway's public base URL)") -}}
{{- include "entra-gateway.check.duration" (list "issuer.tokenTtl" $v.issuer.tokenTtl) -}}
{{- include "entra-gateway.check.secretName" (list "issuer.signingKeys.existingSecret" $v.issuer.signingKeys.existingSecret "the signing keys (one file per key: keys[].secretKey)") -}}
{{- if not $v.issuer.signingKeys.keys -}}
- issuer.signingKeys.keys is empty or null: list at least one { kid, algorithm, secretKey }
{{ end -}}
{{- $kids := dict -}}
{{- range $i, $k := $v.issuer.signingKeys.keys -}}
{{- if hasKey $kids (toString $k.kid) -}}
{{- printf "- issuer.signingKeys.keys[%d].kid %q is a duplicate of issuer.signingKeys.keys[%s]: every key needs its own kid\n" $i (toString $k.kid) (get $kids (toString $k.kid)) -}}
{{- else -}}{{- $_ := set $kids (toString $k.kid) (toString $i) -}}{{- end -}}
{{- end -}}
{{- with $v.redis.url -}}
{{- if not (regexMatch "^rediss?://[^:@/]+(:[0-9]+)?(/[0-9]+)?$" .) -}}
{{- printf "- redis.url: %q must be redis://host:port/db or rediss://... without a user or password: put a URL with a password in a Secret and set redis.existingSecret\n" . -}}
{{- end -}}
{{- end -}}
{{- if and $v.redis.passwordSecret (not $v.redis.url) (not $v.redis.existingSecret) (not $v.redis.clusterUrls) -}}
- redis.passwordSecret is set but redis.url and redis.clusterUrls are empty: set redis.url (without the password)
{{ end -}}
{{- include "entra-gateway.check.duration" (list "directory.postgres.timeout" $v.directory.postgres.timeout) -}}
{{- if and $v.directory.postgres.caSecret (not $v.directory.postgres.existingSecret) -}}
- directory.postgres.caSecret is set but directory.postgres.existingSecret is empty: put the PostgreSQL URL in a Secret and name it there
{{ end -}}
{{- range $i, $u := $v.redis.clusterUrls -}}
{{- include "entra-gateway.check.url" (list (printf "redis.clusterUrls[%d]" $i) $u "redis|rediss" "redis://10.0.0.1:6379") -}}
{{- end -}}
{{- range $k := list "groupTtl" "negativeTtl" "jwksTtl" "profileTtl" -}}
{{- include "entra-gateway.check.duration" (list (printf "cache.%s" $k) (index $v.cache $k)) -}}
{{- end -}}
{{- include "entra-gateway.check.duration" (list "server.shutdownGrace" $v.server.shutdownGrace) -}}
{{- include "entra-gateway.check.duration" (list "continuousAccess.pollInterval" $v.continuousAccess.pollInterval) -}}
{{- range $i, $net := $v.server.trustedProxies -}}
{{- if has (toString $net) (list "0.0.0.0/0" "::/0") -}}
{{- printf "- server.trustedProxies[%d]: %s trusts every client's X-Forwarded-For: list the ingress controller's pod CIDR instead, e.g. 10.244.0.0/16\n" $i (toString $net) -}}
{{- end -}}
{{- end -}}
{{- if not (regexMatch "^[A-Za-z0-9-]+-$" $v.proxy.identityHeaderPrefix) -}}
{{- printf "- proxy.identityHeaderPrefix: %q: write a header-name prefix ending in -, like X-Auth-\n" $v.proxy.identityHeaderPrefix -}}
{{- end -}}
{{- $prefixes := dict -}}
{{- range $i, $r := $v.proxy.routes -}}
{{- if not (hasPrefix "/" (toString $r.pathPrefix)) -}}
{{- printf "- proxy.routes[%d].pathPrefix: %q must start with /, like /api/\n" $i $r.pathPrefix -}}
{{- end -}}
{{- $key := lower (toString $r.pathPrefix) -}}
{{- if hasKey $prefixes $key -}}
{{- printf "- proxy.routes[%d].pathPrefix %q is a duplicate of proxy.routes[%s] (prefixes are compared case-insensitively): each prefix once\n" $i (toString $r.pathPrefix) (get $prefixes $key) -}}
{{- else -}}{{- $_ := set $prefixes $key (toString $i) -}}{{- end -}}
{{- include "entra-gateway.check.url" (list (printf "proxy.routes[%d].upstream" $i) $r.upstream "https|http" "http://orders.shop.svc.cluster.local:8080") -}}
{{- with $r.timeout -}}{{- include "entra-gateway.check.duration" (list (printf "proxy.routes[%d].timeout" $i) .) -}}{{- end -}}
{{- range $j, $g := $r.allowedGroups -}}
{{- include "entra-gateway.check.guid" (list (printf "proxy.routes[%d].allowedGroups[%d]" $i $j) $g $group) -}}
{{- end -}}
{{- end -}}
{{- if $v.sidecar.enabled -}}
{{- if not $v.sidecar.container.name -}}
- sidecar.container.name is empty: the sidecar app container needs a name (and an image)
{{ end -}}
{{- range $port := $v.sidecar.container.ports -}}
{{- if not (has (int $port.containerPort) (default list $v.sidecar.podNetworkPorts)) -}}
{{- printf "- sidecar.container.ports: %v is reachable from the pod network, past the gateway: bind the app to 127.0.0.1 and remove the port, or declare it in sidecar.podNetworkPorts (the NetworkPolicy still admits only the gateway's ports)\n" $port.containerPort -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $v.networkPolicy.enabled (not $v.networkPolicy.publicFrom) -}}
- networkPolicy.publicFrom is empty: say who may reach the public port (e.g. the ingress controller's namespace); for anywhere, write it: [{ipBlock: {cidr: 0.0.0.0/0}}]
{{ end -}}
{{- if and $v.networkPolicy.enabled (not $v.networkPolicy.adminFrom) -}}
- networkPolicy.adminFrom is empty: say who may reach the admin port (metrics, readiness), e.g. the monitoring namespace; for anywhere, write it: [{ipBlock: {cidr: 0.0.0.0/0}}]
{{ end -}}
{{- end -}}

{{- define "entra-gateway.validate" -}}
{{- $problems := include "entra-gateway.problems" . -}}
{{- if $problems -}}
{{- fail (printf "\nthe values have %d problem(s):\n%s" (len (splitList "\n- " (printf "\n%s" (trim $problems)) | rest)) (indent 2 (trim $problems))) -}}
{{- end -}}
{{- end -}}
