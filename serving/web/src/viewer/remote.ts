// The read-only viewer of a study another hospital holds
// (/app/viewer.html?hospital=H&study=UID&federated=1): its series from the federated QIDO-RS,
// images through Cornerstone's WADO-RS loader against radcloud's federated base for hospital H,
// every request with the patient's treatment context token (kept in sessionStorage by the
// priors panel, renewed here from the patient key stored with it). The header names the
// holding hospital ("Held by H: read-only"); there are no findings, decisions, report, sign or
// claim controls: reading and signing happen at the hospital that holds the study.

import { eventTarget, Enums, type Types } from '@cornerstonejs/core';
import { utilities as toolUtilities } from '@cornerstonejs/tools';

import {
  ApiError,
  federatedDicomWeb,
  getMe,
  getSeriesMetadata,
  getViewerConfig,
  searchForSeries,
  type DicomJson,
  type DicomWebSource,
  type ManifestSeries,
  type Me,
} from '../api';
import { getToken, goToSignIn } from '../auth';
import { clearContextToken, contextPatient, getContextToken } from '../context';
import {
  byId,
  errorText,
  formatDicomDate,
  formatPersonName,
  h,
  renderUserBar,
  showAccessDenied,
  showBanner,
} from '../ui';
import { FALLBACK_PRESETS, renderPresets, renderToolButtons } from './controls';
import { initCornerstone, loadSeriesMetadata, seriesImageIds } from './cornerstone';
import { treatmentToken } from './priors';
import { SeriesBrowser } from './series';
import { StackView, type WindowLevel } from './stack';
import { ViewerTools } from './tools';

// DICOM JSON tags (PS3.18 F.2) the viewer reads.
const TAG = {
  SOPInstanceUID: '00080018',
  StudyDate: '00080020',
  Modality: '00080060',
  StudyDescription: '00081030',
  SeriesDescription: '0008103E',
  PatientName: '00100010',
  PatientID: '00100020',
  SeriesInstanceUID: '0020000E',
  SeriesNumber: '00200011',
  InstanceNumber: '00200013',
  ImagePositionPatient: '00200032',
  ImageOrientationPatient: '00200037',
  Rows: '00280010',
} as const;

/** Series that hold no images to scroll through (PS3.3 C.7.3.1.1.1 Modality). */
const NON_IMAGE_MODALITIES = new Set(['SEG', 'SR', 'KO', 'PR', 'RTSTRUCT', 'RTPLAN', 'DOC']);

function first(dataset: DicomJson | undefined, tag: string): unknown {
  return dataset?.[tag]?.Value?.[0];
}

function text(dataset: DicomJson | undefined, tag: string): string | null {
  const value = first(dataset, tag);
  if (value && typeof value === 'object' && 'Alphabetic' in value) {
    return String((value as { Alphabetic: unknown }).Alphabetic); // PN
  }
  return value === undefined || value === null ? null : String(value);
}

function numberOf(dataset: DicomJson | undefined, tag: string): number | null {
  const value = Number(first(dataset, tag));
  return Number.isFinite(value) ? value : null;
}

/** Position along the slice normal (CT/MR), else null. */
function along(dataset: DicomJson): number | null {
  const position = dataset[TAG.ImagePositionPatient]?.Value?.map(Number);
  const orientation = dataset[TAG.ImageOrientationPatient]?.Value?.map(Number);
  if (position?.length !== 3 || orientation?.length !== 6) {
    return null;
  }
  const [a, b, c, d, e, f] = orientation as [number, number, number, number, number, number];
  const normal = [b * f - c * e, c * d - a * f, a * e - b * d];
  return position.reduce((sum, value, axis) => sum + value * (normal[axis] ?? 0), 0);
}

/** The series' image instances in display order (along the normal, else Instance Number). */
export function seriesFromMetadata(series: DicomJson, datasets: DicomJson[]): ManifestSeries {
  const images = datasets.filter((dataset) => first(dataset, TAG.Rows) !== undefined);
  const keyed = images.map((dataset) => ({
    dataset,
    position: along(dataset),
    number: numberOf(dataset, TAG.InstanceNumber),
  }));
  const byPosition = keyed.every((entry) => entry.position !== null);
  keyed.sort((x, y) => byPosition
    ? (x.position ?? 0) - (y.position ?? 0)
    : (x.number ?? 0) - (y.number ?? 0));
  return {
    series_instance_uid: text(series, TAG.SeriesInstanceUID) ?? '',
    modality: text(series, TAG.Modality),
    series_description: text(series, TAG.SeriesDescription),
    series_number: numberOf(series, TAG.SeriesNumber),
    instances: keyed.map(({ dataset, number }) => ({
      sop_instance_uid: text(dataset, TAG.SOPInstanceUID) ?? '',
      instance_number: number,
    })),
  };
}

