// The Models page (ML engineers and admins, platform operators): every model's versions and
// stages from GET /api/models, the shadow comparison of GET /api/models/{name}/compare with its
// plots, and Promote / Roll back through the API's guard rails (a refusal lists its problems and
// offers to force the promotion with a written reason, which the API audits).

import {
  ApiError,
  type Arm,
  type ComparisonFigures,
  getModels,
  getShadowComparison,
  type Me,
  type ModelSummary,
  type ModelVersion,
  type PromotionAnswer,
  promoteModel,
  rollbackModel,
  type ShadowComparison,
  type Spread,
} from './api';
import { goToSignIn } from './auth';
import { ARM_CLASS, rocPlot, scatterPlot } from './plots';
import { errorText, h, showAccessDenied } from './ui';

const MODELS_DENIED = 'The Models page needs the ml_engineer or admin role of a platform operator.';

const ARMS: Arm[] = ['production', 'shadow'];

function figure(value: number | null | undefined, digits = 3): string {
  return value === null || value === undefined ? '–' : value.toFixed(digits);
}

function percent(value: number | null): string {
  return value === null ? '–' : `${(value * 100).toFixed(0)} %`;
}

function inputText(version: ModelVersion): string {
  const inputs = version.inputs;
  const spacing = inputs.spacing_mm ? ` @ ${inputs.spacing_mm.join('×')} mm` : '';
  return `${inputs.modality} ${inputs.body_part} ${inputs.shape.join('×')} (${inputs.axes})` +
    spacing;
}

function promotionText(done: PromotionAnswer, verb: string): string {
  const was = done.previous === null ? 'none before' : `was ${done.previous}`;
  const forced = done.forced ? `; forced past: ${done.overridden.join('; ')}` : '';
  const caught = done.caught_up ? `; ${done.caught_up} studies that arrived without a model queued`
    : '';
  return `${done.name}: ${verb} version ${done.version} is production (${was})${forced}${caught}.`;
}

/** The Models page in `main` for the signed-in user `me`. */
export class ModelsPageView {
  private readonly main: HTMLElement;
  private readonly me: Me;
  private readonly status: HTMLElement;
  private readonly list: HTMLElement;
  private busy = false;

  constructor(main: HTMLElement, me: Me) {
    this.main = main;
    this.me = me;
    this.status = h('p', { class: 'models-status', 'data-testid': 'models-status', role: 'status',
      'aria-live': 'polite' });
    this.list = h('div', { class: 'models-list' });
  }

  async start(): Promise<void> {
    const refresh = h('button', { type: 'button', class: 'secondary' }, 'Refresh');
    refresh.addEventListener('click', () => void this.load());
    this.main.className = '';
    this.main.replaceChildren(
      h('section', { class: 'models-page', 'data-testid': 'models-page' },
        h('div', { class: 'toolbar' }, h('h1', {}, 'Models'), refresh),
        this.status, this.list),
    );
    await this.load();
  }

  /** 401: sign in again; 403: the access-denied panel. True when handled (stop here). */
  private handleAuthError(error: unknown): boolean {
    if (error instanceof ApiError && error.unauthorized) {
      goToSignIn();
      return true;
    }
    if (error instanceof ApiError && error.forbidden) {
      showAccessDenied(this.main, error, this.me, MODELS_DENIED);
      return true;
    }
    return false;
  }

  private say(text: string, kind: 'ok' | 'error' = 'ok'): void {
    this.status.textContent = text;
    this.status.className = `models-status ${kind}`;
  }

  /** Load every model and its shadow comparison, and draw them. */
  async load(): Promise<void> {
    let models: ModelSummary[];
    try {
      models = await getModels();
    } catch (error) {
      if (!this.handleAuthError(error)) {
        this.say(`Cannot load the models: ${errorText(error)}`, 'error');
      }
      return;
    }
    const comparisons = await Promise.all(models.map(async (model) => {
      try {
        return await getShadowComparison(model.name);
      } catch (error) {
        return errorText(error);
      }
    }));
    if (models.length === 0) {
      this.list.replaceChildren(h('p', { class: 'muted' }, 'No model is registered.'));
      return;
    }
    this.list.replaceChildren(
      ...models.map((model, index) => this.modelSection(model, comparisons[index])));
  }

