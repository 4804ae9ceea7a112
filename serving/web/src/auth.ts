// The signed-in user's token, kept in sessionStorage (gone with the tab; never in localStorage),
// and the way back to the sign-in page.

import { clearContextToken } from './context';

const TOKEN_KEY = 'radcloud.token';
const EXPIRES_KEY = 'radcloud.token.expires';

/** The bearer token, or null when signed out or expired. */
export function getToken(): string | null {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const expires = Number(sessionStorage.getItem(EXPIRES_KEY) ?? 0);
  if (!token || (expires && Date.now() >= expires)) {
    return null;
  }
  return token;
}

export function storeToken(token: string, expiresInSeconds: number): void {
  sessionStorage.setItem(TOKEN_KEY, token);
  // a little early, so a request is not sent with a token about to lapse
  const expires = Date.now() + Math.max(0, expiresInSeconds - 10) * 1000;
  sessionStorage.setItem(EXPIRES_KEY, String(expires));
}

/** Forget the sign-in token, and with it any patient context token it got. */
export function clearToken(): void {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(EXPIRES_KEY);
  clearContextToken();
}

/** Only pages of this app may be returned to after signing in (no open redirect): a viewer
 * of a study of the user's hospitals, or of another hospital's (read-only) study. */
export function safeNext(next: string | null): string | null {
  const local = /^viewer\.html\?study=[0-9.]{1,64}$/;
  const remote = /^viewer\.html\?hospital=[A-Za-z0-9%._~-]{1,384}&study=[0-9.]{1,64}&federated=1$/;
  return next && (local.test(next) || remote.test(next)) ? next : null;
}

/** Leave for the sign-in page, coming back to this viewer page afterwards. */
export function goToSignIn(): void {
  clearToken();
  const here = `${location.pathname.split('/').pop() ?? ''}${location.search}`;
  const next = safeNext(here);
  location.href = next ? `./?next=${encodeURIComponent(next)}` : './';
}
