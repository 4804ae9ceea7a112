// The findings and report panel: the AI findings ("AI result — not verified" until signed) with
// confirm/reject, findings the radiologist adds (a marked slice and region), the report text and
// Sign (POST /api/studies/{uid}/sign), then the signed state.

import {
  ApiError,
  claimStudy,
  signReport,
  type AddedFinding,
  type Decision,
  type Finding,
  type Me,
  type ReadingState,
  type SignedReport,
  type ViewerManifest,
} from '../api';
import { errorText, h, scoreStatement } from '../ui';

const NOT_VERIFIED = 'AI result — not verified';

/** Where "add finding" marks: the current image and the region on it. */
export interface Mark {
  finding: AddedFinding;
  imageIndex: number;
}

export interface ReportPanelHooks {
  /** Show a finding's first slice. */
  goTo(finding: Finding): void;
  /** The current image and the last ROI drawn on it (else the whole image). */
  currentMark(label: string): Mark | null;
  /** The colour of a finding's overlay, when it has one on screen. */
  colourOf(finding: Finding): string | null;
  /** The reading state changed (claimed here before signing, or signed). */
  onReading(reading: ViewerManifest['reading']): void;
  /** The token was refused (401): sign in again. */
  signInAgain(): void;
}

export class ReportPanel {
  private readonly decisions = new Map<number, Decision>();
  private readonly added: Mark[] = [];
  private readonly list = h('ol', { class: 'findings' });
  private readonly addedList = h('ul', { class: 'added-findings' });
  private readonly labelInput: HTMLInputElement;
  private readonly addButton: HTMLButtonElement;
  private readonly text: HTMLTextAreaElement;
  private readonly signButton: HTMLButtonElement;
  private readonly status = h('p', { class: 'sign-status', 'data-testid': 'sign-status',
    role: 'status' });
  private readonly hint = h('p', { class: 'muted sign-hint' });
  private report: SignedReport | null;
  private reading: ViewerManifest['reading'];
  private signing = false;

  constructor(
    private readonly container: HTMLElement,
    private readonly manifest: ViewerManifest,
    private readonly me: Me,
    private readonly hooks: ReportPanelHooks,
  ) {
    this.report = manifest.report;
    this.reading = { ...manifest.reading };
    const labels = [...new Set(manifest.findings.map((finding) => finding.label))];
    this.labelInput = h('input', { type: 'text', list: 'finding-labels', 'aria-label': 'Label',
      'data-testid': 'add-finding-label', value: labels[0] ?? 'finding', maxlength: 64 });
    this.addButton = h('button', { type: 'button', class: 'secondary', 'data-testid': 'add-finding',
      title: 'Mark the current slice (the last rectangle ROI drawn on it, else the whole image)' },
    'Add finding');
    this.text = h('textarea', { 'data-testid': 'report-text', rows: 8,
      placeholder: 'Findings and impression…', 'aria-label': 'Report text' });
    this.signButton = h('button', { type: 'button', 'data-testid': 'sign-report' }, 'Sign report');
    this.render(labels);
    this.update();
  }

  private render(labels: string[]): void {
    this.addButton.addEventListener('click', () => this.addFinding());
    this.text.addEventListener('input', () => this.update());
    this.signButton.addEventListener('click', () => void this.sign());
    const count = this.manifest.findings.length;
    this.container.replaceChildren(
      h('h2', {}, 'AI findings', h('span', { class: 'muted' }, ` (${count})`)),
      count ? this.list : h('p', { class: 'muted' }, 'No AI findings for this study.'),
      h('h2', {}, 'Added findings'),
      this.addedList,
      h('div', { class: 'add-finding' },
        h('datalist', { id: 'finding-labels' }, ...labels.map((label) => h('option', { value: label }))),
        this.labelInput, this.addButton),
      h('h2', {}, 'Report'),
      this.text,
      h('div', { class: 'sign-row' }, this.signButton, this.hint),
      this.status,
    );
    this.renderFindings();
  }