  private modelSection(model: ModelSummary, comparison: ShadowComparison | string): HTMLElement {
    const action = h('div', { class: 'model-action', 'data-testid': 'model-action' });
    action.hidden = true;
    const rollback = h('button', { type: 'button', class: 'secondary', 'data-testid': 'rollback' },
      'Roll back');
    rollback.disabled = model.production === null;
    rollback.addEventListener('click', () => this.confirmRollback(model, action));
    return h('section', { class: 'model', 'data-testid': 'model', 'data-model': model.name },
      h('div', { class: 'model-head' },
        h('h2', {}, model.name),
        h('span', { class: 'muted' }, model.task),
        h('span', { class: 'muted', 'data-testid': 'model-production' },
          model.production === null ? 'no production version'
            : `production: version ${model.production}`),
        model.shadow === null ? null
          : h('span', { class: 'muted' }, `shadow: version ${model.shadow}`),
        h('span', { class: 'spacer' }),
        rollback),
      this.versionsTable(model, action),
      action,
      this.comparisonPanel(model, comparison));
  }

  private versionsTable(model: ModelSummary, action: HTMLElement): HTMLTableElement {
    const rows = [...model.versions].reverse().map((version) => {
      const promote = h('button', { type: 'button', 'data-testid': 'promote' },
        `Promote v${version.version}`);
      promote.hidden = version.production;
      promote.addEventListener('click', () => this.confirmPromotion(model, version, action));
      return h('tr', {
        class: version.production ? 'model-version production' : 'model-version',
        'data-testid': 'model-version',
        'data-version': version.version,
        'data-stage': version.stage,
        'data-production': String(version.production),
        'data-shadow': String(version.shadow),
      },
      h('td', {}, String(version.version)),
      h('td', {},
        h('span', { class: `badge stage ${version.stage}`, 'data-testid': 'stage' }, version.stage),
        version.shadow ? h('span', { class: 'badge stage shadow', 'data-testid': 'shadow-mark' },
          'shadow') : null),
      h('td', {}, new Date(version.created).toLocaleString()),
      h('td', {}, figure(version.metrics.auc)),
      h('td', {}, figure(version.metrics.sensitivity)),
      h('td', {}, figure(version.metrics.specificity)),
      h('td', {}, figure(version.threshold, 2)),
      h('td', { class: 'muted', title: version.metrics.evaluated_on },
        version.metrics.evaluated_on || '–'),
      h('td', {}, inputText(version)),
      h('td', { class: 'actions' }, promote));
    });
    return h('table', { class: 'worklist models', 'data-testid': 'model-versions' },
      h('thead', {}, h('tr', {}, ...['Version', 'Stage', 'Created', 'AUC', 'Sensitivity',
        'Specificity', 'Threshold', 'Evaluated on', 'Input', ''].map(
        (title) => h('th', { scope: 'col' }, title)))),
      h('tbody', {}, ...rows));
  }

  // -- promote and roll back --------------------------------------------------------------------

  /** Ask in `action` before running `act` (Confirm / Cancel). */
  private confirm(action: HTMLElement, question: string, verb: string, act: () => Promise<void>) {
    const yes = h('button', { type: 'button', 'data-testid': 'confirm-action' }, verb);
    const no = h('button', { type: 'button', class: 'secondary', 'data-testid': 'cancel-action' },
      'Cancel');
    yes.addEventListener('click', () => void this.run(action, [yes, no], act));
    no.addEventListener('click', () => {
      action.hidden = true;
    });
    action.replaceChildren(h('p', { 'data-testid': 'confirm-question' }, question), yes, no);
    action.hidden = false;
  }

  /** Run a change once at a time, its buttons disabled meanwhile. */
  private async run(action: HTMLElement, buttons: HTMLButtonElement[], act: () => Promise<void>) {
    if (this.busy) {
      return;
    }
    this.busy = true;
    buttons.forEach((button) => {
      button.disabled = true;
    });
    try {
      await act();
    } catch (error) {
      if (!this.handleAuthError(error)) {
        action.hidden = true;
        this.say(errorText(error), 'error');
      }
    } finally {
      this.busy = false;
      buttons.forEach((button) => {
        button.disabled = false;
      });
    }
  }

