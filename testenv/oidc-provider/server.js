// node oidc-provider (v8) on loopback, for oauth-operator's real test environment.
//
// Usage: node server.js [port] [initial-access-token]
//   or   OIDC_PORT=... OIDC_INITIAL_ACCESS_TOKEN=... node server.js
//
// Environment:
//   OIDC_PORT                   port to listen on (127.0.0.1 only); argv[2] wins
//   OIDC_INITIAL_ACCESS_TOKEN   static initial access token for RFC 7591 registration; argv[3] wins
//   OIDC_ROTATE_RAT             "false" disables RFC 7592 registration access token rotation
//                               (default true, oidc-provider's own default)
//   OIDC_EXTRA_SCOPES           space separated scopes accepted in addition to the built-in list
//
// Features: RFC 7591 registration (initial access token required), RFC 7592 management,
// client_credentials, authorization_code (+ refresh_token), dev interactions, resource
// indicators with one resource server (API_RESOURCE) issuing JWT access tokens.
//
// Prints `oidc-provider ready issuer=<issuer>` on stdout once it accepts connections.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import process from 'node:process';

import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const port = Number.parseInt(process.argv[2] ?? process.env.OIDC_PORT ?? '', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.js <port> [initial-access-token] (or OIDC_PORT)');
  process.exit(2);
}
const initialAccessToken = process.argv[3] ?? process.env.OIDC_INITIAL_ACCESS_TOKEN;
if (!initialAccessToken) {
  console.error('an initial access token is required (argv[3] or OIDC_INITIAL_ACCESS_TOKEN)');
  process.exit(2);
}
const rotateRegistrationAccessToken = process.env.OIDC_ROTATE_RAT !== 'false';

const issuer = `http://${HOST}:${port}`;

// The one resource server: client_credentials tokens are issued for it by default.
const API_RESOURCE = 'urn:oauth-operator:testenv:api';
const API_SCOPES = ['api:read', 'api:write'];

const extraScopes = (process.env.OIDC_EXTRA_SCOPES ?? '').split(' ').filter(Boolean);
const scopes = [
  ...new Set(['openid', 'offline_access', 'profile', 'email', ...API_SCOPES, ...extraScopes]),
];

// Fresh signing key per run; nothing is persisted.
const signingKey = {
  ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
  use: 'sig',
  alg: 'RS256',
  kid: 'testenv-rs256',
};

const configuration = {
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes,
  claims: {
    openid: ['sub'],
    profile: ['name'],
    email: ['email', 'email_verified'],
  },
  // Dev interactions log in any account id; this is an in-memory test server.
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, name: id, email: `${id}@example.test`, email_verified: true };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    registration: {
      enabled: true,
      initialAccessToken,
      issueRegistrationAccessToken: true,
    },
    registrationManagement: {
      enabled: true,
      rotateRegistrationAccessToken,
    },
    resourceIndicators: {
      enabled: true,
      // client_credentials without `resource` gets a token for API_RESOURCE; other requests
      // only get a resource when they ask for one.
      async defaultResource(ctx) {
        if (ctx.oidc.route === 'token' && ctx.oidc.params.grant_type === 'client_credentials') {
          return API_RESOURCE;
        }
        return undefined;
      },
      async getResourceServerInfo(ctx, resourceIndicator) {
        if (resourceIndicator === API_RESOURCE) {
          return {
            scope: API_SCOPES.join(' '),
            audience: API_RESOURCE,
            accessTokenTTL: 3600,
            accessTokenFormat: 'jwt',
          };
        }
        throw new Provider.errors.InvalidTarget();
      },
      async useGrantedResource() {
        return true;
      },
    },
  },
  // Refresh tokens for authorization_code clients that asked for offline_access.
  async issueRefreshToken(ctx, client, code) {
    return client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access');
  },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    ClientCredentials: 3600,
    IdToken: 3600,
    Grant: 3600,
    Interaction: 600,
    Session: 3600,
    RefreshToken: 86400,
  },
};

const provider = new Provider(issuer, configuration);

provider.on('server_error', (ctx, err) => {
  console.error('server_error', ctx.method, ctx.path, err);
});

const server = provider.listen(port, HOST, () => {
  console.log(`oidc-provider ready issuer=${issuer}`);
});
server.on('error', (err) => {
  console.error(`listening on ${HOST}:${port} failed:`, err);
  process.exit(1);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
