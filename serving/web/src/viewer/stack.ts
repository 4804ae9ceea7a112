// The stack viewport: one series at a time, the current image index, window/level, camera reset,
// keyboard scrolling, and the corner texts. Events from Cornerstone keep the element's
// data-image-index / data-loaded attributes (docs/reading-app.md) in step.

import {
  Enums,
  RenderingEngine,
  utilities,
  type Types,
} from '@cornerstonejs/core';

import type { WindowPreset } from '../api';

export const RENDERING_ENGINE_ID = 'radcloud-engine';
export const VIEWPORT_ID = 'radcloud-stack';

export interface WindowLevel {
  window: number;
  level: number;
}

type Listener<T> = (value: T) => void;

/** Window and level of a VOI range, as DICOM defines them (PS3.3 C.11.2.1.2, linear). */
function windowLevelOf(range: Types.VOIRange): WindowLevel {
  const { windowWidth, windowCenter } = utilities.windowLevel.toWindowLevel(range.lower,
    range.upper);
  return { window: windowWidth, level: windowCenter };
}

export class StackView {
  readonly element: HTMLDivElement;
  readonly engine: RenderingEngine;
  private readonly imageListeners: Listener<number>[] = [];
  private readonly renderListeners: Listener<void>[] = [];
  private readonly voiListeners: Listener<WindowLevel>[] = [];
  private firstRendered = false;
  private firstRenderWaiters: (() => void)[] = [];

  constructor(element: HTMLDivElement) {
    this.element = element;
    this.engine = new RenderingEngine(RENDERING_ENGINE_ID);
    this.engine.enableElement({
      viewportId: VIEWPORT_ID,
      type: Enums.ViewportType.STACK,
      element,
      defaultOptions: { background: [0, 0, 0] as Types.Point3 },
    });
    element.addEventListener(Enums.Events.STACK_NEW_IMAGE, ((
      event: Types.EventTypes.StackNewImageEvent,
    ) => {
      const index = event.detail.imageIdIndex;
      element.dataset.imageIndex = String(index);
      this.imageListeners.forEach((listener) => listener(index));
    }) as EventListener);
    element.addEventListener(Enums.Events.IMAGE_RENDERED, () => {
      if (!this.firstRendered) {
        this.firstRendered = true;
        this.firstRenderWaiters.forEach((resolve) => resolve());
        this.firstRenderWaiters = [];
      }
      this.renderListeners.forEach((listener) => listener());
    });
    element.addEventListener(Enums.Events.VOI_MODIFIED, ((
      event: Types.EventTypes.VoiModifiedEvent,
    ) => {
      const wl = windowLevelOf(event.detail.range);
      this.voiListeners.forEach((listener) => listener(wl));
    }) as EventListener);
    element.addEventListener('contextmenu', (event) => event.preventDefault()); // right: zoom
    new ResizeObserver(() => this.engine.resize(true, true)).observe(element);
  }

  get viewport(): Types.IStackViewport {
    return this.engine.getViewport(VIEWPORT_ID) as Types.IStackViewport;
  }

  /** Runs on each new image shown (its index in the stack). */
  onImage(listener: Listener<number>): void {
    this.imageListeners.push(listener);
  }

  /** Runs after each render (camera, image or window changes). */
  onRender(listener: Listener<void>): void {
    this.renderListeners.push(listener);
  }

  onWindowLevel(listener: Listener<WindowLevel>): void {
    this.voiListeners.push(listener);
  }

  /** Resolves when the first image is on screen (Cornerstone's IMAGE_RENDERED). */
  firstRender(): Promise<void> {
    if (this.firstRendered) {
      return Promise.resolve();
    }
    return new Promise((resolve) => this.firstRenderWaiters.push(resolve));
  }

  /** Show a series: the image at `index` is loaded first; Cornerstone renders it. */
  async showStack(imageIds: string[], index = 0): Promise<void> {
    this.element.dataset.imageCount = String(imageIds.length);
    await this.viewport.setStack(imageIds, Math.min(Math.max(index, 0), imageIds.length - 1));
    this.viewport.render();
  }

  get imageIds(): string[] {
    return this.viewport.getImageIds();
  }

  get currentIndex(): number {
    return this.viewport.getCurrentImageIdIndex();
  }

  get currentImageId(): string {
    return this.viewport.getCurrentImageId();
  }

  async goTo(index: number): Promise<void> {
    const count = this.imageIds.length;
    if (count === 0) {
      return;
    }
    const target = Math.min(Math.max(Math.round(index), 0), count - 1);
    if (target !== this.currentIndex) {
      await this.viewport.setImageIdIndex(target);
    }
  }

  scrollBy(delta: number): Promise<void> {
    return this.goTo(this.currentIndex + delta);
  }

  windowLevel(): WindowLevel | null {
    const range = this.viewport.getProperties().voiRange;
    return range ? windowLevelOf(range) : null;
  }

  applyPreset(preset: WindowPreset): void {
    this.viewport.setProperties({
      voiRange: utilities.windowLevel.toLowHighRange(preset.window, preset.level),
    });
    this.viewport.render();
  }

  /** Camera and window back to how the image first appeared. */
  reset(): void {
    this.viewport.resetCamera();
    this.viewport.resetProperties();
    this.viewport.render();
  }

  /**
   * Stack scrolling by keys: up/down one image, page up/down a tenth of the stack, home/end the
   * first/last image. Keys typed into form fields are left alone.
   */
  bindKeys(target: Document = document): void {
    target.addEventListener('keydown', (event) => {
      if (isTypingTarget(event.target)) {
        return;
      }
      const page = Math.max(1, Math.round(this.imageIds.length / 10));
      const moves: Record<string, () => Promise<void>> = {
        ArrowUp: () => this.scrollBy(-1),
        ArrowLeft: () => this.scrollBy(-1),
        ArrowDown: () => this.scrollBy(1),
        ArrowRight: () => this.scrollBy(1),
        PageUp: () => this.scrollBy(-page),
        PageDown: () => this.scrollBy(page),
        Home: () => this.goTo(0),
        End: () => this.goTo(this.imageIds.length - 1),
      };
      const move = moves[event.key];
      if (move) {
        event.preventDefault();
        void move();
      }
    });
  }
}

/** Keys pressed in a text field, list or slider are theirs, not the viewer's. */
export function isTypingTarget(target: EventTarget | null): boolean {
  if (!(target instanceof HTMLElement)) {
    return false;
  }
  if (target instanceof HTMLInputElement) {
    return !['checkbox', 'radio', 'button', 'submit', 'reset'].includes(target.type);
  }
  return target.closest('textarea, select, [contenteditable=true]') !== null;
}
