// The worklist page: the prioritised studies from /api/worklist in the API's order, filters and
// search passed to the API, auto-refresh every refresh_seconds, and Open (claims an unread study,
// then opens the viewer).

import {
  ApiError,
  claimStudy,
  getViewerConfig,
  getWorklist,
  type Me,
  type ReadingStatus,
  type WorklistFilters,
  type WorklistPage,
  type WorklistRow,
} from './api';
import { goToSignIn } from './auth';
import {
  errorText,
  formatDicomDate,
  formatPersonName,
  formatScore,
  formatWaiting,
  h,
  scoreStatement,
  showAccessDenied,
  showBanner,
} from './ui';

const DEFAULT_REFRESH_SECONDS = 10;
const FILTERS_KEY = 'radcloud.worklist.filters';

/** The status filter's choices: option value -> the statuses asked of the API. */
const STATUS_CHOICES: { value: string; label: string; statuses: ReadingStatus[] }[] = [
  { value: 'open', label: 'To read (unread + in progress)', statuses: ['unread', 'in_progress'] },
  { value: 'unread', label: 'Unread', statuses: ['unread'] },
  { value: 'in_progress', label: 'In progress', statuses: ['in_progress'] },
  { value: 'reported', label: 'Reported', statuses: ['reported'] },
  { value: 'all', label: 'All', statuses: ['unread', 'in_progress', 'reported'] },
];

const MODALITY_CHOICES: { value: string; label: string }[] = [
  { value: '', label: 'All modalities' },
  { value: 'CT', label: 'CT' },
  { value: 'MR', label: 'MR' },
  { value: 'DX', label: 'DX' },
  { value: 'CR', label: 'CR' },
];

const STATUS_TEXT: Record<ReadingStatus, string> = {
  unread: 'Unread',
  in_progress: 'In progress',
  reported: 'Reported',
};

interface SavedFilters {
  status: string;
  modality: string;
  q: string;
}

function loadSavedFilters(): SavedFilters {
  const fallback: SavedFilters = { status: 'open', modality: '', q: '' };
  try {
    const saved = JSON.parse(sessionStorage.getItem(FILTERS_KEY) ?? 'null') as SavedFilters | null;
    return saved ? { ...fallback, ...saved } : fallback;
  } catch {
    return fallback; // unreadable: start from the defaults
  }
}

function select(testId: string, label: string, choices: { value: string; label: string }[]) {
  return h('select', { 'data-testid': testId, 'aria-label': label },
    ...choices.map((choice) => h('option', { value: choice.value }, choice.label)));
}

/** The Worklist page in `main` for the signed-in user `me`. */
export class WorklistPageView {
  private readonly main: HTMLElement;
  private readonly me: Me;
  private readonly search: HTMLInputElement;
  private readonly statusFilter: HTMLSelectElement;
  private readonly modalityFilter: HTMLSelectElement;
  private readonly updated: HTMLElement;
  private readonly count: HTMLElement;
  private readonly body: HTMLTableSectionElement;
  private refreshSeconds = DEFAULT_REFRESH_SECONDS;
  private timer: number | undefined;
  private searchTimer: number | undefined;
  private generation = 0; // answers to superseded requests are dropped
  private opening = false;
  private showingRefreshError = false; // the banner holds a refresh failure (cleared by success)

  constructor(main: HTMLElement, me: Me) {
    this.main = main;
    this.me = me;
    this.search = h('input', {
      type: 'search',
      placeholder: 'Search patient name, ID, accession, description',
      'data-testid': 'worklist-search',
      'aria-label': 'Search',
    });
    this.statusFilter = select('filter-status', 'Status', STATUS_CHOICES);
    this.modalityFilter = select('filter-modality', 'Modality', MODALITY_CHOICES);
    this.updated = h('span', { class: 'muted', 'data-testid': 'worklist-updated' }, 'Loading…');
    this.count = h('span', { class: 'muted' });
    this.body = h('tbody');
  }

