// The AI segmentations as a coloured overlay: for each finding with a SEG, its mask (GET
// .../findings/{id}/mask: packed bits per frame) is written into Cornerstone stack labelmap
// images derived from the series' images, one segment per finding, shown as a labelmap
// representation on the viewport with an opacity and an on/off switch.

import { imageLoader, type Types } from '@cornerstonejs/core';
import { Enums as ToolEnums, segmentation } from '@cornerstonejs/tools';

import { getFindingMask, type Finding, type FindingMask } from '../api';
import { VIEWPORT_ID } from './stack';

const LABELMAP = ToolEnums.SegmentationRepresentations.Labelmap;

/** The pixels set in one frame of a mask: `numpy.packbits` row-major, big bit order. */
export function unpackBits(base64: string, pixelCount: number): Uint8Array {
  const bytes = Uint8Array.from(atob(base64), (char) => char.charCodeAt(0));
  const pixels = new Uint8Array(pixelCount);
  for (let p = 0; p < pixelCount; p++) {
    pixels[p] = (bytes[p >> 3] >> (7 - (p & 7))) & 1;
  }
  return pixels;
}

interface SeriesOverlay {
  segmentationId: string;
  segmentOf: Map<number, number>; // result_id -> segment index
}

export class AiOverlay {
  private readonly built = new Map<string, Promise<SeriesOverlay | null>>();
  private shown: SeriesOverlay | null = null;
  private visible = true;
  private opacity = 0.5;
  private readonly failures: string[] = [];

  constructor(private readonly studyUid: string) {}

  /** Findings whose masks can be drawn on `seriesUid`. */
  static findingsWithMasks(findings: Finding[], seriesUid: string): Finding[] {
    return findings.filter((finding) =>
      finding.series_instance_uid === seriesUid && finding.seg_series_instance_uid !== null);
  }

  /**
   * Show the masks of `findings` on `seriesUid`, whose images (`imageIds`, in manifest order)
   * are on the viewport now; the previous series' overlay is taken off.
   */
  async show(seriesUid: string, imageIds: string[], findings: Finding[]): Promise<void> {
    this.hideCurrent();
    const withMasks = AiOverlay.findingsWithMasks(findings, seriesUid);
    if (withMasks.length === 0) {
      return;
    }
    let pending = this.built.get(seriesUid);
    if (!pending) {
      pending = this.build(seriesUid, imageIds, withMasks);
      pending.catch(() => this.built.delete(seriesUid));
      this.built.set(seriesUid, pending);
    }
    const overlay = await pending;
    if (!overlay) {
      return;
    }
    segmentation.addLabelmapRepresentationToViewport(VIEWPORT_ID, [
      { segmentationId: overlay.segmentationId },
    ]);
    this.shown = overlay;
    this.applyStyle();
  }

  private async build(
    seriesUid: string,
    imageIds: string[],
    findings: Finding[],
  ): Promise<SeriesOverlay | null> {
    // one finding's mask failing (a SEG Orthanc lost) leaves the others on screen
    const answers = await Promise.allSettled(findings.map((finding) =>
      getFindingMask(this.studyUid, finding.result_id)));
    const failed = answers.flatMap((answer, position) => answer.status === 'rejected'
      ? [`${findings[position].label}: ${String(answer.reason instanceof Error
        ? answer.reason.message : answer.reason)}`]
      : []);
    if (failed.length === findings.length) {
      throw new Error(failed.join('; '));
    }
    const labelmaps = imageLoader.createAndCacheDerivedLabelmapImages(imageIds);
    const segmentOf = new Map<number, number>();
    let anyPixel = false;
    findings.forEach((finding, position) => {
      const answer = answers[position];
      if (answer.status === 'fulfilled') {
        const segmentIndex = position + 1;
        segmentOf.set(finding.result_id, segmentIndex);
        anyPixel = fill(labelmaps, answer.value, segmentIndex) || anyPixel;
      }
    });
    this.failures.push(...failed);
    if (!anyPixel) {
      return null;
    }
    const segmentationId = `ai-${seriesUid}`;
    segmentation.addSegmentations([{
      segmentationId,
      representation: {
        type: LABELMAP,
        data: { imageIds: labelmaps.map((image) => image.imageId) },
      },
      config: {
        label: 'AI findings',
        segments: Object.fromEntries(findings.map((finding, position) => [
          position + 1,
          { segmentIndex: position + 1, label: finding.label, locked: true },
        ])),
      },
    }]);
    return { segmentationId, segmentOf };
  }

  private hideCurrent(): void {
    if (this.shown) {
      segmentation.removeLabelmapRepresentation(VIEWPORT_ID, this.shown.segmentationId, true);
      this.shown = null;
    }
  }

  /** The colour Cornerstone draws a finding's segment in, as CSS; null when not shown. */
  colourOf(resultId: number): string | null {
    const segmentIndex = this.shown?.segmentOf.get(resultId);
    if (!this.shown || segmentIndex === undefined) {
      return null;
    }
    const [r, g, b] = segmentation.config.color.getSegmentIndexColor(
      VIEWPORT_ID, this.shown.segmentationId, segmentIndex);
    return `rgb(${r}, ${g}, ${b})`;
  }

  /** Masks that could not be loaded since the last call ("label: reason"). */
  takeFailures(): string[] {
    return this.failures.splice(0);
  }

  get hasOverlay(): boolean {
    return this.shown !== null;
  }

  setVisible(visible: boolean): void {
    this.visible = visible;
    this.applyStyle();
  }

  /** `opacity` from 0 to 1. */
  setOpacity(opacity: number): void {
    this.opacity = Math.min(1, Math.max(0, opacity));
    this.applyStyle();
  }

  private applyStyle(): void {
    if (!this.shown) {
      return;
    }
    const specifier = { segmentationId: this.shown.segmentationId, type: LABELMAP };
    segmentation.config.style.setStyle(specifier, {
      renderFill: true,
      fillAlpha: this.opacity,
      fillAlphaInactive: this.opacity,
      renderOutline: true,
      outlineOpacity: this.opacity > 0 ? Math.max(this.opacity, 0.6) : 0,
      outlineOpacityInactive: this.opacity > 0 ? Math.max(this.opacity, 0.6) : 0,
    });
    segmentation.config.visibility.setSegmentationRepresentationVisibility(
      VIEWPORT_ID, specifier, this.visible);
  }
}

/** Write one finding's mask into the labelmap images; true when any pixel was set. */
function fill(labelmaps: Types.IImage[], mask: FindingMask, segmentIndex: number): boolean {
  let anyPixel = false;
  for (const frame of mask.frames) {
    const image = labelmaps[frame.index];
    if (!image?.voxelManager) {
      continue; // an index outside the series: nothing to draw
    }
    if (image.rows !== mask.rows || image.columns !== mask.columns) {
      console.warn(`mask of ${mask.rows}x${mask.columns} does not fit image ${frame.index} ` +
        `(${image.rows}x${image.columns}): not drawn`);
      continue;
    }
    const pixels = unpackBits(frame.bits, mask.rows * mask.columns);
    const voxels = image.voxelManager as Types.IVoxelManager<number>;
    for (let p = 0; p < pixels.length; p++) {
      if (pixels[p]) {
        voxels.setAtIndex(p, segmentIndex);
        anyPixel = true;
      }
    }
  }
  return anyPixel;
}
