// The series browser: one thumbnail per image series (the middle instance, rendered by the
// server that holds it: this radcloud's DICOMweb, or another hospital's through the federated
// base; fetched with the token and shown through a blob URL, since <img> cannot send it).

import { getRenderedInstance, LOCAL_DICOMWEB, type DicomWebSource, type ManifestSeries } from '../api';
import { h } from '../ui';

export class SeriesBrowser {
  private readonly items = new Map<string, HTMLElement>();

  constructor(
    private readonly container: HTMLElement,
    private readonly studyUid: string,
    private readonly onChoose: (series: ManifestSeries) => void,
    private readonly source: DicomWebSource = LOCAL_DICOMWEB,
  ) {}

  render(series: ManifestSeries[], badges: Map<string, number>): void {
    this.container.replaceChildren(h('h2', {}, 'Series'));
    for (const entry of series) {
      const image = h('img', { alt: '', width: 96, height: 96, loading: 'lazy' });
      const frame = h('span', { class: 'thumb-frame' }, image);
      const findings = badges.get(entry.series_instance_uid) ?? 0;
      const item = h('button', {
        type: 'button',
        class: 'series-thumb',
        'data-testid': 'series-thumb',
        'data-series-uid': entry.series_instance_uid,
        title: entry.series_description ?? '',
      },
      frame,
      h('span', { class: 'thumb-text' },
        h('strong', {}, `${entry.modality ?? ''} ${entry.series_number ?? ''}`.trim() || 'Series'),
        h('span', {}, entry.series_description ?? ''),
        h('span', { class: 'muted' }, `${entry.instances.length} images`),
        findings ? h('span', { class: 'badge ai-flag' }, `AI: ${findings}`) : null));
      item.addEventListener('click', () => this.onChoose(entry));
      this.items.set(entry.series_instance_uid, item);
      this.container.append(item);
      void this.loadThumbnail(entry, image);
    }
  }

  select(seriesUid: string): void {
    for (const [uid, item] of this.items) {
      item.classList.toggle('selected', uid === seriesUid);
      item.setAttribute('aria-pressed', String(uid === seriesUid));
    }
  }

  private async loadThumbnail(series: ManifestSeries, image: HTMLImageElement): Promise<void> {
    const middle = series.instances[Math.floor(series.instances.length / 2)];
    if (!middle) {
      return;
    }
    try {
      const blob = await getRenderedInstance(
        this.source, this.studyUid, series.series_instance_uid, middle.sop_instance_uid);
      const url = URL.createObjectURL(blob);
      image.addEventListener('load', () => URL.revokeObjectURL(url), { once: true });
      image.src = url;
    } catch (error) {
      image.replaceWith(h('span', { class: 'thumb-missing', title: String(error) }, 'no preview'));
    }
  }
}