  private confirmPromotion(model: ModelSummary, version: ModelVersion, action: HTMLElement): void {
    const current = model.production === null ? 'none is' : `version ${model.production} is`;
    this.confirm(action,
      `Promote version ${version.version} of ${model.name} to production? It serves every ` +
      `hospital's new studies at once (now ${current} production).`,
      'Promote', async () => {
        try {
          const done = await promoteModel(model.name, version.version);
          await this.changed(action, promotionText(done, 'promoted:'));
        } catch (error) {
          const problems = error instanceof ApiError && error.conflict ? error.body?.problems
            : undefined;
          if (!Array.isArray(problems)) {
            throw error;
          }
          this.offerForce(model, version, problems.map(String), action);
        }
      });
  }

  /** A guard rail refused: its problems, and a forced promotion with a written reason. */
  private offerForce(
    model: ModelSummary,
    version: ModelVersion,
    problems: string[],
    action: HTMLElement,
  ): void {
    const reason = h('textarea', {
      rows: 2, maxlength: 2000, required: true, 'data-testid': 'force-reason',
      'aria-label': 'Reason for forcing the promotion',
      placeholder: 'Why promote despite these problems (kept in the audit trail)',
    });
    const force = h('button', { type: 'button', class: 'danger', 'data-testid': 'force-promote' },
      `Force promotion of v${version.version}`);
    const cancel = h('button', { type: 'button', class: 'secondary',
      'data-testid': 'cancel-action' }, 'Cancel');
    force.disabled = true;
    reason.addEventListener('input', () => {
      force.disabled = !reason.value.trim();
    });
    cancel.addEventListener('click', () => {
      action.hidden = true;
    });
    force.addEventListener('click', () => void this.run(action, [force, cancel], async () => {
      const done = await promoteModel(model.name, version.version, true, reason.value.trim());
      await this.changed(action, promotionText(done, 'forced:'));
    }));
    action.replaceChildren(
      h('p', { class: 'refused' },
        `The guard rails refused version ${version.version} of ${model.name}:`),
      h('ul', { class: 'problems', 'data-testid': 'promotion-problems' },
        ...problems.map((problem) => h('li', { 'data-testid': 'promotion-problem' }, problem))),
      reason,
      h('div', { class: 'action-buttons' }, force, cancel),
    );
    action.hidden = false;
  }

  private confirmRollback(model: ModelSummary, action: HTMLElement): void {
    this.confirm(action,
      `Roll ${model.name} back from version ${model.production ?? '–'} to the production ` +
      'version before it? It serves every hospital\'s new studies at once.',
      'Roll back', async () => {
        const done = await rollbackModel(model.name);
        await this.changed(action, promotionText(done, 'rolled back:'));
      });
  }

  /** A change went through: say so, and show the models as they are now. */
  private async changed(action: HTMLElement, text: string): Promise<void> {
    action.hidden = true;
    this.say(text);
    await this.load();
  }

  // -- the shadow comparison -------------------------------------------------------------------