  /** Redraw the AI finding list (decisions, verification, overlay colours). */
  renderFindings(): void {
    const signed = this.report !== null;
    const decided = new Map(this.report?.decisions.map((d) => [d.result_id, d.decision]) ?? []);
    this.list.replaceChildren(...this.manifest.findings.map((finding) => {
      const decision = signed ? decided.get(finding.result_id) : this.decisions.get(finding.result_id);
      const colour = this.hooks.colourOf(finding);
      const goTo = h('button', { type: 'button', class: 'link', 'data-testid': 'finding-goto' },
        finding.slices.length ? `Go to image ${finding.slices[0] + 1}` : 'Show series');
      goTo.addEventListener('click', () => this.hooks.goTo(finding));
      const confirm = this.decisionButton(finding, 'confirmed', 'Confirm', decision, signed);
      const reject = this.decisionButton(finding, 'rejected', 'Reject', decision, signed);
      const verification = signed
        ? `${decision === 'rejected' ? 'Rejected' : 'Confirmed'} by ${this.report!.signed_by}`
        : NOT_VERIFIED;
      return h('li', {
        class: ['finding', finding.critical ? 'critical' : '', decision ?? ''].filter(Boolean)
          .join(' '),
        'data-testid': 'finding',
        'data-result-id': finding.result_id,
        'data-decision': decision ?? null,
      },
      h('div', { class: 'finding-head' },
        h('span', { class: 'swatch', style: colour ? `background:${colour}` : null,
          title: colour ? 'overlay colour' : 'no overlay' }),
        h('strong', {}, finding.label),
        finding.critical ? h('span', { class: 'badge priority critical' }, 'CRITICAL') : null,
        h('span', { class: 'score', 'data-testid': 'finding-score' },
          scoreStatement(finding.score, finding.threshold, finding.calibrated))),
      h('div', { class: 'muted' }, `${finding.model_name} ${finding.model_version}`),
      h('div', { class: signed ? 'verification verified' : 'verification' }, verification),
      h('div', { class: 'finding-actions' }, goTo, confirm, reject));
    }));
  }

  private decisionButton(
    finding: Finding,
    value: Decision,
    label: string,
    current: Decision | undefined,
    signed: boolean,
  ): HTMLButtonElement {
    const button = h('button', {
      type: 'button',
      class: `decision ${value}`,
      'data-testid': value === 'confirmed' ? 'confirm-finding' : 'reject-finding',
      'aria-pressed': String(current === value),
      disabled: signed || !this.manifest.can_sign,
    }, label);
    button.addEventListener('click', () => {
      this.decisions.set(finding.result_id, value);
      this.renderFindings();
      this.update();
    });
    return button;
  }

  private addFinding(): void {
    const label = this.labelInput.value.trim();
    if (!label) {
      this.labelInput.focus();
      return;
    }
    const mark = this.hooks.currentMark(label);
    if (!mark) {
      return;
    }
    this.added.push(mark);
    this.renderAdded();
    this.update();
  }

  private renderAdded(): void {
    const signed = this.report !== null;
    const marks: { label: string; text: string; index: number | null }[] = signed
      ? this.report!.added.map((finding) => ({ label: finding.label, text: regionText(finding),
        index: null }))
      : this.added.map((mark) => ({ label: mark.finding.label, text: regionText(mark.finding),
        index: mark.imageIndex }));
    this.addedList.replaceChildren(...marks.map((mark, position) => {
      const remove = h('button', { type: 'button', class: 'link', title: 'Remove' }, 'Remove');
      remove.addEventListener('click', () => {
        this.added.splice(position, 1);
        this.renderAdded();
        this.update();
      });
      return h('li', { 'data-testid': 'added-finding' },
        h('strong', {}, mark.label), ' ',
        h('span', { class: 'muted' },
          `${mark.index === null ? '' : `image ${mark.index + 1}, `}${mark.text}`),
        signed ? null : remove);
    }));
    if (marks.length === 0) {
      this.addedList.replaceChildren(h('li', { class: 'muted' },
        signed || !this.manifest.can_sign ? 'None.'
          : 'None yet: draw an ROI (optional), then “Add finding”.'));
    }
  }

