// The test provider's own login and consent pages, for the device flow (RFC 8628): after the user
// enters or confirms the user code, node-oidc-provider sends the browser to /interaction/UID.
// devInteractions stays disabled (its login takes any name and no password); these pages check the
// users' passwords of config.json and grant exactly what the device authorization asked for.
//
//   GET  /interaction/UID          the login form (username, password) or the consent form
//   POST /interaction/UID/login    username + password -> login finished, or the form again
//   POST /interaction/UID/consent  decision=allow -> a Grant with the asked scopes; decision=deny -> access_denied
//
// Plain HTML forms, no JavaScript: tests/support/device_user.py drives them like a browser would.

import { timingSafeEqual } from 'node:crypto';

const PATH = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|consent))?$/;
const BODY_LIMIT = 16 * 1024;

function escape(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${escape(title)}</title></head>
<body><h1>${escape(title)}</h1>
${body}
</body></html>`;
}

function sameSecret(given, expected) {
  const a = Buffer.from(String(given));
  const b = Buffer.from(String(expected));
  return a.length === b.length && timingSafeEqual(a, b);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > BODY_LIMIT) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks, size).toString('utf8'));
}

function loginForm(uid, message) {
  return page('Sign-in', `${message ? `<p class="error">${escape(message)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
  <input type="text" name="username" autofocus>
  <input type="password" name="password">
  <button type="submit">Sign in</button>
</form>`);
}

function consentForm(uid, client, scopes) {
  return page('Authorize', `<p><strong>${escape(client)}</strong> asks for: ${escape(scopes.join(' '))}</p>
<form method="post" action="/interaction/${escape(uid)}/consent">
  <button type="submit" name="decision" value="allow">Allow</button>
  <button type="submit" name="decision" value="deny">Deny</button>
</form>`);
}

// users: config.json's users ({name: {password, sub, ...}}).
export function interactionsMiddleware(provider, users) {
  return async function interactions(ctx, next) {
    const match = PATH.exec(ctx.path);
    if (!match) return next();
    const [, uid, step] = match;
    ctx.set('Cache-Control', 'no-store');
    let details;
    try {
      details = await provider.interactionDetails(ctx.req, ctx.res);
    } catch (err) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Error', `<p>${escape(err.message)}</p>`);
      return undefined;
    }
    if (details.uid !== uid) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Error', '<p>interaction mismatch</p>');
      return undefined;
    }
    const { prompt, params } = details;

    if (ctx.method === 'GET' && !step) {
      ctx.type = 'html';
      if (prompt.name === 'login') {
        ctx.body = loginForm(uid);
      } else {
        const scopes = [...new Set([...(prompt.details.missingOIDCScope || []),
          ...Object.values(prompt.details.missingResourceScopes || {}).flat()])];
        ctx.body = consentForm(uid, params.client_id, scopes);
      }
      return undefined;
    }
    if (ctx.method !== 'POST' || !step) {
      ctx.status = 405;
      return undefined;
    }
    let form;
    try {
      form = await readForm(ctx.req);
    } catch (err) {
      ctx.status = 400;
      ctx.body = err.message;
      return undefined;
    }

    if (step === 'login') {
      const user = users[form.get('username') || ''];
      if (prompt.name !== 'login' || !user || !sameSecret(form.get('password') || '', user.password)) {
        ctx.type = 'html';
        ctx.body = loginForm(uid, 'unknown user or wrong password');
        return undefined;
      }
      await provider.interactionFinished(ctx.req, ctx.res, { login: { accountId: user.sub } },
        { mergeWithLastSubmission: false });
      ctx.respond = false;
      return undefined;
    }

    // consent
    if (form.get('decision') !== 'allow') {
      await provider.interactionFinished(ctx.req, ctx.res, {
        error: 'access_denied', error_description: 'End-User denied the authorization',
      }, { mergeWithLastSubmission: false });
      ctx.respond = false;
      return undefined;
    }
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    for (const [indicator, scope] of Object.entries(prompt.details.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scope.join(' '));
    }
    await provider.interactionFinished(ctx.req, ctx.res, { consent: { grantId: await grant.save() } },
      { mergeWithLastSubmission: true });
    ctx.respond = false;
    return undefined;
  };
}
