// A real OpenID provider for the tests: `oidc-provider` (a certified OpenID Connect
// implementation) configured like a Keycloak realm. Access tokens are JWTs for the resource a
// client names (RFC 8707), carrying roles as Keycloak does (`realm_access.roles`,
// `resource_access.<client>.roles`) and `preferred_username`.
//
// Run by tests/common/idp.rs from a copy beside the npm prefix's node_modules (ESM resolves
// packages from the script's own directory). Configuration is JSON in IDP_CONFIG:
//
//   { "port": 0, "path": "/realms/mcp", "access_token_ttl": 300,
//     "clients": [{ "client_id": "worker", "client_secret": "s", "roles": ["agent"],
//                   "grant_types": ["client_credentials"], "redirect_uris": [] }],
//     "users": [{ "username": "alice", "password": "pw", "roles": ["human_oversight"],
//                 "client_roles": { "console": ["..."] } }] }
//
// It prints its issuer URL on stdout (one line) once listening; logs go to stderr. Besides the
// provider's own endpoints, under the issuer's origin:
//   POST /admin/rotate   a new signing key, first in the JWKS (the old one stays, so tokens
//                        already issued still verify); answers {"kid": NEW, "kids": [...]}.
//                        With ?drop_old=1 the old keys leave the JWKS.
//   GET  /admin/stats    {"jwks_requests": N}: how often the JWKS was fetched.
// The login page is a plain HTML form (username, password); consent is granted without asking.

import crypto from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(process.env.IDP_CONFIG || '{}');
const mount = (config.path || '').replace(/\/+$/, '');
const ttl = Number(config.access_token_ttl || 300);
const users = new Map((config.users || []).map((u) => [u.username, u]));
const clientRoles = new Map((config.clients || []).map((c) => [c.client_id, c]));
const cookieKeys = [crypto.randomBytes(32).toString('hex')];
let keys = [newKey()];
let jwksRequests = 0;

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    ...privateKey.export({ format: 'jwk' }),
    kid: `k-${crypto.randomBytes(6).toString('hex')}`,
    use: 'sig',
    alg: 'RS256',
  };
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// Keycloak's shape: realm roles, and roles per client.
function roleClaims(roles, perClient) {
  const claims = { realm_access: { roles: roles || [] } };
  if (perClient && Object.keys(perClient).length) {
    claims.resource_access = Object.fromEntries(
      Object.entries(perClient).map(([client, r]) => [client, { roles: r }]),
    );
  }
  return claims;
}

function clientMetadata(c) {
  const grantTypes = c.grant_types || ['client_credentials'];
  const code = grantTypes.includes('authorization_code');
  return {
    client_id: c.client_id,
    ...(c.client_secret
      ? { client_secret: c.client_secret }
      : { token_endpoint_auth_method: 'none' }),
    grant_types: grantTypes,
    response_types: code ? ['code'] : [],
    redirect_uris: code ? c.redirect_uris || [] : [],
    post_logout_redirect_uris: c.post_logout_redirect_uris || [],
  };
}

function makeProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: (config.clients || []).map(clientMetadata),
    jwks: { keys },
    cookies: { keys: cookieKeys },
    scopes: ['openid', 'profile', 'offline_access', 'mcp'],
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name', 'realm_access', 'resource_access'],
    },
    // The ID token carries the profile claims too, as Keycloak's does.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    ttl: {
      AccessToken: ttl,
      ClientCredentials: ttl,
      IdToken: 3600,
      RefreshToken: 24 * 3600,
      Grant: 24 * 3600,
      Session: 24 * 3600,
      Interaction: 600,
      AuthorizationCode: 60,
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // One resource asked for at authorization is the one the code's token is for.
        defaultResource: async (_ctx, _client, oneOf) => oneOf,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resource) => ({
          scope: 'mcp',
          audience: resource,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    async findAccount(_ctx, id) {
      const user = users.get(id);
      if (!user) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            preferred_username: id,
            name: user.name || id,
            ...roleClaims(user.roles, user.client_roles),
          };
        },
      };
    },
    async extraTokenClaims(_ctx, token) {
      if (token.accountId) {
        const user = users.get(token.accountId);
        if (!user) return undefined;
        return {
          preferred_username: token.accountId,
          ...roleClaims(user.roles, user.client_roles),
        };
      }
      const client = clientRoles.get(token.clientId);
      return client ? roleClaims(client.roles, client.client_roles) : undefined;
    },
    interactions: { url: (_ctx, interaction) => `${mount}/interaction/${interaction.uid}` },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = `<!doctype html><title>error</title><pre id="error">${escapeHtml(JSON.stringify(out))}</pre>`;
    },
  });
  provider.proxy = false;
  return provider;
}

function loginPage(uid, error) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>Log in</title></head><body>
<h1>Log in</h1>${error ? `<p id="error">${escapeHtml(error)}</p>` : ''}
<form method="post" action="${mount}/interaction/${escapeHtml(uid)}/login">
<label>Username <input name="username" id="username" autocomplete="username"></label>
<label>Password <input name="password" id="password" type="password"></label>
<button type="submit" id="login">Log in</button>
</form></body></html>`;
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 65536) throw new Error('form too large');
  }
  return Object.fromEntries(new URLSearchParams(body));
}

// The interaction pages: login (a form), and consent (granted at once).
async function interaction(provider, req, res, rest) {
  const [uid, action] = rest.split('/');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  const { prompt, params } = details;
  if (prompt.name === 'login') {
    if (req.method === 'POST' && action === 'login') {
      const form = await readForm(req);
      const user = users.get(form.username);
      if (!user || user.password !== form.password) {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        res.end(loginPage(uid, 'Invalid username or password.'));
        return;
      }
      await provider.interactionFinished(
        req,
        res,
        { login: { accountId: form.username } },
        { mergeWithLastSubmission: false },
      );
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(loginPage(uid));
    return;
  }
  if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(
      req,
      res,
      { consent: { grantId } },
      { mergeWithLastSubmission: true },
    );
    return;
  }
  throw new Error(`unexpected prompt ${prompt.name}`);
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

let provider;
let handler;
let issuer;

function install() {
  provider = makeProvider(issuer);
  handler = provider.callback();
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    if (url.pathname === '/admin/rotate' && req.method === 'POST') {
      const key = newKey();
      keys = url.searchParams.get('drop_old') ? [key] : [key, ...keys];
      install();
      json(res, 200, { kid: key.kid, kids: keys.map((k) => k.kid) });
      return;
    }
    if (url.pathname === '/admin/stats') {
      json(res, 200, { jwks_requests: jwksRequests });
      return;
    }
    if (!url.pathname.startsWith(`${mount}/`)) {
      json(res, 404, { error: 'not_found' });
      return;
    }
    const rest = url.pathname.slice(mount.length);
    if (rest === '/jwks') jwksRequests += 1;
    if (rest.startsWith('/interaction/')) {
      await interaction(provider, req, res, rest.slice('/interaction/'.length));
      return;
    }
    // The provider is mounted under the issuer's path: it sees the rest, as under a router.
    req.originalUrl = req.url;
    req.url = req.url.slice(mount.length) || '/';
    handler(req, res);
  } catch (e) {
    process.stderr.write(`idp: ${req.method} ${req.url}: ${e.stack || e}\n`);
    if (!res.headersSent) json(res, 500, { error: 'server_error', error_description: String(e.message) });
    else res.end();
  }
});

server.listen(Number(config.port || 0), '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}${mount}`;
  install();
  process.stdout.write(`${issuer}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
