// The radcloud API as the web app uses it (docs/reading-app.md): typed payloads and one fetch
// wrapper that adds the bearer token and turns every failure into an ApiError a page can show.

import { getToken } from './auth';
import { getContextToken } from './context';

// -- payloads ------------------------------------------------------------------------------------

export type ReadingStatus = 'unread' | 'in_progress' | 'reported';
export type Decision = 'confirmed' | 'rejected';

export interface Me {
  name: string;
  roles: string[];
  method: string;
  hospitals: string[]; // whose studies the caller sees
  platform_operator: boolean; // sees every hospital's
}

export interface TokenAnswer {
  access_token: string;
  token_type: string;
  expires_in: number;
}

export interface WorklistRow {
  study_instance_uid: string;
  patient_id: string | null;
  patient_name: string | null;
  accession_number: string | null;
  study_description: string | null;
  study_date: string | null;
  modalities: string | null;
  hospital: string | null;
  ready_at: string | null;
  waiting_minutes: number | null;
  due_at: string | null;
  priority_class: string;
  ai_score: number | null;
  /** The lead model's operating threshold, where the API gives it. */
  ai_threshold?: number | null;
  /** Whether ai_score is a calibrated probability (the model card calibrates it). */
  ai_calibrated?: boolean;
  ai_status: string;
  critical: boolean;
  status: ReadingStatus;
  claimed_by: string | null;
  version: number;
}

export interface WorklistPage {
  items: WorklistRow[];
  total: number;
  limit: number;
  offset: number;
}

export interface WorklistFilters {
  statuses: ReadingStatus[];
  modality: string;
  q: string;
}

export interface ReadingState {
  study_instance_uid: string;
  status: ReadingStatus;
  claimed_by: string | null;
  version: number;
}

export interface WindowPreset {
  name: string;
  window: number;
  level: number;
}

export interface ViewerConfig {
  site: string;
  presets: WindowPreset[];
  refresh_seconds: number;
}

export interface ManifestInstance {
  sop_instance_uid: string;
  instance_number: number | null;
}

export interface ManifestSeries {
  series_instance_uid: string;
  modality: string | null;
  series_description: string | null;
  series_number: number | null;
  instances: ManifestInstance[];
}

export interface Finding {
  result_id: number;
  model_name: string;
  model_version: string;
  label: string;
  score: number | null;
  critical: boolean;
  threshold: number | null;
  /** Whether score is a calibrated probability (the model card calibrates it). */
  calibrated?: boolean;
  series_instance_uid: string;
  seg_series_instance_uid: string | null;
  slices: number[];
  verified: boolean;
}