  /** Enable Sign only when it can succeed; say what is missing. */
  private update(): void {
    this.renderAdded();
    const signed = this.report !== null;
    const undecided = this.manifest.findings.filter((f) => !this.decisions.has(f.result_id));
    const missing: string[] = [];
    if (!this.manifest.can_sign) {
      missing.push('signing needs the radiologist role');
    } else if (!signed) {
      if (undecided.length) {
        missing.push(`confirm or reject ${undecided.length} AI finding${undecided.length > 1 ? 's' : ''}`);
      }
      if (!this.text.value.trim()) {
        missing.push('write the report');
      }
      const holder = this.reading.claimed_by;
      if (this.reading.status === 'in_progress' && holder && holder !== this.me.name) {
        missing.push(`${holder} is reading this study`);
      }
    }
    this.signButton.disabled = signed || this.signing || !this.manifest.can_sign
      || undecided.length > 0 || !this.text.value.trim();
    this.signButton.hidden = signed;
    this.hint.textContent = signed ? '' : missing.length ? `To sign: ${missing.join('; ')}.` : '';
    this.text.readOnly = signed || !this.manifest.can_sign;
    this.addButton.disabled = signed || !this.manifest.can_sign;
    this.labelInput.disabled = this.addButton.disabled;
    if (signed) {
      this.text.value = this.report!.text;
      const when = new Date(this.report!.signed_at).toLocaleString();
      this.status.textContent = `Signed by ${this.report!.signed_by} on ${when}.`;
      this.status.className = 'sign-status ok';
    }
  }

  /** The reading state changed elsewhere on the page (claim, release). */
  setReading(reading: ViewerManifest['reading']): void {
    this.reading = { ...reading };
    this.update();
  }

  private async sign(): Promise<void> {
    if (this.signing) {
      return;
    }
    this.signing = true;
    this.update();
    this.status.textContent = 'Signing…';
    this.status.className = 'sign-status';
    try {
      if (this.reading.status === 'unread') {
        // opened without claiming (a link): claim now, as the worklist's Open would have
        const state: ReadingState = await claimStudy(this.manifest.study_instance_uid,
          this.reading.version);
        this.reading = { status: state.status, claimed_by: state.claimed_by, version: state.version };
        this.hooks.onReading(this.reading);
      }
      const text = this.text.value.trim();
      const answer = await signReport(this.manifest.study_instance_uid, {
        version: this.reading.version,
        text,
        decisions: this.manifest.findings.map((finding) => ({
          result_id: finding.result_id,
          decision: this.decisions.get(finding.result_id)!,
        })),
        added: this.added.map((mark) => mark.finding),
      });
      this.report = {
        signed_by: this.me.name,
        signed_at: new Date().toISOString(),
        text,
        sr_sop_instance_uid: answer.sr_sop_instance_uid,
        decisions: [...this.decisions].map(([result_id, decision]) => ({ result_id, decision })),
        added: this.added.map((mark) => mark.finding),
      };
      this.reading = { status: answer.status, claimed_by: this.reading.claimed_by,
        version: answer.version };
      this.hooks.onReading(this.reading);
      this.signing = false;
      this.renderFindings();
      this.update();
      this.status.textContent += ` Stored as a DICOM SR; ${answer.labels} label` +
        `${answer.labels === 1 ? '' : 's'} kept for training.`;
    } catch (error) {
      this.signing = false;
      if (error instanceof ApiError && error.unauthorized) {
        this.hooks.signInAgain();
        return;
      }
      this.status.textContent = `Not signed: ${errorText(error)}`;
      this.status.className = 'sign-status error';
      this.update();
    }
  }
}

function regionText(finding: AddedFinding): string {
  const { x, y, width, height } = finding.region;
  return `region ${width}×${height} px at (${x}, ${y})`;
}
