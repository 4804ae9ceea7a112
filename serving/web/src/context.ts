// The treatment context token (POST /api/auth/context-token): a short-lived token bound to one
// patient, with which the app reads that patient's studies at other hospitals. Kept like the
// sign-in token, in sessionStorage (gone with the tab), never in a URL; with it the patient key
// it is bound to, so that the viewer of another hospital's study can renew it when it lapses.

const TOKEN_KEY = 'radcloud.context';
const EXPIRES_KEY = 'radcloud.context.expires';
const PATIENT_KEY = 'radcloud.context.patient';

/** The context token, or null when there is none or it has expired. */
export function getContextToken(): string | null {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const expires = Number(sessionStorage.getItem(EXPIRES_KEY) ?? 0);
  if (!token || (expires && Date.now() >= expires)) {
    return null;
  }
  return token;
}

/** The patient key the stored context token is (or was) bound to. */
export function contextPatient(): string | null {
  return sessionStorage.getItem(PATIENT_KEY);
}

export function storeContextToken(token: string, expiresInSeconds: number, patient: string): void {
  sessionStorage.setItem(TOKEN_KEY, token);
  // a little early, so a request is not sent with a token about to lapse
  const expires = Date.now() + Math.max(0, expiresInSeconds - 10) * 1000;
  sessionStorage.setItem(EXPIRES_KEY, String(expires));
  sessionStorage.setItem(PATIENT_KEY, patient);
}

export function clearContextToken(): void {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(EXPIRES_KEY);
  sessionStorage.removeItem(PATIENT_KEY);
}
