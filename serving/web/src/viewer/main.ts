// The viewer page (/app/viewer.html?study=UID): loads the study's viewer manifest, shows the
// first image as soon as it can (metadata of one series, then its first image; the rest streams
// in), and wires the series browser, tools, W/L presets, AI overlay and the report panel.

import '../styles.css';

import { eventTarget, Enums, metaData, type Types } from '@cornerstonejs/core';
import { utilities as toolUtilities } from '@cornerstonejs/tools';

import {
  ApiError,
  getMe,
  getViewerConfig,
  getViewerManifest,
  LOCAL_DICOMWEB,
  releaseStudy,
  type Finding,
  type ManifestSeries,
  type Me,
  type ViewerConfig,
  type ViewerManifest,
} from '../api';
import { getToken, goToSignIn } from '../auth';
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
import { initCornerstone, loadSeriesMetadata, seriesImageIds } from './cornerstone';
import { AiOverlay } from './overlay';
import { PriorsPanel } from './priors';
import { RemoteViewerPage } from './remote';
import { ReportPanel, type Mark } from './report';
import { SeriesBrowser } from './series';
import { FALLBACK_PRESETS, renderPresets, renderToolButtons } from './controls';
import { StackView, type WindowLevel } from './stack';
import { ViewerTools } from './tools';

// The viewer starts loading the study (docs/reading-app.md; read by benchmarks/viewer.py).
performance.mark('radcloud:open');

const STATUS_TEXT = { unread: 'Unread', in_progress: 'In progress', reported: 'Reported' };

class ViewerPage {
  private readonly main = byId('main');
  private readonly element = byId<HTMLDivElement>('viewport');
  private readonly stack: StackView;
  private readonly tools: ViewerTools;
  private readonly overlay: AiOverlay;
  private manifest: ViewerManifest | null = null;
  private me: Me | null = null;
  private series: ManifestSeries | null = null;
  private report: ReportPanel | null = null;
  private browser: SeriesBrowser | null = null;
  private switching = Promise.resolve();

  constructor(private readonly studyUid: string) {
    initCornerstone();
    this.stack = new StackView(this.element);
    this.tools = new ViewerTools();
    this.overlay = new AiOverlay(studyUid);
    this.stack.firstRender().then(() => {
      performance.mark('radcloud:first-image');
      this.element.dataset.loaded = 'true';
      this.showWindowLevel(this.stack.windowLevel());
    });
    this.stack.onImage((index) => this.showSlice(index));
    this.stack.onWindowLevel((wl) => this.showWindowLevel(wl));
    this.stack.bindKeys();
    this.bindToolbar();
    eventTarget.addEventListener(Enums.Events.IMAGE_LOAD_FAILED, ((
      event: Types.EventTypes.ImageLoadedFailedEvent,
    ) => {
      if (!getToken()) {
        goToSignIn();
        return;
      }
      showBanner(`An image could not be loaded: ${errorText(event.detail.error)}`);
    }) as EventListener);
  }