export interface Region {
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface AddedFinding {
  label: string;
  series_instance_uid: string;
  sop_instance_uid: string;
  region: Region;
}

export interface SignedReport {
  signed_by: string;
  signed_at: string;
  text: string;
  sr_sop_instance_uid: string | null;
  decisions: { result_id: number; decision: Decision }[];
  added: AddedFinding[];
}

export interface ViewerManifest {
  study_instance_uid: string;
  patient_name: string | null;
  patient_id: string | null;
  accession_number: string | null;
  study_description: string | null;
  study_date: string | null;
  modalities: string | null;
  hospital: string | null;
  reading: { status: ReadingStatus; claimed_by: string | null; version: number };
  can_sign: boolean;
  series: ManifestSeries[];
  findings: Finding[];
  report: SignedReport | null;
  /** The radcloud patient key of the study's patient (null: the study names no Patient ID). */
  patient_key: string | null;
}

export interface MaskFrame {
  index: number;
  sop_instance_uid: string;
  bits: string;
}

export interface FindingMask {
  series_instance_uid: string;
  rows: number;
  columns: number;
  frames: MaskFrame[];
}

export interface SignRequest {
  version: number;
  text: string;
  decisions: { result_id: number; decision: Decision }[];
  added: AddedFinding[];
}

export interface SignAnswer {
  study_instance_uid: string;
  status: ReadingStatus;
  version: number;
  sr_sop_instance_uid: string;
  sr_series_instance_uid: string;
  labels: number;
}

/** A DICOM JSON dataset (PS3.18 F.2): tag -> {vr, Value}. */
export type DicomJson = Record<string, { vr: string; Value?: unknown[] }>;

/** POST /api/auth/context-token: a short-lived token bound to a purpose (and a patient). */
export interface ContextTokenAnswer {
  access_token: string;
  expires_in: number;
  purpose: string;
  patient: string | null;
  break_glass: boolean;
}

/** How one hospital's node answered a federated search. */
export interface FederatedNode {
  hospital: string;
  kind: string;
  state: string; // ok | timeout | error | refused
  studies: number;
  elapsed_ms: number;
  reason: string | null;
}

/** A study of the patient at one or more hospitals. */
export interface FederatedStudy {
  study_instance_uid: string;
  held_by: string[];
  retrieve_urls: Record<string, string>;
  patient_id: string | null;
  patient_name: string | null;
  study_date: string | null;
  accession_number: string | null;
  study_description: string | null;
  modalities_in_study: string[];
  number_of_study_related_series: number | null;
  number_of_study_related_instances: number | null;
}

/** GET /api/federated/studies: the merged studies and every node's state. */
export interface FederatedStudies {
  purpose: string;
  patient_key: string | null;
  partial: boolean;
  nodes: FederatedNode[];
  studies: FederatedStudy[];
}

/**
 * A DICOMweb service the viewer reads images from, and the bearer token it takes: the API's
 * own /dicom-web with the signed-in user's token, or another hospital's study through
 * radcloud's federated WADO-RS with the patient's context token.
 */
export interface DicomWebSource {
  /** The service's root path on this origin, without a trailing slash. */
  readonly base: string;
  /** The bearer token to send, read at each request (it may be renewed meanwhile). */
  token(): string | null;
}

/** The API's own DICOMweb (studies of the caller's hospitals; the user's token). */
export const LOCAL_DICOMWEB: DicomWebSource = { base: '/dicom-web', token: getToken };

/** ``hospital``'s studies through radcloud's federated WADO-RS (the context token). */
export function federatedDicomWeb(hospital: string): DicomWebSource {
  return {
    base: `/api/federated/hospitals/${encodeURIComponent(hospital)}/dicom-web`,
    token: getContextToken,
  };
}

// -- models (the ML engineers' page) -------------------------------------------------------------

export type ModelStage = 'staged' | 'production' | 'archived';

/** One version of a model (GET /api/models). */
export interface ModelVersion {
  version: number;
  stage: ModelStage;
  created: string;
  production: boolean;
  shadow: boolean;
  threshold: number | null;
  metrics: {
    evaluated_on: string;
    auc: number | null;
    sensitivity: number | null;
    specificity: number | null;
    dice: number | null;
  };
  inputs: {
    modality: string;
    body_part: string;
    shape: number[];
    axes: string;
    spacing_mm: number[] | null;
    dtype: string;
  };
}

export interface ModelSummary {
  name: string;
  task: string;
  production: number | null;
  shadow: number | null;
  versions: ModelVersion[];
}

/** POST /api/models/{name}/promote and /rollback. */
export interface PromotionAnswer {
  name: string;
  version: number;
  previous: number | null;
  forced: boolean;
  overridden: string[];
  caught_up: number;
}

export type Arm = 'shadow' | 'production';

export interface ComparisonFigures {
  studies: number;
  positives: number;
  auc: number | null;
  sensitivity: number | null;
  specificity: number | null;
}

export interface ShadowPair {
  study_instance_uid: string;
  score: number;
  positive: boolean;
  production_score: number;
  production_positive: boolean;
}

export interface Spread {
  p50: number | null;
  p95: number | null;
  mean: number | null;
}

/** GET /api/models/{name}/compare: the shadow version against production (serving/shadow.py). */
export interface ShadowComparison {
  name: string;
  versions: string[];
  production_versions: string[];
  studies: number;
  failed: number;
  shed: number;
  agreement: {
    fraction: number | null;
    both_positive: number;
    both_negative: number;
    only_shadow: number;
    only_production: number;
  };
  mask_dice_mean: number | null;
  truths: Record<string, Record<Arm, ComparisonFigures>>;
  latency_ms: Record<Arm, Spread>;
  cpu_ms: Record<Arm, Spread>;
  /** truth -> arm -> ROC corners [false positive rate, true positive rate] */
  roc: Record<string, Record<Arm, [number, number][]>>;
  pairs: ShadowPair[];
}

// -- errors --------------------------------------------------------------------------------------

/** A failed call: `status` 0 when the server could not be reached; `body` the JSON answer. */
export class ApiError extends Error {
  readonly status: number;
  readonly body: Record<string, unknown> | null;