  async start(): Promise<void> {
    const saved = loadSavedFilters();
    this.search.value = saved.q;
    this.statusFilter.value = STATUS_CHOICES.some((c) => c.value === saved.status)
      ? saved.status
      : 'open';
    this.modalityFilter.value = saved.modality;
    this.render();
    try {
      const config = await getViewerConfig();
      this.refreshSeconds = Math.max(2, config.refresh_seconds || DEFAULT_REFRESH_SECONDS);
      const site = document.getElementById('site');
      if (site) {
        site.textContent = config.site;
      }
    } catch (error) {
      if (this.handleAuthError(error)) {
        return;
      }
      // the page still works without the site's settings: default refresh period
    }
    await this.refresh();
  }

  private render(): void {
    const refreshButton = h('button', { type: 'button', class: 'secondary' }, 'Refresh');
    refreshButton.addEventListener('click', () => void this.refresh());
    this.search.addEventListener('input', () => {
      window.clearTimeout(this.searchTimer);
      this.searchTimer = window.setTimeout(() => void this.refresh(), 300);
    });
    this.statusFilter.addEventListener('change', () => void this.refresh());
    this.modalityFilter.addEventListener('change', () => void this.refresh());
    const table = h('table', { class: 'worklist', 'data-testid': 'worklist' },
      h('thead', {},
        h('tr', {},
          ...['Priority', 'AI', 'Waiting', 'Patient', 'Modality', 'Description', 'Hospital',
            'Status', 'Claimed by', ''].map((title) => h('th', { scope: 'col' }, title)))),
      this.body);
    this.main.replaceChildren(
      h('section', { class: 'worklist-page' },
        h('div', { class: 'toolbar' },
          h('h1', {}, 'Worklist'),
          this.search, this.statusFilter, this.modalityFilter, refreshButton,
          h('span', { class: 'spacer' }), this.count, this.updated),
        h('div', { class: 'table-wrap' }, table)),
    );
  }

  private filters(): WorklistFilters {
    const choice = STATUS_CHOICES.find((c) => c.value === this.statusFilter.value)
      ?? STATUS_CHOICES[0];
    const saved: SavedFilters = {
      status: choice.value,
      modality: this.modalityFilter.value,
      q: this.search.value,
    };
    sessionStorage.setItem(FILTERS_KEY, JSON.stringify(saved));
    return { statuses: choice.statuses, modality: saved.modality, q: saved.q };
  }

  /** Load the list now and schedule the next load (filters are read afresh each time). */
  async refresh(): Promise<void> {
    window.clearTimeout(this.timer);
    const generation = ++this.generation;
    try {
      const page = await getWorklist(this.filters());
      if (generation !== this.generation) {
        return;
      }
      this.showRows(page);
      this.updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      this.updated.classList.remove('stale');
      if (this.showingRefreshError) {
        showBanner('');
        this.showingRefreshError = false;
      }
    } catch (error) {
      if (generation !== this.generation || this.handleAuthError(error)) {
        return;
      }
      this.updated.classList.add('stale');
      this.showingRefreshError = true;
      showBanner(`Worklist not updated: ${errorText(error)} (retrying every ` +
        `${this.refreshSeconds} s)`);
    }
    if (generation === this.generation) {
      this.timer = window.setTimeout(() => void this.refresh(), this.refreshSeconds * 1000);
    }
  }

  /** 401: sign in again; 403: the access-denied panel. True when handled (stop here). */
  private handleAuthError(error: unknown): boolean {
    if (error instanceof ApiError && error.unauthorized) {
      goToSignIn();
      return true;
    }
    if (error instanceof ApiError && error.forbidden) {
      window.clearTimeout(this.timer);
      this.generation++;
      showAccessDenied(this.main, error, this.me);
      return true;
    }
    return false;
  }

  /** A message that stays until the next one (a refresh does not clear it). */
  private notice(text: string): void {
    this.showingRefreshError = false;
    showBanner(text);
  }

  private showRows(page: WorklistPage): void {
    this.count.textContent = page.total > page.items.length
      ? `${page.items.length} of ${page.total} studies`
      : `${page.total} ${page.total === 1 ? 'study' : 'studies'}`;
    if (page.items.length === 0) {
      this.body.replaceChildren(
        h('tr', {}, h('td', { colspan: 10, class: 'empty' }, 'No studies match these filters.')));
      return;
    }
    this.body.replaceChildren(...page.items.map((row) => this.row(row)));
  }