  async open(): Promise<void> {
    const meLoad = getMe();
    const configLoad = getViewerConfig();
    // awaited below, or not at all when the manifest fails: never an unhandled rejection
    meLoad.catch(() => undefined);
    configLoad.catch(() => undefined);
    let manifest: ViewerManifest;
    try {
      manifest = await getViewerManifest(this.studyUid);
    } catch (error) {
      this.me = await meLoad.catch(() => null);
      if (this.me) {
        renderUserBar(byId('user-bar'), this.me);
      }
      this.fail(error, 'The study could not be opened');
      return;
    }
    this.manifest = manifest;
    this.renderStudyHeader(manifest);
    const first = this.initialSeries(manifest);
    const firstShown = first
      ? this.showSeries(first.series, first.index)
      : Promise.reject(new Error('this study has no image series to show'));
    firstShown.catch((error: unknown) => this.fail(error, 'The images could not be shown'));

    let config: ViewerConfig | null = null;
    try {
      this.me = await meLoad;
      config = await configLoad.catch((error: unknown) => {
        if (error instanceof ApiError && (error.unauthorized || error.forbidden)) {
          throw error;
        }
        return null; // the viewer works with the default presets
      });
    } catch (error) {
      this.fail(error, 'Your account could not be loaded');
      return;
    }
    renderUserBar(byId('user-bar'), this.me);
    renderPresets(byId('presets'), config?.presets ?? FALLBACK_PRESETS, this.stack);
    this.browser = new SeriesBrowser(byId('series-browser'), this.studyUid,
      (series) => void this.switchSeries(series, 0));
    const perSeries = new Map<string, number>();
    for (const finding of manifest.findings) {
      perSeries.set(finding.series_instance_uid,
        (perSeries.get(finding.series_instance_uid) ?? 0) + 1);
    }
    this.browser.render(manifest.series, perSeries);
    if (this.series) {
      this.browser.select(this.series.series_instance_uid);
    }
    this.report = new ReportPanel(byId('report-panel'), manifest, this.me, {
      goTo: (finding) => void this.goToFinding(finding),
      currentMark: (label) => this.currentMark(label),
      colourOf: (finding) => this.overlay.colourOf(finding.result_id),
      onReading: (reading) => {
        manifest.reading = { ...reading };
        this.renderReading();
      },
      signInAgain: goToSignIn,
    });
    this.renderReading();
    void new PriorsPanel(byId('priors-panel'), this.studyUid, goToSignIn)
      .load(manifest.patient_key, this.me);
  }

  /** The series of the first finding at its first slice, else the first series' first image. */
  private initialSeries(manifest: ViewerManifest): { series: ManifestSeries; index: number } | null {
    const withImages = manifest.series.filter((series) => series.instances.length > 0);
    const finding = manifest.findings.find((f) =>
      withImages.some((series) => series.series_instance_uid === f.series_instance_uid));
    const series = finding
      ? withImages.find((s) => s.series_instance_uid === finding.series_instance_uid)
      : withImages[0];
    return series ? { series, index: 0 } : null;
  }

  /** Show `series` at `index` (one switch at a time, in the order asked). */
  private switchSeries(series: ManifestSeries, index: number): Promise<void> {
    this.switching = this.switching
      .then(() => this.showSeries(series, index))
      .catch((error: unknown) => showBanner(`The series could not be shown: ${errorText(error)}`));
    return this.switching;
  }

  private async showSeries(series: ManifestSeries, index: number): Promise<void> {
    if (this.series?.series_instance_uid === series.series_instance_uid) {
      await this.stack.goTo(index);
      return;
    }
    await loadSeriesMetadata(LOCAL_DICOMWEB, this.studyUid, series);
    const imageIds = seriesImageIds(LOCAL_DICOMWEB, this.studyUid, series);
    this.series = series;
    this.browser?.select(series.series_instance_uid);
    await this.stack.showStack(imageIds, index);
    this.showSlice(this.stack.currentIndex);
    toolUtilities.stackPrefetch.enable(this.element);
    const findings = this.manifest?.findings ?? [];
    this.overlay.show(series.series_instance_uid, imageIds, findings)
      .then(() => {
        this.report?.renderFindings();
        this.renderOverlayState();
        const failures = this.overlay.takeFailures();
        if (failures.length) {
          showBanner(`Some AI masks could not be shown: ${failures.join('; ')}`);
        }
      })
      .catch((error: unknown) => showBanner(`AI overlay not shown: ${errorText(error)}`));
  }

  private async goToFinding(finding: Finding): Promise<void> {
    const series = this.manifest?.series.find((s) =>
      s.series_instance_uid === finding.series_instance_uid);
    if (!series) {
      showBanner(`The series of finding "${finding.label}" is not in this study's image series.`);
      return;
    }
    await this.switchSeries(series, finding.slices[0] ?? 0);
  }

  private currentMark(label: string): Mark | null {
    if (!this.series) {
      return null;
    }
    const imageIndex = this.stack.currentIndex;
    const instance = this.series.instances[imageIndex];
    const imageId = this.stack.currentImageId;
    const pixels = metaData.get('imagePixelModule', imageId) as
      { rows?: number; columns?: number } | undefined;
    const region = this.tools.roiOn(imageId) ?? {
      x: 0, y: 0, width: pixels?.columns ?? 0, height: pixels?.rows ?? 0,
    };
    return {
      imageIndex,
      finding: {
        label,
        series_instance_uid: this.series.series_instance_uid,
        sop_instance_uid: instance.sop_instance_uid,
        region,
      },
    };
  }