  constructor(status: number, message: string, body: Record<string, unknown> | null = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.body = body;
  }

  get unauthorized(): boolean {
    return this.status === 401;
  }

  get forbidden(): boolean {
    return this.status === 403;
  }

  get conflict(): boolean {
    return this.status === 409;
  }
}

function describe(status: number, body: Record<string, unknown> | null, fallback: string): string {
  const detail = body?.detail;
  let text = fallback;
  if (typeof detail === 'string') {
    text = detail;
  } else if (Array.isArray(detail)) {
    // FastAPI validation errors: [{loc, msg}, ...]
    text = detail
      .map((item) => (item && typeof item === 'object' && 'msg' in item ? String(item.msg) : ''))
      .filter(Boolean)
      .join('; ');
  }
  if (status >= 500) {
    return `Server error ${status}: ${text}`;
  }
  return text;
}

// -- requests ------------------------------------------------------------------------------------

/** Headers for a call on the user's behalf (the bearer token when signed in). */
export function authHeaders(
  extra: Record<string, string> = {},
  token: string | null = getToken(),
): Record<string, string> {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

/** `path` fetched with `token` (by default the signed-in user's). */
async function send(
  path: string,
  init: RequestInit = {},
  token: string | null = getToken(),
): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(path, {
      ...init,
      headers: authHeaders((init.headers as Record<string, string> | undefined) ?? {}, token),
    });
  } catch (error) {
    throw new ApiError(0, `Cannot reach radcloud (${String(error)}): check the network`);
  }
  if (!response.ok) {
    let body: Record<string, unknown> | null = null;
    try {
      body = (await response.json()) as Record<string, unknown>;
    } catch {
      body = null; // not JSON (a proxy's error page): the status says enough
    }
    const fallback = response.statusText || `HTTP ${response.status}`;
    throw new ApiError(response.status, describe(response.status, body, fallback), body);
  }
  return response;
}

async function getJson<T>(
  path: string,
  accept = 'application/json',
  token: string | null = getToken(),
): Promise<T> {
  const response = await send(path, { headers: { Accept: accept } }, token);
  return (await response.json()) as T;
}

async function postJson<T>(path: string, body: unknown): Promise<T> {
  const response = await send(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify(body),
  });
  return (await response.json()) as T;
}

const enc = encodeURIComponent;

/** POST /api/auth/token (OAuth2 password grant; docs/reading-app.md says /auth/token). */
export async function requestToken(username: string, password: string): Promise<TokenAnswer> {
  const form = new URLSearchParams({ grant_type: 'password', username, password });
  const response = await send('/api/auth/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: form.toString(),
  });
  return (await response.json()) as TokenAnswer;
}

export const getMe = (): Promise<Me> => getJson<Me>('/api/me');

export const getViewerConfig = (): Promise<ViewerConfig> =>
  getJson<ViewerConfig>('/api/viewer/config');

/** GET /api/worklist with the page's filters, in the API's priority order. */
export function getWorklist(filters: WorklistFilters, limit = 200): Promise<WorklistPage> {
  const params = new URLSearchParams();
  for (const status of filters.statuses) {
    params.append('status', status);
  }
  if (filters.modality) {
    params.set('modality', filters.modality);
  }
  if (filters.q.trim()) {
    params.set('q', filters.q.trim());
  }
  params.set('limit', String(limit));
  return getJson<WorklistPage>(`/api/worklist?${params.toString()}`);
}

