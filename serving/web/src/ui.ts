// Small DOM helpers shared by the pages: element building, the message banner, the access-denied
// panel and the signed-in user's bar.

import { ApiError, type Me } from './api';
import { clearToken } from './auth';

type Child = Node | string | null | undefined | false;
type Attributes = Record<string, string | number | boolean | null | undefined>;

/** `h('button', {class: 'x', 'data-testid': 'y'}, 'text')`: an element with attributes. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Attributes = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) {
      continue;
    }
    element.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) {
      element.append(child);
    }
  }
  return element;
}

export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (!element) {
    throw new Error(`page has no element #${id}`);
  }
  return element as T;
}

/** A plain sentence for an error, whatever threw it. */
export function errorText(error: unknown): string {
  if (error instanceof ApiError || error instanceof Error) {
    return error.message;
  }
  return String(error);
}

/** Show `text` in the page's banner (`#banner`); `kind` picks the colour. Empty text hides it. */
export function showBanner(text: string, kind: 'error' | 'info' = 'error'): void {
  const banner = document.getElementById('banner');
  if (!banner) {
    return;
  }
  banner.textContent = text;
  banner.className = `banner ${kind}`;
  banner.hidden = !text;
}

export function signOut(): void {
  clearToken();
  location.href = './';
}

/** The header's user name and sign-out button. */
export function renderUserBar(container: HTMLElement, me: Me): void {
  const roles = me.roles.join(', ');
  container.replaceChildren(
    h('span', { class: 'user', title: `roles: ${roles}` },
      h('span', { 'data-testid': 'user-name' }, me.name),
      h('span', { class: 'roles' }, roles ? ` (${roles})` : '')),
    h('button', { type: 'button', class: 'secondary', 'data-testid': 'sign-out' }, 'Sign out'),
  );
  container.querySelector('[data-testid=sign-out]')?.addEventListener('click', signOut);
}

const READING_NEEDS = 'Reading needs the radiologist role (admins may look but not sign).';

/** Replace `main` with the access-denied panel: the signed-in role may not see this; `needs`
 * says what would (by default, what reading needs). */
export function showAccessDenied(
  main: HTMLElement,
  error: unknown,
  me: Me | null,
  needs: string = READING_NEEDS,
): void {
  const who = me ? `${me.name} (${me.roles.join(', ') || 'no role'})` : 'This account';
  main.className = 'denied'; // not the page's own layout (the viewer's grid)
  main.replaceChildren(
    h('section', { class: 'panel access-denied', 'data-testid': 'access-denied', role: 'alert' },
      h('h2', {}, 'Access denied'),
      h('p', {}, `${who} may not ${needs === READING_NEEDS ? 'read studies' : 'see this'} ` +
        `here. ${needs}`),
      h('p', { class: 'muted' }, errorText(error)),
      h('button', { type: 'button', 'data-testid': 'sign-out' }, 'Sign in as someone else')),
  );
  main.querySelector('[data-testid=sign-out]')?.addEventListener('click', signOut);
}

/** The roles that see the Models page (the API also wants a platform operator). */
const MODEL_ROLES = ['admin', 'ml_engineer'];
/** The roles that read the worklist (docs/reading-app.md). */
const WORKLIST_ROLES = ['radiologist', 'admin'];

export const seesModels = (me: Me): boolean => me.roles.some((r) => MODEL_ROLES.includes(r));
export const seesWorklist = (me: Me): boolean => me.roles.some((r) => WORKLIST_ROLES.includes(r));

/** The header's page links (Worklist, Models) for a user who sees the Models page; `current`
 * is marked. Radiologists have the worklist only: no links. */
export function renderPageNav(container: HTMLElement, me: Me, current: 'worklist' | 'models'): void {
  const pages = [
    { page: 'worklist', href: './', label: 'Worklist', shown: seesWorklist(me) },
    { page: 'models', href: './?page=models', label: 'Models', shown: seesModels(me) },
  ].filter((entry) => entry.shown);
  container.replaceChildren(...(seesModels(me) ? pages : []).map((entry) => h('a', {
    href: entry.href, class: entry.page === current ? 'current' : '',
    'data-testid': `nav-${entry.page}`,
    'aria-current': entry.page === current ? 'page' : null,
  }, entry.label)));
}

/** "12 min", "3 h 05 min", "2 d 4 h". */
export function formatWaiting(minutes: number | null): string {
  if (minutes === null || !Number.isFinite(minutes)) {
    return '–';
  }
  const total = Math.max(0, Math.floor(minutes));
  if (total < 60) {
    return `${total} min`;
  }
  const hours = Math.floor(total / 60);
  if (hours < 48) {
    return `${hours} h ${String(total % 60).padStart(2, '0')} min`;
  }
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** DICOM PN "Doe^Jane" as "Doe, Jane". */
export function formatPersonName(name: string | null): string {
  if (!name) {
    return '';
  }
  const [family = '', given = ''] = name.split('^');
  return given ? `${family}, ${given}` : family;
}

/** DICOM DA "20240131" as "2024-01-31". */
export function formatDicomDate(date: string | null): string {
  if (!date || !/^\d{8}$/.test(date)) {
    return date ?? '';
  }
  return `${date.slice(0, 4)}-${date.slice(4, 6)}-${date.slice(6, 8)}`;
}

export function formatScore(score: number | null): string {
  return score === null ? '–' : score.toFixed(2);
}

/**
 * An AI score as a reader reads it, the same words in the worklist and the viewer: "AI
 * probability 0.87 (threshold 0.42)" when the model's card calibrates its score (the number is
 * then the probability of a finding), else "AI score 0.87 (threshold 0.42)".
 */
export function scoreStatement(
  score: number | null,
  threshold: number | null | undefined,
  calibrated: boolean | undefined,
): string {
  const what = calibrated ? 'AI probability' : 'AI score';
  const limit = threshold === null || threshold === undefined
    ? '' : ` (threshold ${formatScore(threshold)})`;
  return `${what} ${formatScore(score)}${limit}`;
}