  // -- page furniture ----------------------------------------------------------------------------

  private renderStudyHeader(manifest: ViewerManifest): void {
    const patient = formatPersonName(manifest.patient_name) || 'Unnamed patient';
    byId('study-info').replaceChildren(
      h('strong', {}, patient),
      h('span', { class: 'muted' }, manifest.patient_id ? ` ID ${manifest.patient_id}` : ''),
      h('span', {}, ` · ${manifest.study_description ?? ''}`),
      h('span', { class: 'muted' },
        ` · ${[formatDicomDate(manifest.study_date), manifest.modalities, manifest.hospital]
          .filter(Boolean).join(' · ')}`),
    );
    byId('corner-patient').replaceChildren(
      h('div', {}, patient),
      h('div', {}, manifest.patient_id ?? ''),
      h('div', {}, `${formatDicomDate(manifest.study_date)} ${manifest.study_description ?? ''}`),
    );
  }

  /** Reading status in the header, with Release for the claimant. */
  private renderReading(): void {
    const manifest = this.manifest;
    if (!manifest) {
      return;
    }
    const { status, claimed_by: holder } = manifest.reading;
    const mine = holder !== null && holder === this.me?.name;
    const text = status === 'in_progress' && holder
      ? `${STATUS_TEXT[status]} — ${mine ? 'you' : holder}`
      : STATUS_TEXT[status];
    const container = byId('reading-state');
    container.replaceChildren(
      h('span', { class: `badge status ${status}`, 'data-testid': 'reading-status' }, text));
    if (mine && status === 'in_progress') {
      const release = h('button', { type: 'button', class: 'secondary',
        title: 'Put the study back on the worklist unread' }, 'Release');
      release.addEventListener('click', () => void this.release());
      container.append(release);
    }
    this.report?.setReading(manifest.reading);
  }

  private async release(): Promise<void> {
    const manifest = this.manifest;
    if (!manifest) {
      return;
    }
    try {
      const state = await releaseStudy(manifest.study_instance_uid, manifest.reading.version);
      manifest.reading = { status: state.status, claimed_by: state.claimed_by,
        version: state.version };
      location.href = './';
    } catch (error) {
      if (error instanceof ApiError && error.unauthorized) {
        goToSignIn();
        return;
      }
      showBanner(`Could not release the study: ${errorText(error)}`);
    }
  }

  private bindToolbar(): void {
    renderToolButtons(byId('tools'), this.tools, this.stack);

    const toggle = byId<HTMLInputElement>('overlay-toggle');
    const opacity = byId<HTMLInputElement>('overlay-opacity');
    toggle.addEventListener('change', () => this.overlay.setVisible(toggle.checked));
    opacity.addEventListener('input', () => this.overlay.setOpacity(Number(opacity.value) / 100));
    this.overlay.setOpacity(Number(opacity.value) / 100);
  }

  private renderOverlayState(): void {
    const note = byId('overlay-note');
    note.textContent = this.overlay.hasOverlay ? '' : 'none on this series';
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

  /** 401: sign in again; 403: access denied; otherwise say what failed. */
  private fail(error: unknown, what: string): void {
    if (error instanceof ApiError && error.unauthorized) {
      goToSignIn();
    } else if (error instanceof ApiError && error.forbidden) {
      showAccessDenied(this.main, error, this.me);
    } else {
      showBanner(`${what}: ${errorText(error)}`);
    }
  }
}

function start(): void {
  const params = new URLSearchParams(location.search);
  const study = params.get('study');
  if (!study || !/^[0-9.]{1,64}$/.test(study)) {
    showBanner('No study given: open one from the worklist.');
    return;
  }
  if (!getToken()) {
    goToSignIn();
    return;
  }
  const hospital = params.get('hospital');
  if (params.get('federated') === '1' && hospital) {
    void new RemoteViewerPage(hospital, study).open();
    return;
  }
  void new ViewerPage(study).open();
}

start();