export const claimStudy = (uid: string, version: number): Promise<ReadingState> =>
  postJson<ReadingState>(`/api/worklist/${enc(uid)}/claim`, { version });

export const releaseStudy = (uid: string, version: number): Promise<ReadingState> =>
  postJson<ReadingState>(`/api/worklist/${enc(uid)}/release`, { version });

export const getViewerManifest = (uid: string): Promise<ViewerManifest> =>
  getJson<ViewerManifest>(`/api/studies/${enc(uid)}/viewer`);

export const getFindingMask = (uid: string, resultId: number): Promise<FindingMask> =>
  getJson<FindingMask>(`/api/studies/${enc(uid)}/findings/${resultId}/mask`);

export const signReport = (uid: string, request: SignRequest): Promise<SignAnswer> =>
  postJson<SignAnswer>(`/api/studies/${enc(uid)}/sign`, request);

/**
 * POST /api/auth/context-token for treatment of `patient` (the user's token): no reason is
 * sent, so a patient the user's hospitals have no record of is refused (403), never opened by
 * break-glass from here.
 */
export const requestTreatmentToken = (patient: string): Promise<ContextTokenAnswer> =>
  postJson<ContextTokenAnswer>('/api/auth/context-token', { purpose: 'treatment', patient });

/** GET /api/federated/studies with a treatment context token: the patient's studies everywhere. */
export const getFederatedStudies = (contextToken: string): Promise<FederatedStudies> =>
  getJson<FederatedStudies>('/api/federated/studies', 'application/json', contextToken);

/** QIDO-RS of a study's series (PS3.18 10.6.1.2.2) from `source`. */
export const searchForSeries = (source: DicomWebSource, study: string): Promise<DicomJson[]> =>
  getJson<DicomJson[]>(`${source.base}/studies/${enc(study)}/series`, 'application/dicom+json',
    source.token());

/** WADO-RS series metadata (PS3.18 10.4.1.1.2): one DICOM JSON dataset per instance. */
export const getSeriesMetadata = (
  source: DicomWebSource,
  study: string,
  series: string,
): Promise<DicomJson[]> =>
  getJson<DicomJson[]>(
    `${source.base}/studies/${enc(study)}/series/${enc(series)}/metadata`,
    'application/dicom+json',
    source.token(),
  );

/** The WADO-RS path of an instance (PS3.18 10.4.1.1.1) below `source`'s base. */
export function instancePath(
  source: DicomWebSource,
  study: string,
  series: string,
  instance: string,
): string {
  return `${source.base}/studies/${enc(study)}/series/${enc(series)}/instances/${enc(instance)}`;
}

/** A rendered (JPEG) instance of `source` (the API's own DICOMweb, or another hospital's
 * through the federated base) as a blob, for thumbnails: `<img>` cannot send the token. */
export async function getRenderedInstance(
  source: DicomWebSource,
  study: string,
  series: string,
  instance: string,
): Promise<Blob> {
  const response = await send(`${instancePath(source, study, series, instance)}/rendered`, {
    headers: { Accept: 'image/jpeg' },
  }, source.token());
  return response.blob();
}

export const getModels = (): Promise<ModelSummary[]> => getJson<ModelSummary[]>('/api/models');

export const getShadowComparison = (name: string): Promise<ShadowComparison> =>
  getJson<ShadowComparison>(`/api/models/${enc(name)}/compare`);

/** Make `version` production; a guard rail's refusal is a 409 whose body lists `problems`. */
export const promoteModel = (
  name: string,
  version: number,
  force = false,
  reason: string | null = null,
): Promise<PromotionAnswer> =>
  postJson<PromotionAnswer>(`/api/models/${enc(name)}/promote`, { version, force, reason });

export const rollbackModel = (name: string): Promise<PromotionAnswer> =>
  postJson<PromotionAnswer>(`/api/models/${enc(name)}/rollback`, {});
