#!/usr/bin/env bash
# Creates the two app registrations entra-gateway needs, with the Azure CLI (`az login` first,
# as someone who may create applications; admin consent needs a Cloud Application Administrator
# or higher):
#   1. the gateway's API ("entra-gateway"): Application ID URI api://<appId>, the delegated scope
#      access_as_user, v2 access tokens (manifest: api.requestedAccessTokenVersion = 2), and a
#      groups claim with the groups assigned to the application (the first try needs no Graph:
#      graph_mode claims);
#   2. the single-page app ("entra-gateway-spa"): the SPA platform with its redirect URI and the
#      permission to call access_as_user, consented for the tenant.
# With GRAPH_MODE=app (group overage and continuous access read Graph) it also adds the
# application permissions User.Read.All and GroupMember.Read.All (admin consent) and a client
# secret, written to ./client-secret (mode 0600), never printed.
#
#   NAME=entra-gateway SPA_REDIRECT_URI=https://app.example.com/redirect.html GRAPH_MODE=claims \
#     bash deploy/entra/create-app-registrations.sh
set -euo pipefail

NAME=${NAME:-entra-gateway}
SPA_REDIRECT_URI=${SPA_REDIRECT_URI:-http://localhost:3000/redirect.html}
GRAPH_MODE=${GRAPH_MODE:-claims}
GRAPH_API=00000003-0000-0000-c000-000000000000
# Microsoft Graph application permissions (the same ids in every tenant).
USER_READ_ALL=df021288-bdef-4463-88db-98f22de89214
GROUP_MEMBER_READ_ALL=98830695-27a2-44f7-8c18-0c3ebc9698f6

case "$GRAPH_MODE" in
  claims | app) ;;
  *) echo "GRAPH_MODE must be claims or app (obo needs no app permission: consent happens per user)" >&2; exit 2 ;;
esac
command -v az >/dev/null || { echo "the Azure CLI (az) is required: https://aka.ms/azure-cli" >&2; exit 1; }

tenant=$(az account show --query tenantId -o tsv)
echo "tenant: $tenant"

# 1. The gateway's API.
api_app=$(az ad app create --display-name "$NAME" --sign-in-audience AzureADMyOrg --query appId -o tsv)
api_obj=$(az ad app show --id "$api_app" --query id -o tsv)
scope_id=$(python3 -c 'import uuid; print(uuid.uuid4())')
az ad app update --id "$api_app" --identifier-uris "api://$api_app"
az rest --method PATCH --uri "https://graph.microsoft.com/v1.0/applications/$api_obj" \
  --headers "Content-Type=application/json" --body "$(cat <<JSON
{
  "groupMembershipClaims": "ApplicationGroup",
  "optionalClaims": { "accessToken": [ { "name": "groups" } ] },
  "api": {
    "requestedAccessTokenVersion": 2,
    "oauth2PermissionScopes": [ {
      "id": "$scope_id", "value": "access_as_user", "type": "User", "isEnabled": true,
      "adminConsentDisplayName": "Sign in to $NAME", "adminConsentDescription": "Lets the app call $NAME as the signed-in user.",
      "userConsentDisplayName": "Sign in to $NAME", "userConsentDescription": "Lets the app call $NAME as you."
    } ]
  }
}
JSON
)"
az ad sp create --id "$api_app" >/dev/null
echo "gateway API: $api_app (scope api://$api_app/access_as_user)"

# 2. The single-page app.
spa_app=$(az ad app create --display-name "$NAME-spa" --sign-in-audience AzureADMyOrg --query appId -o tsv)
spa_obj=$(az ad app show --id "$spa_app" --query id -o tsv)
az rest --method PATCH --uri "https://graph.microsoft.com/v1.0/applications/$spa_obj" \
  --headers "Content-Type=application/json" --body "{\"spa\": {\"redirectUris\": [\"$SPA_REDIRECT_URI\"]}}"
az ad app permission add --id "$spa_app" --api "$api_app" --api-permissions "$scope_id=Scope"
az ad sp create --id "$spa_app" >/dev/null
az ad app permission grant --id "$spa_app" --api "$api_app" --scope access_as_user >/dev/null
echo "SPA: $spa_app (redirect URI $SPA_REDIRECT_URI)"

# 3. Graph, for graph_mode app and continuous access.
if [ "$GRAPH_MODE" = app ]; then
  az ad app permission add --id "$api_app" --api "$GRAPH_API" \
    --api-permissions "$USER_READ_ALL=Role" "$GROUP_MEMBER_READ_ALL=Role"
  az ad app permission admin-consent --id "$api_app"
  (umask 077 && az ad app credential reset --id "$api_app" --display-name entra-gateway --years 1 \
     --query password -o tsv > client-secret)
  echo "client secret written to ./client-secret (put it in the Secret the chart mounts)"
fi

cat <<EOT

Next: assign the groups that may sign in to the gateway's enterprise application (Entra admin
center: Enterprise applications > $NAME > Users and groups), then:
  entra-gateway init --tenant-id $tenant --client-id $api_app --graph-mode $GRAPH_MODE --group <group object id>
The SPA signs in with clientId $spa_app, authority https://login.microsoftonline.com/$tenant,
scope api://$api_app/access_as_user.
EOT
