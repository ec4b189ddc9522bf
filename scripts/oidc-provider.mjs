// A private OpenID Provider (the npm package oidc-provider) for the tests of the RFC 7591
// registration adapter; started by scripts/start-oidc-provider, which installs it.
//
// Environment: OIDC_PORT (listen on 127.0.0.1), OIDC_INITIAL_ACCESS_TOKEN (what a client
// registration must present), OIDC_SCOPES (space-separated). It allows dynamic client
// registration (RFC 7591) and its management (RFC 7592), the client credentials grant, and
// resource indicators (RFC 8707): a token asked for a resource is an RFC 9068 JWT, ES256,
// for that resource as its audience. Everything is kept in memory.
import { generateKeyPairSync } from 'node:crypto';

import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT);
const initialAccessToken = process.env.OIDC_INITIAL_ACCESS_TOKEN;
const scopes = (process.env.OIDC_SCOPES || '').split(' ').filter(Boolean);
if (!port || !initialAccessToken || scopes.length === 0) {
  console.error('oidc-provider: set OIDC_PORT, OIDC_INITIAL_ACCESS_TOKEN and OIDC_SCOPES');
  process.exit(2);
}

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signing = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: 'es256-1' };

const provider = new Provider(`http://127.0.0.1:${port}`, {
  jwks: { keys: [signing] },
  scopes,
  clientDefaults: { grant_types: ['client_credentials'], response_types: [], id_token_signed_response_alg: 'ES256' },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    registration: { enabled: true, initialAccessToken },
    registrationManagement: { enabled: true, rotateRegistrationAccessToken: false },
    resourceIndicators: {
      enabled: true,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => ({
        scope: scopes.join(' '),
        audience: resourceIndicator,
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});
provider.on('server_error', (ctx, error) => console.error('oidc-provider: server_error', error));

provider.listen(port, '127.0.0.1', () => {
  console.error(`oidc-provider: listening on http://127.0.0.1:${port}`);
});