  private comparisonPanel(model: ModelSummary, comparison: ShadowComparison | string): HTMLElement {
    const panel = h('div', { class: 'comparison', 'data-testid': 'shadow-comparison' },
      h('h3', {}, 'Shadow comparison'));
    if (typeof comparison === 'string') {
      panel.append(h('p', { class: 'error' }, `Cannot load the comparison: ${comparison}`));
      return panel;
    }
    if (comparison.studies === 0) {
      const why = model.shadow === null ? 'no version has run in shadow'
        : `version ${model.shadow} runs in shadow; no study has both results yet`;
      panel.append(h('p', { class: 'muted', 'data-testid': 'no-comparison' },
        `Nothing to compare: ${why}` +
        (comparison.failed || comparison.shed
          ? ` (${comparison.failed} failed, ${comparison.shed} shed).` : '.')));
      return panel;
    }
    const agreement = comparison.agreement;
    panel.append(
      h('p', { 'data-testid': 'comparison-summary' },
        `Shadow version ${comparison.versions.join(', ')} against production ` +
        `${comparison.production_versions.join(', ')} on `,
        h('strong', { 'data-testid': 'comparison-studies' }, String(comparison.studies)),
        ` studies (${comparison.failed} shadow failures, ${comparison.shed} shed). Agreement `,
        h('strong', { 'data-testid': 'comparison-agreement' }, percent(agreement.fraction)),
        `: both positive ${agreement.both_positive}, both negative ${agreement.both_negative}, ` +
        `only shadow ${agreement.only_shadow}, only production ${agreement.only_production}` +
        (comparison.mask_dice_mean === null ? '.'
          : `; mask Dice ${figure(comparison.mask_dice_mean)}.`)),
      this.figuresTable(comparison),
      this.costsTable(comparison),
    );
    const plots = h('div', { class: 'plots' });
    const truths = Object.entries(comparison.roc ?? {});
    for (const [truth, curves] of truths) {
      plots.append(h('figure', {}, rocPlot(truth, curves),
        h('figcaption', {}, `ROC against ${truth} truth: `, ...legend())));
    }
    if (truths.length === 0) {
      plots.append(h('p', { class: 'muted', 'data-testid': 'roc-missing' },
        'No ROC curve yet: no truth knows both a positive and a negative study of these ' +
        '(radiologists\' signed reports give one).'));
    }
    plots.append(h('figure', {}, scatterPlot(comparison.pairs ?? []),
      h('figcaption', {}, 'Score per study; ',
        h('span', { class: 'pair-key disagree' }, '●'), ' the calls differ')));
    panel.append(plots);
    return panel;
  }

  private figuresTable(comparison: ShadowComparison): HTMLTableElement {
    const rows: HTMLTableRowElement[] = [];
    for (const [truth, arms] of Object.entries(comparison.truths)) {
      for (const arm of ARMS) {
        const figures: ComparisonFigures | undefined = arms[arm];
        if (!figures) {
          continue;
        }
        rows.push(h('tr', { 'data-testid': 'comparison-figures', 'data-truth': truth,
          'data-arm': arm },
        h('td', {}, truth), h('td', {}, h('span', { class: ARM_CLASS[arm] }, arm)),
        h('td', {}, String(figures.studies)), h('td', {}, String(figures.positives)),
        h('td', { 'data-testid': 'figure-auc' }, figure(figures.auc)),
        h('td', {}, figure(figures.sensitivity)), h('td', {}, figure(figures.specificity))));
      }
    }
    return h('table', { class: 'worklist figures' },
      h('thead', {}, h('tr', {}, ...['Truth', 'Version', 'Studies', 'Positive', 'AUC',
        'Sensitivity', 'Specificity'].map((title) => h('th', { scope: 'col' }, title)))),
      h('tbody', {}, ...rows));
  }

  private costsTable(comparison: ShadowComparison): HTMLTableElement {
    const row = (what: string, arm: Arm, spread: Spread): HTMLTableRowElement =>
      h('tr', { 'data-testid': 'comparison-cost', 'data-arm': arm },
        h('td', {}, what), h('td', {}, h('span', { class: ARM_CLASS[arm] }, arm)),
        h('td', {}, figure(spread.p50, 1)), h('td', {}, figure(spread.p95, 1)),
        h('td', {}, figure(spread.mean, 1)));
    return h('table', { class: 'worklist figures' },
      h('thead', {}, h('tr', {}, ...['Per study', 'Version', 'p50', 'p95', 'mean'].map(
        (title) => h('th', { scope: 'col' }, title)))),
      h('tbody', {},
        ...ARMS.map((arm) => row('latency ms', arm, comparison.latency_ms[arm])),
        ...ARMS.map((arm) => row('worker CPU ms', arm, comparison.cpu_ms[arm]))));
  }
}

/** "— production, - - shadow" in the curves' colours and dashes. */
function legend(): (Node | string)[] {
  return ARMS.flatMap((arm, index) => [
    ...(index ? [', '] : []),
    h('span', { class: `legend ${ARM_CLASS[arm]}` }, `${arm === 'shadow' ? '- -' : '—'} ${arm}`),
  ]);
}