export class RemoteViewerPage {
  private readonly main = byId('main');
  private readonly element = byId<HTMLDivElement>('viewport');
  private readonly source: DicomWebSource;
  private readonly stack: StackView;
  private readonly tools: ViewerTools;
  private browser: SeriesBrowser | null = null;
  private series: ManifestSeries | null = null;
  private me: Me | null = null;
  private switching = Promise.resolve();

  constructor(private readonly hospital: string, private readonly studyUid: string) {
    this.source = federatedDicomWeb(hospital);
    initCornerstone(this.source);
    this.stack = new StackView(this.element);
    this.tools = new ViewerTools();
    // loaded once an image of a series is drawn (an empty viewport renders too, on resize)
    this.stack.onRender(() => {
      if (this.series && this.stack.imageIds.length && this.element.dataset.loaded !== 'true') {
        performance.mark('radcloud:first-image');
        this.element.dataset.loaded = 'true';
        this.showWindowLevel(this.stack.windowLevel());
      }
    });
    this.stack.onImage((index) => this.showSlice(index));
    this.stack.onWindowLevel((wl) => this.showWindowLevel(wl));
    this.stack.bindKeys();
    renderToolButtons(byId('tools'), this.tools, this.stack);
    this.renderReadOnly();
    eventTarget.addEventListener(Enums.Events.IMAGE_LOAD_FAILED, ((
      event: Types.EventTypes.ImageLoadedFailedEvent,
    ) => {
      showBanner(`An image could not be loaded from ${this.hospital}: ` +
        errorText(event.detail.error));
    }) as EventListener);
  }

  async open(): Promise<void> {
    const meLoad = getMe();
    const configLoad = getViewerConfig();
    meLoad.catch(() => undefined);
    configLoad.catch(() => undefined);
    try {
      this.me = await meLoad;
    } catch (error) {
      if (error instanceof ApiError && error.unauthorized) {
        goToSignIn();
      } else {
        this.fail(error, 'Your account could not be loaded');
      }
      return;
    }
    renderUserBar(byId('user-bar'), this.me);
    const config = await configLoad.catch(() => null);
    renderPresets(byId('presets'), config?.presets ?? FALLBACK_PRESETS, this.stack);

    if (!(await this.ensureContext())) {
      return;
    }
    let series: ManifestSeries[];
    let firstDataset: DicomJson | undefined;
    try {
      const found = (await searchForSeries(this.source, this.studyUid)).filter((entry) =>
        !NON_IMAGE_MODALITIES.has(text(entry, TAG.Modality) ?? ''));
      found.sort((x, y) =>
        (numberOf(x, TAG.SeriesNumber) ?? 0) - (numberOf(y, TAG.SeriesNumber) ?? 0));
      const loaded = await Promise.all(found.map(async (entry) => {
        const uid = text(entry, TAG.SeriesInstanceUID) ?? '';
        const datasets = await getSeriesMetadata(this.source, this.studyUid, uid);
        const viewer = seriesFromMetadata(entry, datasets);
        await loadSeriesMetadata(this.source, this.studyUid, viewer, datasets);
        firstDataset ??= datasets[0];
        return viewer;
      }));
      series = loaded.filter((entry) => entry.instances.length > 0);
    } catch (error) {
      this.fail(error, `The study could not be opened from ${this.hospital}`);
      return;
    }
    this.renderStudyHeader(firstDataset);
    this.browser = new SeriesBrowser(byId('series-browser'), this.studyUid,
      (chosen) => void this.switchSeries(chosen), this.source);
    this.browser.render(series, new Map());
    const shown = series[0];
    if (!shown) {
      showBanner(`This study at ${this.hospital} has no image series to show.`);
      return;
    }
    await this.switchSeries(shown);
  }

