// A real OpenID provider for stepgate's tests and demo.
//
// It issues RFC 9068 JWT access tokens by the client_credentials grant, exactly as a
// microservice gets them in production. Everything is configured by environment:
//   IDP_PORT        port to listen on (0 = any free port; the chosen one is reported)
//   IDP_CLIENTS     JSON array of {client_id, client_secret, scope}
//   IDP_AUDIENCES   JSON array of resource indicators (audiences); the first is the default
//   IDP_OPAQUE_AUDIENCES  JSON array of audiences that get opaque tokens (RFC 7662 introspection)
//   IDP_KEY_PEM     PKCS#1 RSA private key to sign with (generated when absent, so tests
//                   never share the library's well-known development key)
//   IDP_PARENT_PID  exit when this process is gone (tests start the IdP and may not stop it)
// When listening it prints one JSON line: {"issuer", "kid", "private_key_pem", "public_key_pem",
// "attacker_private_key_pem", "attacker_jwk"} so that tests can hand-make attack tokens with the
// very key the IdP signs with, and with an unrelated key it never published.
// GET /__test/jwks-fetches answers how often the JWKS was served (single-flight tests), and
// GET /__test/introspections how often a token was introspected.
// GET /__test/set?… changes how it answers, for the hostile-client tests (each optional):
//   opaque_prefix=P        opaque access tokens are issued as P<token>, and introspection
//                          takes them back (as IdPs that mark their tokens, e.g. `ghp_`, do)
//   jwks_padding=N         the JWKS carries N more bytes (an oversized key set)
//   strip_subject=1        introspection answers leave out `sub` and `client_id`
import { createServer } from 'node:http';
import * as querystring from 'node:querystring';
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const clients = JSON.parse(process.env.IDP_CLIENTS ?? '[]').map((c) => ({
  client_id: c.client_id,
  client_secret: c.client_secret,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  scope: c.scope,
}));
const audiences = JSON.parse(process.env.IDP_AUDIENCES ?? '["https://stepgate.local"]');
const opaqueAudiences = JSON.parse(process.env.IDP_OPAQUE_AUDIENCES ?? '[]');
const allScopes = [...new Set(clients.flatMap((c) => (c.scope ?? '').split(' ').filter(Boolean)))];

const privateKey = process.env.IDP_KEY_PEM
  ? createPrivateKey(process.env.IDP_KEY_PEM)
  : generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
const privatePem = privateKey.export({ type: 'pkcs1', format: 'pem' });
const publicPem = createPublicKey(privateKey).export({ type: 'spki', format: 'pem' });
const jwk = privateKey.export({ format: 'jwk' });
const kid = createHash('sha256').update(jwk.n).digest('base64url').slice(0, 16);
const attacker = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
const attackerPem = attacker.export({ type: 'pkcs1', format: 'pem' });
const attackerJwk = { ...createPublicKey(attacker).export({ format: 'jwk' }), kid: 'attacker-key', alg: 'RS256', use: 'sig' };
let jwksFetches = 0;
let introspections = 0;
const testMode = { opaquePrefix: '', jwksPadding: 0, stripSubject: false };

async function rawBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

const server = createServer();
server.listen(Number(process.env.IDP_PORT ?? 0), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients,
    scopes: allScopes,
    jwks: { keys: [{ ...jwk, kid, alg: 'RS256', use: 'sig' }] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => audiences[0],
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resource) => {
          if (!audiences.includes(resource) && !opaqueAudiences.includes(resource)) {
            throw new Error(`unknown resource ${resource}`);
          }
          return {
            scope: allScopes.join(' '),
            audience: resource,
            accessTokenFormat: opaqueAudiences.includes(resource) ? 'opaque' : 'jwt',
            accessTokenTTL: 600,
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
  });
  provider.use(async (ctx, next) => {
    if (ctx.path === '/__test/jwks-fetches') {
      ctx.body = { count: jwksFetches };
      return;
    }
    if (ctx.path === '/__test/introspections') {
      ctx.body = { count: introspections };
      return;
    }
    if (ctx.path === '/__test/set') {
      const q = ctx.query;
      if (q.opaque_prefix !== undefined) testMode.opaquePrefix = String(q.opaque_prefix);
      if (q.jwks_padding !== undefined) testMode.jwksPadding = Number(q.jwks_padding);
      if (q.strip_subject !== undefined) testMode.stripSubject = q.strip_subject === '1';
      ctx.body = testMode;
      return;
    }
    if (ctx.path === '/jwks') jwksFetches += 1;
    if (ctx.path === '/token/introspection' && ctx.method === 'POST') {
      introspections += 1;
      // Take the marked token back before the provider parses the form (it then uses the
      // already-parsed body).
      const form = querystring.parse(await rawBody(ctx.req));
      if (testMode.opaquePrefix && typeof form.token === 'string' && form.token.startsWith(testMode.opaquePrefix)) {
        form.token = form.token.slice(testMode.opaquePrefix.length);
      }
      ctx.req.body = querystring.stringify(form);
    }
    await next();
    if (ctx.path === '/token' && testMode.opaquePrefix && ctx.body && typeof ctx.body.access_token === 'string'
        && !ctx.body.access_token.includes('.')) {
      ctx.body = { ...ctx.body, access_token: testMode.opaquePrefix + ctx.body.access_token };
    }
    if (ctx.path === '/jwks' && testMode.jwksPadding > 0 && ctx.body && typeof ctx.body === 'object') {
      ctx.body = { ...ctx.body, padding: 'x'.repeat(testMode.jwksPadding) };
    }
    if (ctx.path === '/token/introspection' && testMode.stripSubject && ctx.body && typeof ctx.body === 'object') {
      const { sub, client_id, ...rest } = ctx.body;
      ctx.body = rest;
    }
  });
  server.on('request', provider.callback());
  console.log(JSON.stringify({
    issuer, kid, private_key_pem: privatePem, public_key_pem: publicPem,
    attacker_private_key_pem: attackerPem, attacker_jwk: attackerJwk,
  }));
  // Standard output carries only the ready line: whoever started us may stop reading it
  // (a write then fails with EPIPE), so the provider's own notices go to standard error.
  console.log = console.info = console.error;
  process.stdout.on('error', () => {});
});

const parent = Number(process.env.IDP_PARENT_PID ?? 0);
if (parent) {
  setInterval(() => {
    try {
      process.kill(parent, 0);
    } catch {
      process.exit(0);
    }
  }, 500).unref();
}
