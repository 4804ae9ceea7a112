// "Priors from other hospitals": beside a study of the reader's hospital, the same patient's
// other studies wherever they are held (this deployment's other tenants and remote nodes). The
// panel asks for a treatment context token of the study's patient (POST /api/auth/context-token,
// no reason: a patient the reader's hospitals have no record of is refused, and the panel says
// so plainly and offers nothing else, no break-glass), then GET /api/federated/studies with it.
// The answer is marked partial, naming each hospital that did not answer. Each row opens its
// study: one of the reader's own hospitals' in the reading viewer, another hospital's in the
// read-only viewer (the context token stays in sessionStorage, never in the URL).

import {
  ApiError,
  getFederatedStudies,
  requestTreatmentToken,
  type FederatedNode,
  type FederatedStudy,
  type Me,
} from '../api';
import { contextPatient, getContextToken, storeContextToken } from '../context';
import { errorText, formatDicomDate, h } from '../ui';

const NODE_STATE_TEXT: Record<string, string> = {
  timeout: 'did not answer in time',
  error: 'could not be reached',
  refused: 'refused the query',
};

/** The viewer page of `study` held by `hospital`: the reading viewer for one of `mine`. */
export function studyHref(study: FederatedStudy, mine: ReadonlySet<string>): string {
  const own = study.held_by.find((hospital) => mine.has(hospital));
  if (own !== undefined) {
    return `viewer.html?study=${encodeURIComponent(study.study_instance_uid)}`;
  }
  const hospital = study.held_by[0] ?? '';
  return `viewer.html?hospital=${encodeURIComponent(hospital)}` +
    `&study=${encodeURIComponent(study.study_instance_uid)}&federated=1`;
}

/** A treatment context token of `patient`: the stored one while valid, else a new one. */
export async function treatmentToken(patient: string): Promise<string> {
  const stored = getContextToken();
  if (stored && contextPatient() === patient) {
    return stored;
  }
  const answer = await requestTreatmentToken(patient);
  storeContextToken(answer.access_token, answer.expires_in, patient);
  return answer.access_token;
}

export class PriorsPanel {
  constructor(
    private readonly container: HTMLElement,
    private readonly studyUid: string,
    private readonly signInAgain: () => void,
  ) {}

  /** Ask for the patient's studies everywhere and list those other than this one. */
  async load(patientKey: string | null, me: Me | null): Promise<void> {
    this.container.hidden = false;
    const heading = h('h2', {}, 'Priors from other hospitals');
    if (!patientKey) {
      this.show(heading, this.note('priors-none',
        'This study names no patient identifier: priors cannot be looked up.'));
      return;
    }
    this.show(heading, this.note('priors-loading', 'Looking up this patient\'s studies…'));
    let token: string;
    try {
      token = await treatmentToken(patientKey);
    } catch (error) {
      if (error instanceof ApiError && error.unauthorized) {
        this.signInAgain();
        return;
      }
      const text = error instanceof ApiError && error.forbidden
        ? 'Not available: your hospital has no record of this patient, so their studies ' +
          `at other hospitals cannot be shown (${errorText(error)}).`
        : `Priors could not be looked up: ${errorText(error)}`;
      this.show(heading, this.note('priors-refused', text, 'error'));
      return;
    }
    try {
      const answer = await getFederatedStudies(token);
      const mine = new Set(me?.hospitals ?? []);
      const others = answer.studies
        .filter((study) => study.study_instance_uid !== this.studyUid)
        .sort((a, b) => (b.study_date ?? '').localeCompare(a.study_date ?? ''));
      const missing = answer.nodes.filter((node) => node.state !== 'ok');
      this.show(
        heading,
        answer.partial || missing.length ? this.partial(missing) : null,
        others.length
          ? h('ul', { class: 'priors-list' }, ...others.map((study) => this.row(study, mine)))
          : this.note('priors-empty', 'No other studies of this patient were found.'),
      );
    } catch (error) {
      if (error instanceof ApiError && error.unauthorized) {
        this.signInAgain();
        return;
      }
      this.show(heading, this.note('priors-error',
        `Priors could not be looked up: ${errorText(error)}`, 'error'));
    }
  }

  private row(study: FederatedStudy, mine: ReadonlySet<string>): HTMLElement {
    const held = study.held_by.join(', ');
    const modalities = study.modalities_in_study.join('/');
    const link = h('a', {
      class: 'prior-open',
      'data-testid': 'prior-open',
      href: studyHref(study, mine),
      title: `Open this study (held by ${held})`,
    }, study.study_description || 'Study without description');
    return h('li', {
      class: 'prior',
      'data-testid': 'prior',
      'data-study-uid': study.study_instance_uid,
      'data-held-by': held,
    },
    h('div', { class: 'prior-head' },
      h('strong', { 'data-testid': 'prior-hospital' }, held),
      h('span', { class: 'muted' }, formatDicomDate(study.study_date))),
    h('div', {}, h('span', { class: 'badge' }, modalities || '?'), ' ', link));
  }

  private partial(missing: FederatedNode[]): HTMLElement {
    const names = missing.map((node) =>
      `${node.hospital} (${NODE_STATE_TEXT[node.state] ?? node.state})`);
    const text = names.length
      ? `Partial list: ${names.join('; ')}.`
      : 'Partial list: some hospitals did not answer.';
    return h('p', { class: 'priors-partial', 'data-testid': 'priors-partial', role: 'status' },
      text);
  }

  private note(testId: string, text: string, kind: 'muted' | 'error' = 'muted'): HTMLElement {
    return h('p', { class: `priors-note ${kind}`, 'data-testid': testId }, text);
  }

  private show(...children: (Node | null)[]): void {
    this.container.replaceChildren(...children.filter((child): child is Node => child !== null));
  }
}