  /** A valid context token of the patient: the stored one, or renewed for the patient it was
   * bound to; false (and said on the page) when there is none to renew. */
  private async ensureContext(): Promise<boolean> {
    if (getContextToken()) {
      return true;
    }
    const patient = contextPatient();
    if (!patient) {
      showBanner('No patient context: open this study from the "Priors from other hospitals" ' +
        'list of a study of the same patient.');
      return false;
    }
    try {
      await treatmentToken(patient);
      return true;
    } catch (error) {
      clearContextToken();
      this.fail(error, 'The patient context could not be renewed');
      return false;
    }
  }

  private switchSeries(series: ManifestSeries): Promise<void> {
    this.switching = this.switching
      .then(() => this.showSeries(series))
      .catch((error: unknown) => showBanner(`The series could not be shown: ${errorText(error)}`));
    return this.switching;
  }

  private async showSeries(series: ManifestSeries): Promise<void> {
    if (this.series?.series_instance_uid === series.series_instance_uid) {
      return;
    }
    await this.ensureContext();
    const imageIds = seriesImageIds(this.source, this.studyUid, series);
    this.series = series;
    this.browser?.select(series.series_instance_uid);
    // a prior is glanced at: a CT or MR opens at its middle slice
    await this.stack.showStack(imageIds, Math.floor(imageIds.length / 2));
    this.showSlice(this.stack.currentIndex);
    toolUtilities.stackPrefetch.enable(this.element);
  }

  // -- page furniture ----------------------------------------------------------------------------

  /** The holding hospital in the header; no AI overlay, findings, report or sign controls. */
  private renderReadOnly(): void {
    document.title = `radcloud · ${this.hospital} (read-only)`;
    byId('reading-state').replaceChildren(
      h('span', { class: 'badge held-by', 'data-testid': 'held-by' },
        `Held by ${this.hospital}: read-only`));
    document.querySelector('.overlay-controls')?.remove();
    byId('report-panel').replaceChildren(
      h('section', { class: 'read-only-note', 'data-testid': 'read-only-note' },
        h('h2', {}, 'Read-only'),
        h('p', {}, `This study is held by ${this.hospital}. It is shown for this patient's ` +
          'care; it is read and reported there, not here.'),
        h('p', { class: 'muted' }, 'Every image opened is recorded in the audit trails of ' +
          'both hospitals.')));
  }

  private renderStudyHeader(dataset: DicomJson | undefined): void {
    const patient = formatPersonName(text(dataset, TAG.PatientName)) || 'Unnamed patient';
    const patientId = text(dataset, TAG.PatientID);
    const date = formatDicomDate(text(dataset, TAG.StudyDate));
    const description = text(dataset, TAG.StudyDescription) ?? '';
    byId('study-info').replaceChildren(
      h('strong', {}, patient),
      h('span', { class: 'muted' }, patientId ? ` ID ${patientId} at ${this.hospital}` : ''),
      h('span', {}, ` · ${description}`),
      h('span', { class: 'muted' }, ` · ${[date, this.hospital].filter(Boolean).join(' · ')}`),
    );
    byId('corner-patient').replaceChildren(
      h('div', {}, patient),
      h('div', {}, patientId ?? ''),
      h('div', {}, `${date} ${description}`),
      h('div', {}, this.hospital),
    );
  }

  private showSlice(index: number): void {
    const count = this.stack.imageIds.length;
    byId('corner-slice').textContent = count ? `Im ${index + 1} / ${count}` : '';
    const series = this.series;
    byId('corner-series').textContent = series
      ? `${series.modality ?? ''} ${series.series_description ?? ''}`.trim() : '';
  }

  private showWindowLevel(wl: WindowLevel | null): void {
    byId('corner-wl').textContent = wl
      ? `W ${Math.round(wl.window)} L ${Math.round(wl.level)}` : '';
  }

  /** 401 of the user's token: sign in again; 403: access denied; 404: not found there. */
  private fail(error: unknown, what: string): void {
    if (error instanceof ApiError && error.unauthorized && !getToken()) {
      goToSignIn();
    } else if (error instanceof ApiError && error.unauthorized) {
      clearContextToken();
      showBanner(`${what}: the patient context has lapsed; open the study again from the ` +
        'priors list.');
    } else if (error instanceof ApiError && error.forbidden) {
      showAccessDenied(this.main, error, this.me);
    } else if (error instanceof ApiError && error.status === 404) {
      showBanner(`${what}: ${this.hospital} holds no such study of this patient.`);
    } else {
      showBanner(`${what}: ${errorText(error)}`);
    }
  }
}
