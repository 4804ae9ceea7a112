// Cornerstone3D set-up: the renderer, the DICOM image loader (WADO-RS from one DICOMweb source
// per page, every request with that source's bearer token: the API's /dicom-web with the user's
// token, or another hospital's study through radcloud's federated WADO-RS with the patient's
// context token) and the tools; imageIds and metadata of a series.

import { init as initCore } from '@cornerstonejs/core';
import {
  init as initDicomImageLoader,
  wadors,
  type Types as LoaderTypes,
} from '@cornerstonejs/dicom-image-loader';
import { init as initTools } from '@cornerstonejs/tools';

import {
  getSeriesMetadata,
  instancePath,
  LOCAL_DICOMWEB,
  type DicomJson,
  type DicomWebSource,
  type ManifestSeries,
} from '../api';

const SOP_INSTANCE_UID = '00080018';

let initialised = false;

/** Initialise Cornerstone (renderer, loader, tools) once per page, its images read from
 * `source` (by default the API's own /dicom-web). */
export function initCornerstone(source: DicomWebSource = LOCAL_DICOMWEB): void {
  if (initialised) {
    return;
  }
  initCore(); // falls back to CPU rendering where WebGL is missing
  initDicomImageLoader({
    maxWebWorkers: Math.min(4, Math.max(1, Math.floor((navigator.hardwareConcurrency || 2) / 2))),
    // read at each request: the token may be renewed while the viewer is open
    beforeSend: (): Record<string, string> => {
      const token = source.token();
      return token ? { Authorization: `Bearer ${token}` } : {};
    },
  });
  initTools();
  initialised = true;
}

/** The Cornerstone imageId of an instance's first frame (`wadors:` scheme, PS3.18 frames). */
export function imageIdFor(
  source: DicomWebSource,
  study: string,
  series: string,
  sopInstanceUid: string,
): string {
  return `wadors:${location.origin}${instancePath(source, study, series, sopInstanceUid)}/frames/1`;
}

/** The imageIds of a series in the manifest's display order. */
export function seriesImageIds(
  source: DicomWebSource,
  study: string,
  series: ManifestSeries,
): string[] {
  return series.instances.map((instance) =>
    imageIdFor(source, study, series.series_instance_uid, instance.sop_instance_uid));
}

const metadataLoaded = new Map<string, Promise<void>>();

/**
 * Fetch a series' WADO-RS metadata once from `source` (or take `datasets`, already fetched)
 * and hand each instance's dataset to the loader's metadata manager, so the images can be decoded and placed (and labelmaps derived from them)
 * before any pixel data arrives.
 */
export function loadSeriesMetadata(
  source: DicomWebSource,
  study: string,
  series: ManifestSeries,
  datasets?: DicomJson[],
): Promise<void> {
  const key = `${source.base} ${series.series_instance_uid}`;
  let pending = metadataLoaded.get(key);
  if (!pending) {
    const fetched = datasets
      ? Promise.resolve(datasets)
      : getSeriesMetadata(source, study, series.series_instance_uid);
    pending = fetched.then((found) => {
      for (const dataset of found) {
        const uid = dataset[SOP_INSTANCE_UID]?.Value?.[0];
        if (typeof uid === 'string') {
          wadors.metaDataManager.add(
            imageIdFor(source, study, series.series_instance_uid, uid),
            dataset as unknown as LoaderTypes.WADORSMetaData,
          );
        }
      }
    });
    pending.catch(() => metadataLoaded.delete(key)); // a later try fetches again
    metadataLoaded.set(key, pending);
  }
  return pending;
}