  private row(row: WorklistRow): HTMLTableRowElement {
    const overdue = row.due_at !== null && Date.parse(row.due_at) < Date.now()
      && row.status !== 'reported';
    const open = h('button', { type: 'button', 'data-testid': 'open-study' }, this.openLabel(row));
    open.addEventListener('click', () => void this.open(row, open));
    const tr = h('tr', {
      class: ['worklist-row', row.critical ? 'critical' : '', `priority-${row.priority_class}`]
        .filter(Boolean).join(' '),
      'data-testid': 'worklist-row',
      'data-study-uid': row.study_instance_uid,
      'data-critical': String(row.critical),
      'data-status': row.status,
      'data-priority': row.priority_class,
    },
    h('td', {},
      h('span', { class: `badge priority ${row.priority_class}` }, row.priority_class.toUpperCase()),
      row.critical ? h('span', { class: 'badge ai-flag', title: 'AI flagged a critical finding' },
        '⚠ AI critical') : null),
    h('td', { class: 'ai' }, this.aiCell(row)),
    h('td', { class: overdue ? 'waiting overdue' : 'waiting',
      title: row.due_at ? `due ${new Date(row.due_at).toLocaleString()}` : '' },
    formatWaiting(row.waiting_minutes), overdue ? h('span', { class: 'overdue-tag' }, ' overdue')
      : null),
    h('td', { class: 'patient' },
      h('div', {}, formatPersonName(row.patient_name) || '—'),
      h('div', { class: 'muted' }, row.patient_id ?? '')),
    h('td', {}, (row.modalities ?? '').replaceAll('\\', ', ')),
    h('td', {},
      h('div', {}, row.study_description ?? ''),
      h('div', { class: 'muted' },
        [formatDicomDate(row.study_date), row.accession_number].filter(Boolean).join(' · '))),
    h('td', {}, row.hospital ?? ''),
    h('td', {}, h('span', { class: `badge status ${row.status}` }, STATUS_TEXT[row.status])),
    h('td', {}, row.claimed_by ?? ''),
    h('td', { class: 'actions' }, open));
    tr.addEventListener('dblclick', () => void this.open(row, open));
    return tr;
  }

  private aiCell(row: WorklistRow): Node {
    if (row.ai_status === 'pending') {
      return h('span', { class: 'ai-status pending' }, 'AI pending');
    }
    if (row.ai_status === 'failed') {
      return h('span', { class: 'ai-status failed', title: 'no AI result: read unaided' },
        'AI failed');
    }
    return h('span', {
      class: row.critical ? 'score critical' : 'score',
      title: scoreStatement(row.ai_score, row.ai_threshold, row.ai_calibrated),
    }, formatScore(row.ai_score));
  }

  private get isRadiologist(): boolean {
    return this.me.roles.includes('radiologist');
  }

  private openLabel(row: WorklistRow): string {
    if (row.status === 'reported') {
      return 'View report';
    }
    if (row.status === 'in_progress') {
      return row.claimed_by === this.me.name ? 'Continue' : 'View';
    }
    return this.isRadiologist ? 'Open' : 'View';
  }

  /** Claim an unread study (radiologists), then open it in the viewer. */
  private async open(row: WorklistRow, button: HTMLButtonElement): Promise<void> {
    if (this.opening) {
      return;
    }
    const uid = row.study_instance_uid;
    if (row.status === 'unread' && this.isRadiologist) {
      this.opening = true;
      button.disabled = true;
      try {
        await claimStudy(uid, row.version);
      } catch (error) {
        this.opening = false;
        button.disabled = false;
        if (this.handleAuthError(error)) {
          return;
        }
        const holder = error instanceof ApiError ? error.body?.claimed_by : undefined;
        if (error instanceof ApiError && error.conflict && holder !== this.me.name) {
          this.notice(typeof holder === 'string' && holder
            ? `${formatPersonName(row.patient_name) || uid} is already being read by ${holder}.`
            : `The study changed since the list was loaded: ${errorText(error)}`);
          void this.refresh();
          return;
        }
        if (!(error instanceof ApiError && error.conflict)) {
          this.notice(`Could not claim the study: ${errorText(error)}`);
          return;
        }
        // 409 but we hold it already (claimed in another tab): open it
      }
    }
    window.clearTimeout(this.timer);
    location.href = `viewer.html?study=${encodeURIComponent(uid)}`;
  }
}
